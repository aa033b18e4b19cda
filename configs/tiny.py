"""A tiny A2C run that finishes on a laptop CPU in about a minute.

    python main.py --config=configs/tiny.py [--config.total_steps=20 ...]

A tiny random captioner written as a model folder into the workdir (`model.source="random"`; then
read back as a converted one is), random images as a pure function of (seed, data position), and
the synthetic reward of vlrm_jax.rl.scoring.TokenCountScorer (+1 per `reward.target` token):
what the loop, checkpoints and resume are tested on. The folder is complete like a converted
one: beside the parameters, a word-level tokenizer of exactly `model.vocab_size` ids (the shapes
world's words, BLIP2's `<image>` last), Blip2Processor's files and the transformers config; so
the exported policy captions (`python -m vlrm_jax.caption`) and runs in transformers
(`python -m convert.to_hf`).
"""
from ml_collections import ConfigDict

from vlrm_jax.rl.defaults import base_config


def get_config(variant: str = "") -> ConfigDict:
    c = base_config()
    c.workdir = "runs/tiny"
    c.total_steps = 8
    c.checkpoint_every = 4
    c.samples_every = 4
    c.batch_size = 16

    c.model.update(dict(source="random", seed=0, vocab_size=40, image_size=14, patch_size=7, width=16,
                        vision_layers=1, qformer_layers=2, opt_layers=2, num_query_tokens=3, init_std=0.2))
    c.rollout.update(dict(max_new_tokens=8))
    c.reward.update(dict(kind="token_count", target=20))
    c.a2c.update(dict(micro_batches=2, learning_rate=3e-2, warmup_steps=1))
    c.value.update(dict(lora_rank=2, lora_alpha=4.0, head_layers=1, head_mlp_ratio=2))
    c.data.source = "random"
    return c
