"""Train a captioner with A2C: `python main.py --config=configs/tiny.py [--config.key=value ...]`.

Started again with the same workdir, the run resumes from its latest complete checkpoint and says
so (`main.py: resuming from step N (CHECKPOINTS)`). The config is first compared with the one the
workdir was trained with (WORKDIR/run_config.json): keys that say how the run is operated
(total_steps, how often it logs, samples, evaluates and saves, distributed.*, ...; see
vlrm_jax/rl/run_config.py) change freely, any other changed key refuses the start with exit status
2, listing each key with its old and new value. `--allow_config_change` resumes anyway and appends
the change to WORKDIR/config_history.jsonl. SIGTERM (preemption) saves the state at the next step
boundary, prints `main.py: SIGTERM: saved step N; ...` and exits 0: the same command resumes.
Several processes (a GPU cluster, a TPU pod slice): every process runs this same command with
`--config.distributed.enabled=True` (and, off TPU / SLURM / Open MPI, the coordinator address,
process count and its own process id); see vlrm_jax/distributed.py.
Exit status 2: the config is wrong (the message names the key: an unknown key with the closest
existing ones) or changes a resumed run's training; nothing was compiled. Exit status
1: the run stopped on too many non-finite updates in a row or a failed checkpoint write (the
message names the last complete checkpoint). `kill -USR1 PID` prints every thread's stack (a run
that seems hung: which collective or barrier it waits in).
"""
from __future__ import annotations

import faulthandler
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vlrm_jax.config_utils import flags_parser

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config file (configs/*.py)", lock_config=True)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "resume although keys that change the training differ from the workdir's "
    "run_config.json; the change is appended to WORKDIR/config_history.jsonl")


def main(argv) -> None:
    from vlrm_jax import distributed
    from vlrm_jax.rl import loop, run, run_config

    logging.set_verbosity(logging.WARNING)  # orbax reports every file it writes at INFO
    # `kill -USR1 PID` prints every thread's Python stack to stderr: where a hung process waits
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    cfg = _CONFIG.value
    if cfg is None:
        print("main.py: --config is required", file=sys.stderr)
        sys.exit(2)
    try:
        distributed.initialize(run.distributed_config(cfg))  # before anything touches the devices
        resume = run_config.check_resume(cfg, _ALLOW_CONFIG_CHANGE.value)  # before anything compiles
        state = run.train(cfg, resume)
    except run.ConfigError as e:
        print(f"main.py: bad config: {e}", file=sys.stderr)
        sys.exit(2)
    except run_config.ConfigChanged as e:
        print(f"main.py: {e}\nstart again with --allow_config_change to resume under the new config (the change is "
              f"appended to {os.path.join(cfg.workdir, run_config.CONFIG_HISTORY)}), or give a new workdir",
              file=sys.stderr)
        sys.exit(2)
    except (loop.TooManySkips, loop.CheckpointError) as e:
        print(f"main.py: {e}", file=sys.stderr)
        sys.exit(1)
    if distributed.is_main():
        print(_ending(int(state.step), cfg))


def _ending(done: int, cfg) -> str:
    if done < cfg.total_steps:  # the loop returns early only on SIGTERM, after saving that step
        return f"main.py: SIGTERM: saved step {done}; start the same command again to resume"
    return f"main.py: stopped at step {done} of {cfg.total_steps}; workdir {cfg.workdir}"


if __name__ == "__main__":
    app.run(main, flags_parser=flags_parser("main.py"))
