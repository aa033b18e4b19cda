"""vlrm_jax: VLRM (vision-language models as reward models for image captioning) in JAX/Flax."""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Captioner": "vlrm_jax.api",
    "ReferenceLM": "vlrm_jax.api",
    "ItmScorer": "vlrm_jax.api",
    "ClipModel": "vlrm_jax.clip_api",
}


def __getattr__(name):  # lazy, so `import vlrm_jax` stays light (no jax/flax until needed)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlrm_jax' has no attribute {name!r}")
