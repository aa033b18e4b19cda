"""The seed sweep's parts that need no trained model: --set changes to a run config (and the
errors that name a bad one), the spread over seeds, the figure, and the refusals before any run.
The sweep end to end on the smoke demo is in test_pretrain_smoke.py (slow)."""
from pathlib import Path

import numpy as np
import pytest

from vlrm_jax.world import rl_runs, sweep


@pytest.fixture
def cfg():
    return rl_runs.run_config(Path("runs/shapes"), "vlrm", smoke=False)


def test_overrides_set_nested_numbers_tuples_and_text(cfg):
    sweep.apply_overrides(cfg, ["a2c.learning_rate=5e-5", "reward.extra_exempt_words=('and', 'small')",
                                "total_steps=200", "a2c.objective=logprob"])
    assert cfg.a2c.learning_rate == 5e-5
    assert tuple(cfg.reward.extra_exempt_words) == ("and", "small")
    assert cfg.total_steps == 200
    assert cfg.a2c.objective == "logprob"


@pytest.mark.parametrize("text, error, named", [
    ("a2c.learning_rat=1e-4", KeyError, "a2c.learning_rat"),
    ("optim.learning_rate=1e-4", KeyError, "optim"),
    ("a2c.learning_rate", ValueError, "KEY=VALUE"),
    ("seed=3", ValueError, "--seeds"),
    ("total_steps=many", TypeError, "total_steps=many"),
])
def test_a_bad_override_names_itself(cfg, text, error, named):
    with pytest.raises(error, match=named):
        sweep.apply_overrides(cfg, [text])


def test_sweep_config_takes_seed_overrides_and_its_own_workdir():
    c = sweep.sweep_config(Path("w"), "lr", "vlrm_rs", 3, ["a2c.learning_rate=5e-5"])
    assert (c.seed, c.a2c.learning_rate) == (3, 5e-5)
    assert Path(c.workdir) == Path("w/sweeps/lr/rl/vlrm_rs_s3")
    assert Path(c.model.captioner) == Path("w/models/captioner")  # the demo's own models


def _rows(values: dict[str, list[float]]) -> dict:
    rows = {"base": {c: 0.1 for c in sweep.SPREAD_COLUMNS}}
    for name, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            rows[f"{name} s{seed}"] = {c: v for c in sweep.SPREAD_COLUMNS}
    return rows


def test_spread_is_over_the_seeds_of_each_kind():
    rows = _rows({"VLRM": [0.2, 0.4, 0.9], "VLRM-RS": [0.5, 0.5, 0.5]})
    s = sweep.spread(rows, ["vlrm", "vlrm_rs"], [0, 1, 2])
    assert s["VLRM"]["R@1"]["mean"] == pytest.approx(0.5)
    assert s["VLRM"]["absent"]["std"] == pytest.approx(np.std([0.2, 0.4, 0.9]))
    assert (s["VLRM"]["objects"]["min"], s["VLRM"]["objects"]["max"]) == (0.2, 0.9)
    assert s["VLRM-RS"]["R@1"]["std"] == 0.0


def test_the_figure_is_written(tmp_path):
    rows = _rows({"VLRM": [0.2, 0.4], "VLRM-RS": [0.5, 0.6]})
    sweep.plot_seeds(rows, ["vlrm", "vlrm_rs"], [0, 1], tmp_path / "seeds.png", "test")
    assert (tmp_path / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs, error, named", [
    (dict(tag="a/b"), ValueError, "--tag"),
    (dict(seeds=[1, 1]), ValueError, "--seeds"),
    (dict(kinds=["ppo"]), ValueError, "--kinds"),
    (dict(), FileNotFoundError, "make demo"),
])
def test_the_sweep_refuses_before_any_run(tmp_path, kwargs, error, named):
    args = dict(seeds=[0], tag="t") | kwargs
    with pytest.raises(error, match=named):
        sweep.run(tmp_path, **args)
    assert not (tmp_path / "sweeps").exists()


def test_the_command_line_asks_for_a_tag_with_changes(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--set", "a2c.learning_rate=5e-5"])
    assert "--set needs --tag" in capsys.readouterr().err
