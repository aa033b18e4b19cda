"""The second retriever: BLIP2-ITM's contrastive head embedding images and texts apart gives the
similarities of the joint `ItmScorer.itc_similarity` (itself within 1e-4 of transformers), and
recall ranks by them; a folder of another kind is refused by name."""
import numpy as np
import pytest

from tests import factories as F

# `models` (tiny converted captioner, CLIP and ITM) comes from tests/eval/conftest.py.


def test_itc_features_apart_equal_the_joint_similarity(models):
    from vlrm_jax.eval.recall import retrieval_ranks, similarity
    from vlrm_jax.eval.retrievers import ItcRetriever, load_retriever
    from vlrm_jax.rewards.retokenize import itm_token_ids

    retriever = load_retriever(str(models / "itm"))
    assert isinstance(retriever, ItcRetriever) and retriever.name == "itm"
    pixels = F.random_pixels(5, size=retriever.itm.config.vision.image_size, seed=7)
    texts = ["caption 1 of image 1003", "a b c", "image of 77", "w", "caption"]
    ids, mask = itm_token_ids(retriever.itm.tokenizer, texts, retriever.max_length)
    joint = retriever.itm.itc_similarity(pixels, ids, mask)  # (images, texts)
    assert np.isfinite(joint).all()

    images = retriever.itm.itc_image_features(pixels)
    text_features = retriever.text_features(texts)
    assert images.shape[:2] == (5, retriever.itm.config.num_query_tokens)
    np.testing.assert_allclose(similarity(text_features, images), joint.T, atol=1e-5)
    expected = [(joint[:, t] >= joint[t, t]).sum() for t in range(5)]
    assert retrieval_ranks(text_features, images).tolist() == expected


def test_a_clip_folder_is_a_retriever_and_a_captioner_is_not(models):
    from vlrm_jax.eval.retrievers import ClipRetriever, load_retriever

    clip = load_retriever(str(models / "clip"))
    assert isinstance(clip, ClipRetriever) and clip.text_features(["a", "b"]).shape[0] == 2
    with pytest.raises(ValueError, match="blip2_opt.*OpenCLIP folder.*BLIP2-ITM"):
        load_retriever(str(models / "cap"))
