"""The method's effect, shortened: VLRM trained for 100 updates at three times the demo's learning
rate on the demo's own pre-trained models (a copy in tests/assets/shapes_world) by main.py's
builder and loop raises the reward and lengthens the captions, as the demo's 300 updates do.

The copy must be the models `make demo` trains from configs/shapes.py now: a changed pre-training
config fails the first test, and `make test-world-asset` (after `make demo`) refreshes it."""
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO
from vlrm_jax.config_utils import load_config
from vlrm_jax.world import pretrain, rl_runs, shapes

ASSET = Path(REPO) / "tests" / "assets" / "shapes_world"
MODELS = ("captioner", "itm", "reference_lm")  # what the VLRM run reads (CLIP only evaluates)
STEPS, BATCH, SCENES, LEARNING_RATE = 100, 64, 512, 3e-4


def test_the_asset_holds_the_models_the_demo_trains_now():
    cfg = load_config("shapes", "")
    for stage in MODELS:
        record = json.loads((ASSET / "models" / stage / "pretrain.json").read_text())
        assert record["hash"] == pretrain.stage_hash(cfg, stage), (
            f"tests/assets/shapes_world/models/{stage} is from another pre-training config: run "
            "`make demo` and `make test-world-asset`")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    import dataclasses

    from vlrm_jax.rl import loop, run

    root = tmp_path_factory.mktemp("direction")
    world_cfg = load_config("shapes", "").world
    # the first scenes of the demo's training split (a split is a pure function of its seed)
    split = shapes.generate_split(world_cfg.seed, shapes.SPLITS.index("train"), SCENES, world_cfg.image_size,
                                  world_cfg.supersample)
    shapes.write_world(shapes.World(world_cfg.seed, world_cfg.image_size, split, split), root / "world")
    (root / "models").mkdir()
    for stage in MODELS:
        (root / "models" / stage).symlink_to(ASSET / "models" / stage)
    cfg = rl_runs.run_config(root, "vlrm", smoke=False)
    cfg.total_steps, cfg.batch_size, cfg.checkpoint_every = STEPS, BATCH, STEPS
    cfg.samples_every, cfg.eval_every, cfg.eval.source = 0, 0, ""
    cfg.a2c.learning_rate = LEARNING_RATE
    step, stream, loop_cfg, hooks, _ = run.build(cfg)
    loop.train(step, stream, dataclasses.replace(loop_cfg, progress=False), cfg.seed, hooks)
    lines = (Path(cfg.workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_vlrm_raises_the_reward_and_lengthens_the_captions(short_run):
    assert [m["step"] for m in short_run] == list(range(1, STEPS + 1))
    first, last = short_run[:10], short_run[-10:]
    mean = lambda rows, key: float(np.mean([m[key] for m in rows]))  # noqa: E731
    # measured (first and last 10 updates): reward -1.87 -> -1.60, length 9.1 -> 11.9 tokens; after
    # 50 updates the length had risen only 0.5 (the captioner starts from 14-word beam captions)
    assert mean(last, "reward/mean") > mean(first, "reward/mean") + 0.15, (mean(first, "reward/mean"), mean(last, "reward/mean"))
    assert mean(last, "caption/length") > mean(first, "caption/length") + 1.5, (mean(first, "caption/length"), mean(last, "caption/length"))
    assert short_run[-1]["skipped"] == 0

