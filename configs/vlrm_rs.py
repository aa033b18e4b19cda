"""VLRM-RS, the retrieval-specialised variant: the ITM similarity plus 0.3 x the CLIP retrieval
term Phi over the global batch (OpenCLIP ViT-bigG-14), without the reference-LM term.

    python main.py --config=configs/vlrm_rs.py --config.model.clip=ckpt/clip-bigG [...as configs/vlrm.py]
"""
from vlrm_jax.rl.defaults import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.workdir = "runs/vlrm_rs"
    c.model.captioner = "ckpt/blip2-opt-2.7b"
    c.model.itm = "ckpt/blip2-itm-vit-g"
    c.model.clip = "ckpt/clip-bigG"
    c.reward.kind = "vlrm_rs"
    c.eval.clip = "ckpt/clip-g"
    return c
