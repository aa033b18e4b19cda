"""VLRM (arXiv 2404.01911): BLIP2-OPT-2.7B fine-tuned with A2C on the BLIP2-ITM + reference-LM
reward, on a TPU pod slice or GPUs.

    python -m vlrm_jax.aot --config=configs/vlrm.py:v5e-64 --topology=v5e:8x8    # does it fit? (no TPU needed)
    python main.py --config=configs/vlrm.py:v5e-64 --config.checkpoint_dir=gs://bucket/vlrm/checkpoints \\
        --config.model.captioner=ckpt/blip2-opt-2.7b --config.model.itm=ckpt/blip2-itm-vit-g \\
        --config.data.source='shards/*.tar' --config.eval.source=tfds:coco_captions/test \\
        --config.eval.clip=ckpt/clip-g

Folders come from `python -m convert.blip2 / blip2_itm / open_clip` (README). The paper's values:
rollout batch 4096 (here 64 micro-batches of 64), Adam lr 1e-5 after 20 warm-up steps, gradient
clip 1.0, top-k 6 sampling at temperature 2, at most 60 new tokens, all five reward terms with
weight 1; the reference LM is the captioner's own OPT-2.7B.

The part after ":" names a slice: its mesh and micro-batch count, each found by compiling the
candidates for that slice (`python -m vlrm_jax.aot.sweep`; docs/scaling.md has every compile).
Without one, the mesh is (all devices / 4, 1, 4), v5e's: the data-only mesh does not fit v5e's
16 GiB a chip.
"""
from vlrm_jax.config_utils import apply_slice
from vlrm_jax.rl.defaults import base_config

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
    c = base_config()
    c.workdir = "runs/vlrm"
    c.model.captioner = "ckpt/blip2-opt-2.7b"
    c.model.itm = "ckpt/blip2-itm-vit-g"
    c.reward.kind = "vlrm"
    c.eval.clip = "ckpt/clip-g"
    c.mesh.update(dict(data=-1, fsdp=1, tensor=4))
    apply_slice(c, variant, SLICES)
    return c
