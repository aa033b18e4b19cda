"""CLIP Recall against a plain loop, on cases built so the answer is known."""
import numpy as np
import pytest

from vlrm_jax.eval import clip_recall, retrieval_ranks


def loop_ranks(text, image, target):
    """Reference: for each text, count images scoring >= its correct image (ties pessimistic)."""
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    ranks = []
    for t in range(len(text)):
        scores = [float(np.dot(text[t], image[j])) for j in range(len(image))]
        ranks.append(sum(s >= scores[target[t]] for s in scores))
    return np.array(ranks)


def loop_recall(text, image, target, ks=(1, 5, 10)):
    r = loop_ranks(text, image, target)
    out = {f"R@{k}": np.mean(r <= k) for k in ks}
    out.update(MRR=np.mean(1 / r), mean_rank=np.mean(r))
    return out


def test_perfect_retrieval():
    emb = np.eye(12, dtype=np.float32) * 3.0  # scale must not matter
    got = clip_recall(emb, emb)
    assert got == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "MRR": 1.0, "mean_rank": 1.0}


def test_reversed_retrieval():
    # One-hot images; text i scores image j by n - |j - (n-1-i)|: it prefers image n-1-i, and
    # its own image comes last among the images as far away on either side (exact ties).
    n = 10
    images = np.eye(n)
    m = n - 1 - np.arange(n)[:, None]
    texts = n - np.abs(np.arange(n)[None, :] - m).astype(np.float64)
    ranks = retrieval_ranks(texts, images)
    np.testing.assert_array_equal(ranks, loop_ranks(texts, images, np.arange(n)))
    np.testing.assert_array_equal(ranks, [10, 9, 8, 7, 3, 3, 7, 8, 9, 10])
    assert clip_recall(texts, images) == pytest.approx(loop_recall(texts, images, np.arange(n)))


def test_worst_case_every_correct_image_last():
    n = 6
    texts = np.ones((n, n)) - 2 * np.eye(n)  # own image -1, every other +1
    got = clip_recall(texts, np.eye(n))
    assert got == pytest.approx({"R@1": 0.0, "R@5": 0.0, "R@10": 1.0, "MRR": 1 / n, "mean_rank": n})


def test_ties_rank_pessimistically():
    images = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = np.array([0, 2, 3, 3])
    # texts 0 and 1 tie with three images -> rank 3; text 2 is alone with image 3 -> rank 1;
    # text 3 scores images 0..3 equally -> rank 4.
    np.testing.assert_array_equal(retrieval_ranks(texts, images, target), [3, 3, 1, 4])
    np.testing.assert_array_equal(retrieval_ranks(texts, images, target), loop_ranks(texts, images, target))


def test_single_image():
    got = clip_recall(np.array([[0.3, -1.0]]), np.array([[5.0, 1.0]]))
    assert got == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "MRR": 1.0, "mean_rank": 1.0}


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_several_captions_per_image_matches_loop(chunk):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(23, 16))
    target = np.repeat(np.arange(23), 5)
    texts = images[target] + rng.normal(scale=1.5, size=(len(target), 16))
    texts[3] = images[target[3]]  # an exact hit
    got = clip_recall(texts, images, ks=(1, 5, 10, 50), text_to_image=target, chunk_size=chunk)
    want = loop_recall(texts, images, target, ks=(1, 5, 10, 50))
    assert got.keys() == want.keys()
    assert got == pytest.approx(want)
    assert 0 < got["R@1"] < got["R@5"] < got["R@10"] < 1 and got["R@50"] == 1.0


def test_quantised_embeddings_with_many_ties_match_loop():
    rng = np.random.default_rng(1)
    images = rng.integers(-1, 2, size=(40, 3)).astype(np.float32)  # few distinct directions
    images[np.all(images == 0, axis=1)] = 1
    target = rng.integers(0, 40, size=90)
    texts = images[target].copy()
    got = retrieval_ranks(texts, images, target, chunk_size=16)
    np.testing.assert_array_equal(got, loop_ranks(texts, images, target))
    assert got.max() > 1  # the ties really pushed ranks down


@pytest.mark.parametrize("bad, match", [
    (dict(text_emb=np.ones((3, 4)), image_emb=np.ones((2, 4))), "text_to_image"),
    (dict(text_emb=np.ones((2, 4)), image_emb=np.ones((2, 5))), "dim"),
    (dict(text_emb=np.zeros((2, 4)), image_emb=np.ones((2, 4))), "all-zero"),
    (dict(text_emb=np.full((2, 4), np.nan), image_emb=np.ones((2, 4))), "non-finite"),
    (dict(text_emb=np.ones((2, 4)), image_emb=np.ones((2, 4)), text_to_image=[0, 2]), "outside"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        clip_recall(**bad)


def test_several_embeddings_per_image_rank_by_their_best_score():
    """BLIP2's ITC: an image holds Q query embeddings and scores a text by the best of them."""
    rng = np.random.default_rng(3)
    text, images = rng.normal(size=(9, 8)), rng.normal(size=(6, 4, 8))
    target = rng.integers(0, 6, size=9)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    scores = np.einsum("td,iqd->tiq", unit(text), unit(images)).max(-1)
    expected = np.array([(scores[t] >= scores[t, target[t]]).sum() for t in range(9)])
    for chunk in (1, 4, 1024):  # the chunk shrinks by Q inside: every size must agree
        assert retrieval_ranks(text, images, target, chunk_size=chunk).tolist() == expected.tolist()
    with pytest.raises(ValueError, match=r"\(n, dim\) or \(n, Q, dim\)"):
        retrieval_ranks(text, images[None], target)
    with pytest.raises(ValueError, match=r"must be \(n, dim\)"):
        retrieval_ranks(text[None], images, target)
