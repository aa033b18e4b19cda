"""convert.blip2_itm is as strict as the captioner converter."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import factories as F
from tests.helpers import run_module


@pytest.mark.parametrize("edit,key", [
    (lambda sd: sd.pop("itm_head.bias"), "itm_head.bias"),
    (lambda sd: sd.__setitem__("text_projection.weight", torch.zeros(12, 7)), "text_projection.weight"),
    (lambda sd: sd.__setitem__("qformer.encoder.layer.1.crossattention.attention.query.weight", torch.zeros(20, 20)),
     "qformer.encoder.layer.1.crossattention.attention.query.weight"),  # layer 1 has no cross-attention
])
def test_damaged_itm_source_fails_naming_the_key(tmp_path, edit, key):
    F.save_tiny_itm(str(tmp_path / "hf"))
    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    edit(sd)
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    proc = run_module("convert.blip2_itm", "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and key in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_captioner_folder_is_not_an_itm_source(tmp_path):
    F.save_tiny_blip2(str(tmp_path / "cap"))
    proc = run_module("convert.blip2_itm", "--src", str(tmp_path / "cap"), "--dst", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and "Blip2ForImageTextRetrieval" in proc.stderr
