"""Train a captioner with A2C: `python main.py --config=configs/tiny.py [--config.key=value ...]`.

Started again with the same workdir, the run resumes from its latest complete checkpoint.
Several processes (a GPU cluster, a TPU pod slice): every process runs this same command with
`--config.distributed.enabled=True` (and, off TPU / SLURM / Open MPI, the coordinator address,
process count and its own process id); see vlrm_jax/distributed.py.
Exit status 2: the config is wrong (the message names the key); nothing was compiled. Exit status
1: the run stopped on too many non-finite updates in a row or a failed checkpoint write (the
message names the last complete checkpoint). `kill -USR1 PID` prints every thread's stack (a run
that seems hung: which collective or barrier it waits in).
"""
from __future__ import annotations

import faulthandler
import signal
import sys

from absl import app, logging
from ml_collections import config_flags

from vlrm_jax.config_utils import flags_parser

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config file (configs/*.py)", lock_config=True)


def main(argv) -> None:
    from vlrm_jax import distributed
    from vlrm_jax.rl import loop, run

    logging.set_verbosity(logging.WARNING)  # orbax reports every file it writes at INFO
    # `kill -USR1 PID` prints every thread's Python stack to stderr: where a hung process waits
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    cfg = _CONFIG.value
    if cfg is None:
        print("main.py: --config is required", file=sys.stderr)
        sys.exit(2)
    try:
        run.check_distributed(cfg)
        distributed.initialize(cfg.distributed)  # before anything touches the devices
        step, stream, loop_cfg, hooks, captioner_dir = run.build(cfg)
    except run.ConfigError as e:
        print(f"main.py: bad config: {e}", file=sys.stderr)
        sys.exit(2)
    run.save_run_config(cfg, captioner_dir)
    try:
        state = loop.train(step, stream, loop_cfg, cfg.seed, hooks)
    except (loop.TooManySkips, loop.CheckpointError) as e:
        print(f"main.py: {e}", file=sys.stderr)
        sys.exit(1)
    if distributed.is_main():
        print(f"main.py: stopped at step {int(state.step)} of {cfg.total_steps}; workdir {cfg.workdir}")


if __name__ == "__main__":
    app.run(main, flags_parser=flags_parser("main.py"))
