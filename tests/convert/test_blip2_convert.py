"""Converter strictness (damaged sources) and the way back to transformers."""
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import factories as F
from tests.helpers import hf_layout, hf_new_tokens, run_module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    hf = F.save_tiny_blip2(str(root / "hf"), seed=11)
    return root, hf


def _damaged(root, name, edit):
    """A copy of the tiny checkpoint with its weights edited by `edit(state_dict)`."""
    import shutil

    dst = root / name
    shutil.copytree(root / "hf", dst)
    sd = load_file(str(dst / "model.safetensors"))
    edit(sd)
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(
    "name,edit,key",
    [
        ("missing", lambda sd: sd.pop("qformer.encoder.layer.2.output_query.LayerNorm.bias"),
         "qformer.encoder.layer.2.output_query.LayerNorm.bias"),
        ("shape", lambda sd: sd.__setitem__("language_projection.weight", torch.zeros(30, 19)),
         "language_projection.weight"),
        ("unknown", lambda sd: sd.__setitem__("vision_model.encoder.layers.0.extra.weight", torch.zeros(3)),
         "vision_model.encoder.layers.0.extra.weight"),
    ],
)
def test_damaged_source_fails_naming_the_key_and_leaves_nothing(tiny, name, edit, key):
    root, _ = tiny
    src = _damaged(root, name, edit)
    dst = root / f"out-{name}"
    proc = run_module("convert.blip2", "--src", str(src), "--dst", str(dst), "--quiet", check=False)
    assert proc.returncode != 0
    assert key in proc.stderr
    assert not dst.exists()
    assert not [p for p in os.listdir(root) if p.startswith(f".out-{name}")]  # no partial folder either


def test_legacy_q_v_bias_layout_converts(tiny):
    """Older checkpoints store the ViT attention bias as q_bias / v_bias."""
    root, hf = tiny

    def legacy(sd):
        for i in range(3):
            base = f"vision_model.encoder.layers.{i}.self_attn."
            q, _, v = sd.pop(base + "qkv.bias").chunk(3)
            sd[base + "q_bias"], sd[base + "v_bias"] = q.clone(), v.clone()

    src = _damaged(root, "legacy", legacy)
    run_module("convert.blip2", "--src", str(src), "--dst", str(root / "legacy-jax"), "--quiet")
    from vlrm_jax import Captioner

    bias = np.asarray(Captioner.load(str(root / "legacy-jax")).module.vision_model.layers.qkv.bias[...])
    d = 30
    assert np.all(bias[:, d:2 * d] == 0)
    expected = hf.state_dict()["vision_model.encoder.layers.1.self_attn.qkv.bias"].numpy()
    np.testing.assert_array_equal(bias[1, :d], expected[:d])


def test_round_trip_to_transformers_is_strict_and_exact(tiny):
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    from vlrm_jax import Captioner

    root, hf = tiny
    run_module("convert.blip2", "--src", str(root / "hf"), "--dst", str(root / "jax"), "--quiet")
    run_module("convert.to_hf", "--src", str(root / "jax"), "--dst", str(root / "back"))
    back, info = Blip2ForConditionalGeneration.from_pretrained(str(root / "back"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    for k, v in hf.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, atol=0, rtol=0, msg=k)
    pixels = F.random_pixels(2, seed=4)
    ids, mask = F.left_padded_ids(2, 6, seed=5)
    full_ids, full_mask = hf_layout(ids, mask, 5, F.IMAGE_TOKEN)
    args = dict(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2), input_ids=torch.tensor(full_ids),
                attention_mask=torch.tensor(full_mask))
    with torch.no_grad():
        np.testing.assert_array_equal(back.eval()(**args).logits.numpy(), hf(**args).logits.numpy())

    # it runs as transformers runs BLIP2: generate from pixels alone, and Blip2Processor's image
    # placeholder is the config's image_token_index
    ours = Captioner.load(str(root / "jax")).generate(pixels, max_new_tokens=6)
    np.testing.assert_array_equal(ours, hf_new_tokens(back, pixels, max_new_tokens=6, do_sample=False))
    processor = AutoProcessor.from_pretrained(str(root / "back"))
    assert processor.num_query_tokens == back.config.num_query_tokens
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == back.config.image_token_index


def test_existing_destination_is_refused(tiny):
    root, _ = tiny
    (root / "exists").mkdir()
    proc = run_module("convert.blip2", "--src", str(root / "hf"), "--dst", str(root / "exists"), check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr
