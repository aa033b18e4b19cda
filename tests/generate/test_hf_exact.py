"""Greedy and beam search give transformers' token ids exactly (tiny random BLIP2, fp32)."""
import numpy as np
import pytest
import torch

from tests import factories as F
from tests.helpers import convert_in_process

BATCH = 8
CONFIGS = [
    dict(max_new_tokens=12),
    dict(max_new_tokens=12, no_repeat_ngram_size=2, min_new_tokens=3),
    dict(max_new_tokens=12, num_beams=3),
    dict(max_new_tokens=12, num_beams=5, no_repeat_ngram_size=2, min_new_tokens=4),
    dict(max_new_tokens=10, num_beams=4, length_penalty=0.6, num_return_sequences=2),
    dict(max_new_tokens=10, num_beams=3, early_stopping=True),
    dict(max_new_tokens=9, num_beams=3, early_stopping="never", length_penalty=1.5),
    # past two of the beam loop's cache phases (search.PHASE_TOKENS)
    dict(max_new_tokens=40, num_beams=4, no_repeat_ngram_size=3, min_new_tokens=18),
]


@pytest.fixture(scope="module", params=[1.0, 3.5], ids=["long", "early-eos"])
def models(request, tmp_path_factory):
    """eos_scale 3.5 makes many captions end on EOS before the limit; 1.0 makes none end."""
    root = tmp_path_factory.mktemp("gen")
    hf = F.save_tiny_blip2(str(root / "hf"), seed=0, eos_scale=request.param)
    convert_in_process("convert.blip2", "--src", str(root / "hf"), "--dst", str(root / "jax"), "--quiet")
    from vlrm_jax import Captioner

    return hf, Captioner.load(str(root / "jax")), request.param


def hf_new_tokens(hf, pixels, **kw):
    with torch.no_grad():
        out = hf.generate(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2), **kw).numpy()
    new = out[:, hf.config.num_query_tokens + 1:]
    n = kw["max_new_tokens"]
    return np.pad(new, ((0, 0), (0, n - new.shape[1])), constant_values=hf.config.text_config.pad_token_id)


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_token_ids_equal_transformers(models, kw):
    hf, cap, eos_scale = models
    pixels = F.random_pixels(BATCH, seed=3)
    ref = hf_new_tokens(hf, pixels, **kw)
    ours = cap.generate(pixels, **kw)
    np.testing.assert_array_equal(ours, ref)
    ended = (ref == hf.config.text_config.eos_token_id).any(axis=1)
    if eos_scale > 1 and "min_new_tokens" not in kw:
        assert ended.sum() >= BATCH // 2  # the case "ends early on EOS" is really exercised
    if eos_scale == 1.0:
        assert not ended.any()


def test_rollout_mask_and_logprobs_agree_with_full_forward(models):
    """Cached decoding equals recomputation: a full forward over [BOS + generated tokens] gives the
    same per-token log-probs, and the greedy tokens are its argmaxes."""
    _, cap, _ = models
    pixels = F.random_pixels(4, seed=9)
    out = cap.rollout(pixels, max_new_tokens=10)
    bos = cap.config.text.bos_token_id
    ids = np.concatenate([np.full((4, 1), bos), out.tokens], axis=1)
    logits = cap.logits(pixels, ids)[:, :-1]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    valid = out.mask.astype(bool)
    np.testing.assert_array_equal(np.argmax(logits, -1)[valid], out.tokens[valid])
    chosen = np.take_along_axis(logp, out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs[valid], chosen[valid], atol=1e-4)
    assert np.all(out.logprobs[~valid] == 0)
    eos = cap.config.text.eos_token_id
    for row, m in zip(out.tokens, out.mask):
        n = m.sum()
        assert n == len(row) or row[n - 1] == eos  # mask ends with EOS or at the length limit
