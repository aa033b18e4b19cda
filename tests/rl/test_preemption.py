"""Preemption at random moments: ten main.py runs on the tiny config, each killed with SIGKILL
at a moment drawn from a fixed seed (steps and asynchronous checkpoint writes included) and
started again, end with bitwise the parameters and metrics of an uninterrupted run; each restart
names the checkpoint it resumed from."""
import random
import signal
import time

import jax
import numpy as np
import pytest

from tests.rl.main_runs import STEPS, final_state, main, metrics, start, wait_for

TRIALS = 10


@pytest.mark.slow
def test_random_kills_then_restart_equal_an_uninterrupted_run(straight_run, tmp_path):
    want_metrics = metrics(straight_run)
    want_state, _ = final_state(straight_run)
    outcomes = []
    for trial in range(TRIALS):
        workdir = tmp_path / f"trial{trial}"
        proc = start(workdir)
        wait_for(lambda: (workdir / "metrics.jsonl").exists(), proc)  # compiled: steps and saves under way
        time.sleep(random.Random(trial).uniform(0.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        written = len(metrics(workdir))
        saved = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]  # complete ones
        restarted = main(workdir)
        if saved:
            assert f"main.py: resuming from step {max(saved)} ({workdir / 'checkpoints'})\n" in restarted.stdout
        else:  # killed before the first checkpoint: a fresh start
            assert "resuming" not in restarted.stdout, f"trial {trial}"
        assert metrics(workdir) == want_metrics, f"trial {trial}"
        state, _ = final_state(workdir)
        for a, b in zip(jax.tree.leaves(want_state), jax.tree.leaves(state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"trial {trial}")
        outcomes.append(written)
    print(f"steps logged when killed, per trial: {outcomes}")
    assert sum(0 < n < STEPS for n in outcomes) >= TRIALS // 2  # most kills landed mid-run
