"""What every converter command shares: arguments, error reporting, files that travel along."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from convert.table import ConversionError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".index.json")
NOT_COPIED = {"config.json", "README.md", ".gitattributes"}


def add_output_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--dst, --dtype, --overwrite, --quiet: the output side of every converter."""
    p.add_argument("--dst", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="store the frozen towers in this dtype (default: the config's float32; "
                        "the Q-Former and query tokens stay float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dst")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def base_parser(description: str) -> argparse.ArgumentParser:
    """The transformers converters: --src plus the output arguments."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="hub id or local save_pretrained folder")
    return add_output_args(p)


def side_files(src_dir: str) -> list[str]:
    """Tokenizer, processor and generation files of a transformers folder: everything but the
    weights and the model config, so the converted folder needs nothing else to run."""
    out = []
    for name in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, name)
        if os.path.isfile(path) and name not in NOT_COPIED and not name.endswith(WEIGHT_SUFFIXES) and not name.startswith("."):
            out.append(path)
    return out


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a converter; a bad source exits with status 2 and one line naming the problem."""
    try:
        main(argv)
    except (ConversionError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
