"""BLIP2 captioner: transformers -> convert CLI -> vlrm_jax, logits equal within 1e-4 (fp32)."""
import numpy as np
import pytest
import torch

from tests import factories as F
from tests.helpers import convert_in_process, hf_layout

TOL = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip2")
    hf = F.save_tiny_blip2(str(root / "hf"))
    convert_in_process("convert.blip2", "--src", str(root / "hf"), "--dst", str(root / "jax"), "--quiet")
    from vlrm_jax import Captioner

    return hf, Captioner.load(str(root / "jax")), root


def _hf_text_logits(hf, pixels, ids, mask):
    q = hf.config.num_query_tokens
    full_ids, full_mask = hf_layout(ids, mask, q, hf.config.image_token_index)
    with torch.no_grad():
        out = hf(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2), input_ids=torch.tensor(full_ids),
                 attention_mask=torch.tensor(full_mask)).logits.numpy()
    # keep the valid text positions of each row, in order
    return [out[b][full_mask[b].astype(bool)][q:] for b in range(len(ids))]


def test_logits_match_transformers_with_left_padding(converted):
    hf, cap, _ = converted
    pixels = F.random_pixels(4, seed=1)
    ids, mask = F.left_padded_ids(4, 9, seed=2)
    ours = cap.logits(pixels, ids, mask)
    ref = _hf_text_logits(hf, pixels, ids, mask)
    assert ours.shape == (4, 9, F.VOCAB)
    for b in range(4):
        got = ours[b][mask[b].astype(bool)]
        np.testing.assert_allclose(got, ref[b], atol=TOL, rtol=0)


def test_vision_and_soft_prompt_match(converted):
    hf, cap, _ = converted
    pixels = F.random_pixels(3, seed=3)
    with torch.no_grad():
        feats = hf.get_image_features(torch.tensor(pixels).permute(0, 3, 1, 2), return_dict=True)
    import jax.numpy as jnp

    image = cap.module.vision_model(jnp.asarray(pixels))
    np.testing.assert_allclose(np.asarray(image), feats.last_hidden_state.numpy(), atol=TOL)
    np.testing.assert_allclose(np.asarray(cap.module.soft_prompt(image)), feats.pooler_output.numpy(), atol=TOL)


def test_weights_are_not_constant(converted):
    """Guard for the parity premise: LayerNorm parameters and query tokens really are random."""
    hf, _, _ = converted
    sd = hf.state_dict()
    for key in ["query_tokens", "qformer.layernorm.bias", "vision_model.post_layernorm.weight",
                "vision_model.encoder.layers.0.self_attn.qkv.bias"]:
        assert sd[key].std() > 0.05, key
