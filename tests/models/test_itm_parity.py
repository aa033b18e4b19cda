"""BLIP2-ITM: transformers -> convert CLI -> vlrm_jax; ITM logits and ITC similarities within 1e-4."""
import numpy as np
import pytest
import torch

from tests import factories as F
from tests.helpers import convert_in_process

TOL = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("itm")
    hf = F.save_tiny_itm(str(root / "hf"), seed=3)
    convert_in_process("convert.blip2_itm", "--src", str(root / "hf"), "--dst", str(root / "jax"), "--quiet")
    from vlrm_jax import ItmScorer

    return hf, ItmScorer.load(str(root / "jax")), root


def _torch_inputs(pixels, ids, mask):
    return dict(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2), input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask))


def test_itm_logits_match_with_padded_text(converted):
    hf, itm, _ = converted
    pixels = F.random_pixels(4, seed=5)
    ids, mask = F.right_padded_ids(4, 8, seed=6)
    with torch.no_grad():
        ref = hf(**_torch_inputs(pixels, ids, mask), use_image_text_matching_head=True).logits_per_image.numpy()
    ours = itm.logits(pixels, ids, mask)
    assert ours.shape == (4, 2)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
    assert np.abs(ref[:, 1] - ref[:, 0]).max() > 1e-2  # the two logits really differ


def test_itc_similarity_matches(converted):
    hf, itm, _ = converted
    pixels = F.random_pixels(3, seed=7)
    ids, mask = F.right_padded_ids(3, 7, seed=8)
    with torch.no_grad():
        ref = hf(**_torch_inputs(pixels, ids, mask), use_image_text_matching_head=False).logits_per_image.numpy()
    np.testing.assert_allclose(itm.itc_similarity(pixels, ids, mask), ref, atol=TOL, rtol=0)


def test_sharing_check_both_ways(converted, tmp_path):
    """Trunks equal when the ITM ViT is copied from the captioner (final LayerNorm may differ),
    different when one trunk tensor differs; the reference LM likewise."""
    import shutil

    from safetensors.torch import load_file, save_file

    from vlrm_jax import Captioner, ItmScorer, ReferenceLM
    from vlrm_jax.sharing import reference_lm_shared, vision_trunk_shared

    hf_itm, itm, root = converted
    cap_hf = F.save_tiny_blip2(str(tmp_path / "cap"), seed=9)
    convert_in_process("convert.blip2", "--src", str(tmp_path / "cap"), "--dst", str(tmp_path / "cap-jax"), "--quiet")
    cap = Captioner.load(str(tmp_path / "cap-jax"))
    assert not vision_trunk_shared(cap.module, itm.module).shared

    # an ITM whose ViT trunk is the captioner's, with its own final LayerNorm
    shutil.copytree(root / "hf", tmp_path / "itm-shared")
    sd = load_file(str(tmp_path / "itm-shared" / "model.safetensors"))
    for k, v in cap_hf.state_dict().items():
        if k.startswith("vision_model.") and "post_layernorm" not in k:
            sd[k] = v.clone()
    save_file(sd, str(tmp_path / "itm-shared" / "model.safetensors"), metadata={"format": "pt"})
    convert_in_process("convert.blip2_itm", "--src", str(tmp_path / "itm-shared"), "--dst", str(tmp_path / "itm-jax"),
                       "--quiet")
    shared_itm = ItmScorer.load(str(tmp_path / "itm-jax"))
    report = vision_trunk_shared(cap.module, shared_itm.module)
    assert report.shared, report.reason

    # one tensor changed -> not shared, and the report names it
    sd["vision_model.encoder.layers.2.mlp.fc2.bias"][0] += 1e-3
    save_file(sd, str(tmp_path / "itm-shared" / "model.safetensors"), metadata={"format": "pt"})
    convert_in_process("convert.blip2_itm", "--src", str(tmp_path / "itm-shared"), "--dst", str(tmp_path / "itm-jax2"),
                       "--quiet")
    report = vision_trunk_shared(cap.module, ItmScorer.load(str(tmp_path / "itm-jax2")).module)
    assert not report.shared and "fc2.bias" in report.reason

    assert reference_lm_shared(cap.module, ReferenceLM.load(str(tmp_path / "cap-jax")).module).shared
    F.save_tiny_opt(str(tmp_path / "opt"), seed=1)
    convert_in_process("convert.opt", "--src", str(tmp_path / "opt"), "--dst", str(tmp_path / "opt-jax"), "--quiet")
    assert not reference_lm_shared(cap.module, ReferenceLM.load(str(tmp_path / "opt-jax")).module).shared
