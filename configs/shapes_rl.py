"""VLRM and VLRM-RS on the shapes world: the same main.py, step, reward and evaluation as a real
run, over the four models the demo pre-trains (read from their folders as converted ones are).

    python main.py --config=configs/shapes_rl.py:vlrm      # or :vlrm_rs, :smoke
    (after `make demo` has pre-trained runs/shapes/models)

The world repeats sizes, positions and "and" by design, so its run exempts them from the repeat
penalty too (`reward.extra_exempt_words`); its 8 shape words stay penalised. Sizes are the CPU's:
the paper's batch of 4096 and lr 1e-5 are for BLIP2-OPT-2.7B on a pod. Why each value:
configs/shapes_world_log.md (undated (B), 2026-12-05 (1) and (2)).
"""
from vlrm_jax.rl.defaults import base_config

WORLD_REPEATS = ("small", "large", "and", "top", "bottom", "left", "right", "centre")


def get_config(variant: str = "vlrm"):
    smoke = variant == "smoke" or variant.endswith("_smoke")
    kind = "vlrm" if variant == "smoke" else variant.removesuffix("_smoke")
    if kind not in ("vlrm", "vlrm_rs"):
        raise ValueError(f"configs/shapes_rl.py variant {variant!r}: expected vlrm, vlrm_rs, smoke or <kind>_smoke")
    root = "runs/shapes"
    c = base_config()
    c.workdir = f"{root}/rl/{kind}"
    c.seed = 0
    c.total_steps = 300
    c.checkpoint_every = 50
    c.log_every = 1
    c.samples_every = 25
    c.eval_every = 100
    c.batch_size = 64
    c.mesh.data = 1
    c.model.update(dict(captioner=f"{root}/models/captioner", itm=f"{root}/models/itm",
                        ref_lm=f"{root}/models/reference_lm", clip=f"{root}/models/clip" if kind == "vlrm_rs" else "",
                        dtype=""))
    # Temperature 0.7, not the paper's 2: configs/shapes_world_log.md, undated (C).
    c.rollout.update(dict(max_new_tokens=40, temperature=0.7))
    c.reward.update(dict(kind=kind, extra_exempt_words=WORLD_REPEATS, itm_max_length=48))
    if kind == "vlrm_rs":
        # Phi's weight 0.6, not the paper's 0.3: configs/shapes_world_log.md, 2026-12-05 (2).
        c.reward.weights.rs = 0.6
    # lr 1e-4, not 3e-4: configs/shapes_world_log.md, 2026-12-04 (5).
    c.a2c.update(dict(micro_batches=1, learning_rate=1e-4, warmup_steps=10))
    c.value.update(dict(lora_rank=4, lora_alpha=8.0, head_layers=1, head_mlp_ratio=4))
    c.data.update(dict(source=f"{root}/world/train", workers=2, min_side=8))
    c.eval.update(dict(source=f"{root}/world/test", clip=f"{root}/models/clip", batch_size=100, limit=0,
                        no_repeat_ngram_size=0))  # as the world's demo evaluates (configs/shapes.py)
    if smoke:
        c.workdir = f"{root}/rl/{kind}_smoke"
        c.total_steps, c.checkpoint_every, c.samples_every, c.eval_every = 10, 10, 5, 0
        c.batch_size = 16
        c.eval.limit = 50
    return c
