"""VLRM (arXiv 2404.01911): BLIP2-OPT-2.7B fine-tuned with A2C on the BLIP2-ITM + reference-LM
reward, on a TPU pod slice or GPUs.

    python main.py --config=configs/vlrm.py --config.checkpoint_dir=gs://bucket/vlrm/checkpoints \\
        --config.model.captioner=ckpt/blip2-opt-2.7b --config.model.itm=ckpt/blip2-itm-vit-g \\
        --config.data.source='shards/*.tar' --config.eval.source=tfds:coco_captions/test \\
        --config.eval.clip=ckpt/clip-g

Folders come from `python -m convert.blip2 / blip2_itm / open_clip` (README). The paper's values:
rollout batch 4096 (here 64 micro-batches of 64), Adam lr 1e-5 after 20 warm-up steps, gradient
clip 1.0, top-k 6 sampling at temperature 2, at most 60 new tokens, all five reward terms with
weight 1; the reference LM is the captioner's own OPT-2.7B.
"""
from vlrm_jax.rl.defaults import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.workdir = "runs/vlrm"
    c.model.captioner = "ckpt/blip2-opt-2.7b"
    c.model.itm = "ckpt/blip2-itm-vit-g"
    c.reward.kind = "vlrm"
    c.eval.clip = "ckpt/clip-g"
    return c
