"""CLIPScore and RefCLIPScore against a plain per-caption computation of Hessel et al.'s formulas."""
import numpy as np
import pytest

from vlrm_jax.eval.clip_score import clip_score_summary, clip_scores, ref_clip_scores, with_prefix


def plain(caption, image, refs):
    cos = lambda a, b: float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
    clip_s = 2.5 * max(cos(caption, image), 0.0)
    if not refs:
        return clip_s, None
    best = max(max(cos(caption, r) for r in refs), 0.0)
    return clip_s, (0.0 if clip_s + best == 0 else 2 * clip_s * best / (clip_s + best))


def test_scores_equal_the_formulas_caption_by_caption():
    rng = np.random.default_rng(0)
    n, d = 7, 16
    captions, images = rng.normal(size=(n, d)), rng.normal(size=(n, d)) * 3.0  # scale must not matter
    owner = np.array([0, 0, 1, 2, 2, 2, 3, 5, 5, 6])  # image 4 has no references
    refs = rng.normal(size=(len(owner), d))
    refs[2] = -captions[1]  # image 1's only reference points away: its text side is clipped to 0
    expected = [plain(captions[i], images[i], [refs[j] for j in np.flatnonzero(owner == i)]) for i in range(n)]
    np.testing.assert_allclose(clip_scores(captions, images), [e[0] for e in expected], rtol=1e-12)
    got = ref_clip_scores(captions, images, refs, owner)
    assert np.isnan(got[4]) and got[1] == 0.0
    np.testing.assert_allclose(np.delete(got, 4), [e[1] for i, e in enumerate(expected) if i != 4], rtol=1e-12)
    summary = clip_score_summary(captions, images, refs, owner)
    assert summary["clipscore"] == pytest.approx(np.mean([e[0] for e in expected]), rel=1e-12)
    assert summary["refclipscore"] == pytest.approx(np.mean([e[1] for e in expected if e[1] is not None]), rel=1e-12)
    assert set(clip_score_summary(captions, images)) == {"clipscore"}


def test_negative_similarity_scores_zero_and_the_prefix():
    v = np.eye(3)
    assert clip_scores(-v, v).tolist() == [0.0, 0.0, 0.0]
    assert clip_scores(v, v).tolist() == [2.5, 2.5, 2.5]
    assert with_prefix(["a red circle"]) == ["A photo depicts a red circle"]
    assert with_prefix(["a red circle"], "") == ["a red circle"]
    with pytest.raises(ValueError, match="pair row by row"):
        clip_scores(v, v[:2])
