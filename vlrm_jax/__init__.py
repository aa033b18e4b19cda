"""vlrm_jax: VLRM (vision-language models as reward models for image captioning) in JAX/Flax."""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Captioner": "vlrm_jax.api",
    "ReferenceLM": "vlrm_jax.api",
    "ItmScorer": "vlrm_jax.api",
    "ClipModel": "vlrm_jax.clip_api",
}


# Subpackages reachable as attributes after a bare `import vlrm_jax` (`vlrm_jax.sharding.make_mesh()`),
# imported on first use like the classes above.
_SUBMODULES = ("aot", "api", "caption", "clip_api", "data", "distributed", "eval", "evaluate", "figure", "generate",
               "loading", "metrics", "models", "rewards", "rl", "sharding", "testing", "world")


def __getattr__(name):  # lazy, so `import vlrm_jax` stays light (no jax/flax until needed)
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"vlrm_jax.{name}")
    raise AttributeError(f"module 'vlrm_jax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY, *_SUBMODULES])
