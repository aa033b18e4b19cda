"""The model configs of the released checkpoints, without downloading them: the step can be built
from shapes alone (`vlrm_jax.aot`) before 15 GB of weights are converted.

Salesforce/blip2-opt-2.7b and Salesforce/blip2-itm-vit-g are this package's config defaults (tests
check them against convert/released_shapes.py's transformers configs); the two OpenCLIP towers are
open_clip's own model configs, written out here so that no torch install is needed (tests compare
them with `open_clip.get_model_config`).
"""
from __future__ import annotations

from vlrm_jax.models.blip2 import Blip2Config
from vlrm_jax.models.clip import ClipConfig
from vlrm_jax.models.itm import ItmConfig

OPEN_CLIP_MODELS = {
    # the paper's evaluation retriever
    "ViT-g-14": {"embed_dim": 1024,
                 "vision_cfg": {"image_size": 224, "layers": 40, "width": 1408, "head_width": 88,
                                "mlp_ratio": 4.3637, "patch_size": 14},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}},
    # VLRM-RS's reward model
    "ViT-bigG-14": {"embed_dim": 1280,
                    "vision_cfg": {"image_size": 224, "layers": 48, "width": 1664, "head_width": 104,
                                   "mlp_ratio": 4.9231, "patch_size": 14},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20, "layers": 32}},
}


def captioner() -> Blip2Config:
    """blip2-opt-2.7b: EVA ViT-g (39 layers), Q-Former (12), OPT-2.7B (32)."""
    return Blip2Config()


def itm() -> ItmConfig:
    """blip2-itm-vit-g: the same EVA ViT-g, a Q-Former with its text input, the ITM / ITC heads."""
    return ItmConfig()


def clip(name: str = "ViT-bigG-14") -> ClipConfig:
    if name not in OPEN_CLIP_MODELS:
        raise ValueError(f"no released shapes for OpenCLIP {name!r}; known: {sorted(OPEN_CLIP_MODELS)}")
    return ClipConfig.from_open_clip(OPEN_CLIP_MODELS[name])
