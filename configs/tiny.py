"""A tiny A2C run that finishes on a laptop CPU in well under a minute.

    python main.py --config=configs/tiny.py [--config.total_steps=20 ...]

Random tiny models built from the sizes below (`model.source="random"`), random images as a pure
function of (seed, data position), and the synthetic reward of vlrm_jax.rl.scoring.TokenCountScorer
(+1 per `reward.target` token): what the loop, checkpoints and resume are tested on.
"""
from ml_collections import ConfigDict


def get_config(variant: str = "") -> ConfigDict:
    c = ConfigDict()
    c.workdir = "runs/tiny"
    c.seed = 0
    c.total_steps = 8
    c.checkpoint_every = 4
    c.keep_checkpoints = 3
    c.log_every = 1
    c.eval_every = 0  # no held-out evaluation in the tiny run
    c.max_skips_in_row = 10
    c.batch_size = 16
    c.mesh_data = 0  # devices on the data axis; 0: all

    c.model = ConfigDict(dict(source="random", seed=0, vocab_size=40, image_size=14, patch_size=7, width=16,
                              vision_layers=1, qformer_layers=2, opt_layers=2, num_query_tokens=3, init_std=0.2))
    c.rollout = ConfigDict(dict(max_new_tokens=8, top_k=6, temperature=2.0))
    c.reward = ConfigDict(dict(kind="token_count", target=20, eos_token_id=2))
    c.a2c = ConfigDict(dict(estimator="a2c", prob="sampled", objective="prob", micro_batches=2, learning_rate=3e-2,
                            warmup_steps=1, clip_norm=1.0, clip_mode="joint"))
    c.value = ConfigDict(dict(lora_rank=2, lora_alpha=4.0, head="transformer", head_layers=1, head_mlp_ratio=2))
    c.data = ConfigDict(dict(source="random"))
    return c
