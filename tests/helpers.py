"""Small utilities shared by tests."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m module args...` from the repository root, as a user would."""
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def convert_in_process(module: str, *args: str) -> None:
    """`python -m module args...`'s main, called here: for fixtures that need a converted folder
    (the command line itself, exit codes and messages are tested through run_module)."""
    import contextlib
    import importlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        importlib.import_module(module).main(list(args))


def hf_layout(ids, mask, num_query: int, image_token: int):
    """transformers' BLIP2 input for left-padded text: [pads, image tokens, BOS, text]."""
    import numpy as np

    b = ids.shape[0]
    full_ids = np.concatenate([np.full((b, num_query), image_token), ids], 1)
    full_mask = np.concatenate([np.ones((b, num_query), mask.dtype), mask], 1)
    order = np.argsort(full_mask, axis=1, kind="stable")  # padding (0) first, order kept
    return np.take_along_axis(full_ids, order, 1), np.take_along_axis(full_mask, order, 1)


def hf_new_tokens(hf, pixels, **kw):
    """transformers' BLIP2 `generate` from channels-last pixels: the new tokens only, padded to
    max_new_tokens with the pad id (the project's fixed-width layout)."""
    import numpy as np
    import torch

    with torch.no_grad():
        out = hf.generate(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2), **kw).numpy()
    new = out[:, hf.config.num_query_tokens + 1:]
    n = kw["max_new_tokens"]
    return np.pad(new, ((0, 0), (0, n - new.shape[1])), constant_values=hf.config.text_config.pad_token_id)
