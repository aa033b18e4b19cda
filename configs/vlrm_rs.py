"""VLRM-RS, the retrieval-specialised variant: the ITM similarity plus 0.3 x the CLIP retrieval
term Phi over the global batch (OpenCLIP ViT-bigG-14), without the reference-LM term; the rest
as configs/vlrm.py.

    python -m vlrm_jax.aot --config=configs/vlrm_rs.py:v5e-64 --topology=v5e:8x8
    python main.py --config=configs/vlrm_rs.py:v5e-64 --config.model.clip=ckpt/clip-bigG [...as configs/vlrm.py]

Its slices (mesh, micro-batches) come from compiling this config (docs/scaling.md): the CLIP
ViT-bigG adds 2.5B frozen parameters beside VLRM's.
"""
from vlrm_jax.config_utils import apply_slice, load_config

# slice -> (data, fsdp, tensor, micro_batches), from docs/scaling.md's compiles of this config
SLICES = {
    "v5e-64": (16, 1, 4, 16),
    "v5e-256": (64, 1, 4, 16),
    "v4-64": (16, 1, 2, 16),
    "v4-128": (32, 1, 2, 16),
    "v5p-64": (16, 1, 2, 16),
    "v5p-128": (32, 1, 2, 16),
}


def get_config(variant: str = ""):
    c = load_config("vlrm")
    c.workdir = "runs/vlrm_rs"
    c.model.clip = "ckpt/clip-bigG"
    c.reward.kind = "vlrm_rs"
    apply_slice(c, variant, SLICES)
    return c
