"""The edges of `python main.py`: a config key that does not exist is named by its dotted path
with the closest existing keys; a resume whose config changes the training is refused before
anything compiles, listing each changed key, unless `--allow_config_change` is given, and an
allowed change is appended to WORKDIR/config_history.jsonl. Fast: the workdir a run leaves (its
run_config.json and a complete checkpoint) is written here, not trained."""
import json
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.rl.main_runs import ARGS, main

TINY = str(Path(REPO) / "configs" / "tiny.py")


def _unknown_key_message(*overrides):
    from absl import flags
    from ml_collections import config_flags

    from vlrm_jax.config_utils import unknown_key_message

    flag_values = flags.FlagValues()  # main.py's flag, defined apart from absl's global flags
    config_flags.DEFINE_config_file("config", None, "run config", flag_values=flag_values, lock_config=True)
    return unknown_key_message(["main.py", f"--config={TINY}", *overrides], "config", flag_values)


def test_main_names_an_unknown_key_with_the_closest_and_exits_2(tmp_path):
    proc = main(tmp_path, "--config.rollout.nonexistent=1", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ("main.py: bad config: unknown config key 'rollout.nonexistent'; closest: rollout.max_new_tokens, "
            "rollout.temperature, rollout.top_k\n") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # stopped before anything was built or written


@pytest.mark.parametrize("override,message", [
    ("--config.nonexistent=1", "unknown config key 'nonexistent'; nothing close; top-level keys: a2c, batch_size, "),
    ("--config.rollot.max_new_tokens=3", "unknown config key 'rollot.max_new_tokens'; closest: rollout.max_new_tokens"),
    ("--config.reward.weights.sims=2.0", "unknown config key 'reward.weights.sims'; closest: reward.weights.sim"),
    ("--config.mesh.data.x=1", "unknown config key 'mesh.data.x'; closest: mesh.data"),
])
def test_unknown_keys_are_named_by_their_dotted_path(override, message):
    assert _unknown_key_message("--config.total_steps=3", override).startswith(message)


def test_existing_keys_leave_the_message_to_absl():
    assert _unknown_key_message("--config.total_steps=abc", "--config.reward.weights.sim=1.0") is None


def _config(workdir, **changes):
    """The tiny config as main_runs.ARGS sets it (integer keys), on `workdir`, with dotted keys changed."""
    from vlrm_jax.config_utils import load_config

    cfg = load_config(TINY)
    as_main_runs = dict(arg.removeprefix("--config.").split("=") for arg in ARGS[1:])
    for key, value in {**{k: int(v) for k, v in as_main_runs.items()}, "workdir": str(workdir), **changes}.items():
        *sections, name = key.split(".")
        node = cfg
        for section in sections:
            node = node[section]
        node[name] = value
    return cfg


@pytest.fixture
def trained_workdir(tmp_path):
    """What a run of main.py leaves: run_config.json and a complete checkpoint of step 5."""
    import jax.numpy as jnp

    from vlrm_jax.rl import run_config
    from vlrm_jax.rl.checkpoint import Checkpoints

    run_config.save_run_config(_config(tmp_path), str(tmp_path / "models" / "captioner"))
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.save(5, {"w": jnp.zeros(2)}, {"step": 5})
    checkpoints.wait()
    checkpoints.close()
    return tmp_path


def test_main_refuses_a_resume_that_changes_the_training(trained_workdir):
    saved = (trained_workdir / "run_config.json").read_text()
    proc = main(trained_workdir, "--config.batch_size=32", "--config.a2c.learning_rate=0.01",
                "--config.log_every=2", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"the run in {trained_workdir} was trained to step 5 under another config" in proc.stderr
    assert "\n  a2c.learning_rate: 0.03 -> 0.01\n  batch_size: 16 -> 32\n" in proc.stderr  # log_every is free
    assert "--allow_config_change" in proc.stderr and "Traceback" not in proc.stderr
    assert (trained_workdir / "run_config.json").read_text() == saved
    assert sorted(p.name for p in trained_workdir.iterdir()) == ["checkpoints", "run_config.json"]


def test_operational_keys_change_freely(trained_workdir):
    from vlrm_jax.rl import run_config

    cfg = _config(trained_workdir, total_steps=60, log_every=3, samples_every=7, eval_every=9, checkpoint_every=2,
                  keep_checkpoints=5, **{"distributed.timeout_s": 60, "data.workers": 2})
    assert run_config.check_resume(cfg, allow_change=False) == run_config.Resume(step=5)


def test_an_allowed_change_is_appended_to_the_history(trained_workdir):
    from vlrm_jax.rl import run_config

    captioner = str(trained_workdir / "models" / "captioner")
    history = trained_workdir / "config_history.jsonl"
    for changes, old in (({"a2c.learning_rate": 0.01}, 0.03), ({"a2c.learning_rate": 0.01, "batch_size": 32}, 16)):
        cfg = _config(trained_workdir, **changes)
        with pytest.raises(run_config.ConfigChanged, match="trained to step 5 under another config"):
            run_config.check_resume(cfg, allow_change=False)
        resume = run_config.check_resume(cfg, allow_change=True)
        run_config.append_history(cfg, resume)
        run_config.save_run_config(cfg, captioner)  # now the saved config: the next start compares with it
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert [{k: v for k, v in line.items() if k != "time"} for line in lines] == [
        {"resumed_from_step": 5, "changes": {"a2c.learning_rate": {"old": 0.03, "new": 0.01}}},
        {"resumed_from_step": 5, "changes": {"batch_size": {"old": 16, "new": 32}}}]
    assert all(line["time"].endswith("Z") for line in lines)
    assert json.loads((trained_workdir / "run_config.json").read_text())["config"]["batch_size"] == 32


def test_an_unreadable_saved_config_refuses_the_resume(trained_workdir):
    from vlrm_jax.rl import run_config

    (trained_workdir / "run_config.json").write_text('{"config": ')  # a file cut short
    with pytest.raises(run_config.ConfigChanged, match="run_config.json cannot be read"):
        run_config.check_resume(_config(trained_workdir), allow_change=False)


def test_without_a_complete_checkpoint_there_is_nothing_to_compare(tmp_path):
    from vlrm_jax.rl import run_config

    run_config.save_run_config(_config(tmp_path), str(tmp_path / "models" / "captioner"))
    (tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-1").mkdir(parents=True)  # a save cut short
    resume = run_config.check_resume(_config(tmp_path, batch_size=32), allow_change=False)
    assert resume == run_config.Resume(step=None)
