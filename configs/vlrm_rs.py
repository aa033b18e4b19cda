"""VLRM-RS, the retrieval-specialised variant: the ITM similarity plus 0.3 x the CLIP retrieval
term Phi over the global batch (OpenCLIP ViT-bigG-14), without the reference-LM term; the rest
as configs/vlrm.py.

    python main.py --config=configs/vlrm_rs.py --config.model.clip=ckpt/clip-bigG [...as configs/vlrm.py]
"""
from vlrm_jax.config_utils import load_config


def get_config(variant: str = ""):
    c = load_config("vlrm", variant)
    c.workdir = "runs/vlrm_rs"
    c.model.clip = "ckpt/clip-bigG"
    c.reward.kind = "vlrm_rs"
    return c
