"""The embedded shapes world: scenes, images, captions and tokenizers for tiny CPU experiments."""
from vlrm_jax.world.shapes import (
    CaptionQuality,
    Scene,
    SceneObject,
    Split,
    World,
    caption_quality,
    full_caption,
    generate_world,
    load_world,
    paraphrases,
    render,
    terse_caption,
    write_world,
)

__all__ = [
    "CaptionQuality", "Scene", "SceneObject", "Split", "World", "caption_quality", "full_caption",
    "generate_world", "load_world", "paraphrases", "render", "terse_caption", "write_world",
]
