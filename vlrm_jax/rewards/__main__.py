"""`python -m vlrm_jax.rewards COMMAND ...`: command-line tools of the reward package."""
from __future__ import annotations

import argparse
import sys

from vlrm_jax.rewards.explain import add_explain_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlrm_jax.rewards", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_explain_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
