"""Sampling: reproducible, never outside the top k, first-step frequencies as the tempered
filtered softmax; the loop runs sharded over 8 devices with the same result."""
import jax
import numpy as np
import pytest

from tests import factories as F
from tests.helpers import convert_in_process


@pytest.fixture(scope="module")
def cap(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    F.save_tiny_blip2(str(root / "hf"), seed=4, eos_scale=2.0)
    convert_in_process("convert.blip2", "--src", str(root / "hf"), "--dst", str(root / "jax"), "--quiet")
    from vlrm_jax import Captioner

    return Captioner.load(str(root / "jax"))


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_same_seed_same_samples_and_different_seed_differs(cap):
    pixels = F.random_pixels(6, seed=1)
    kw = dict(do_sample=True, top_k=6, temperature=2.0, max_new_tokens=10)
    a, b = cap.generate(pixels, seed=7, **kw), cap.generate(pixels, seed=7, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, cap.generate(pixels, seed=8, **kw))


def test_every_sampled_token_is_in_the_top_k_and_the_recorded_support(cap):
    pixels = F.random_pixels(6, seed=2)
    k = 3
    out = cap.rollout(pixels, seed=3, do_sample=True, top_k=k, temperature=2.0, max_new_tokens=10, support_size=2 * k)
    plain = cap.rollout(pixels, seed=3, do_sample=True, top_k=k, temperature=2.0, max_new_tokens=10)
    np.testing.assert_array_equal(out.tokens, plain.tokens)  # recording the support changes no draw
    assert plain.support is None and out.support.shape == (6, 10, 2 * k)
    ids = np.concatenate([np.full((6, 1), cap.config.text.bos_token_id), out.tokens], 1)
    logits = cap.logits(pixels, ids)[:, :-1]
    kth = np.sort(logits, -1)[..., -k][..., None]
    chosen = np.take_along_axis(logits, out.tokens[..., None], -1)
    valid = out.mask.astype(bool)
    assert np.all(chosen[valid] >= kth[valid] - 1e-5)
    # the support: the k ids at or above the k-th score (no ties here), the token among them, -1 after the end
    kept = out.support >= 0
    assert np.all(kept.sum(-1)[valid] == k) and not kept[~valid].any()
    picked = np.take_along_axis(logits, np.maximum(out.support, 0), -1)
    assert np.all(picked[kept] >= np.broadcast_to(kth, picked.shape)[kept] - 1e-5)
    assert np.all(np.any(out.support == out.tokens[..., None], -1)[valid])
    # log-probs are those of the unprocessed model distribution
    np.testing.assert_allclose(out.logprobs[valid], np.take_along_axis(_log_softmax(logits), out.tokens[..., None], -1)[..., 0][valid], atol=1e-4)


@pytest.mark.parametrize("kw", [dict(top_k=6, temperature=2.0), dict(top_k=None, top_p=0.7, temperature=0.8)])
def test_first_token_frequencies_match_filtered_tempered_softmax(cap, kw):
    """Chi-square goodness of fit on 4000 draws for one image, fixed seed."""
    n = 4000
    pixels = np.repeat(F.random_pixels(1, seed=5), n, axis=0)
    first = cap.generate(pixels, seed=11, do_sample=True, max_new_tokens=1, **kw)[:, 0]
    logits = cap.logits(pixels[:1], np.full((1, 1), cap.config.text.bos_token_id))[0, 0] / kw["temperature"]
    if kw.get("top_k"):
        logits = np.where(logits < np.sort(logits)[-kw["top_k"]], -np.inf, logits)
    if kw.get("top_p", 1.0) < 1.0:
        order = np.argsort(logits)
        probs = np.exp(_log_softmax(logits[order][None]))[0]
        drop = np.cumsum(probs) <= 1 - kw["top_p"]
        drop[-1] = False
        logits[order[drop]] = -np.inf
    p = np.exp(_log_softmax(logits[None]))[0]
    support = p > 0
    assert set(np.unique(first)) <= set(np.flatnonzero(support))
    counts = np.bincount(first, minlength=len(p))[support]
    expected = n * p[support]
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = support.sum() - 1
    assert dof >= 2
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)  # ~5 sigma: fails only if the law is wrong


def test_sharded_over_eight_devices_equals_single_device(cap):
    from vlrm_jax import Captioner, sharding

    assert jax.device_count() >= 8
    pixels = F.random_pixels(8, seed=6)
    mesh = sharding.make_mesh((4, 2), ("data", "model"))
    distributed = Captioner.load(cap.model_dir).shard(mesh)
    table = distributed.module.language_model.embed_tokens.embedding[...]
    assert table.sharding.spec == jax.sharding.PartitionSpec("model", None)  # vocab really split
    for kw in [dict(max_new_tokens=8, num_beams=3, no_repeat_ngram_size=2),
               dict(max_new_tokens=8, do_sample=True, top_k=6, temperature=2.0)]:
        single = cap.rollout(pixels, seed=1, **kw)
        out = distributed.rollout(sharding.shard_batch(pixels, mesh), seed=1, **kw)
        np.testing.assert_array_equal(out.tokens, single.tokens)
        np.testing.assert_allclose(out.logprobs, single.logprobs, atol=1e-5)


@pytest.mark.parametrize("vocab", [50272, 448, 97])
def test_row_top_k_equals_lax_top_k_with_ties_and_impossible_entries(vocab):
    """The blocked top-k gives lax.top_k's values and ids, ties in id order (97 has no block size
    and takes the fallback)."""
    from vlrm_jax.generate.sampling import row_top_k

    x = np.random.default_rng(vocab).normal(size=(12, vocab)).astype(np.float32)
    x[:, 5::7] = np.round(x[:, 5::7], 1)  # many ties, also across blocks
    x[1] = 0.5  # a row of equal values
    x[2, 30:] = -np.inf  # fewer finite entries than blocks
    x[3, [7, vocab - 3]] = 9.0  # the best pair in the first and the last block
    for k in (1, 6, 10):
        want = jax.lax.top_k(x, k)
        got = jax.jit(row_top_k, static_argnums=1)(x, k)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
