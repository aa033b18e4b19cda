"""Tiny converted models shared by the caption and evaluate tests of this folder."""
import pytest
import torch

from tests import factories as F
from tests.clip import tiny as tiny_clip
from tests.helpers import convert_in_process


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A folder with `cap` (a tiny converted BLIP2 captioner) and `clip` (a tiny converted OpenCLIP)."""
    root = tmp_path_factory.mktemp("evalmodels")
    F.save_tiny_blip2(str(root / "cap-hf"), seed=1, eos_scale=2.0)
    convert_in_process("convert.blip2", "--src", str(root / "cap-hf"), "--dst", str(root / "cap"), "--quiet")
    config = tiny_clip.register(str(root))
    torch.save(tiny_clip.create(seed=2).state_dict(), root / "clip.pt")
    convert_in_process("convert.open_clip", "--model", tiny_clip.NAME, "--model-config", config, "--pretrained",
                       str(root / "clip.pt"), "--dst", str(root / "clip"), "--quiet")
    return root
