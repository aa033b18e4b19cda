"""The model-based reward terms and the whole reward in one jitted function on 8 fake devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import stacks
from vlrm_jax import sharding
from vlrm_jax.rewards.reward import RewardConfig, RewardModels, vlrm_reward
from vlrm_jax.rewards.retokenize import Retokenizer
from vlrm_jax.rewards.similarity import retrieval_specificity


def phi_reference(img, txt):
    """The formula, written out in NumPy float64."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    s = img.astype(np.float64) @ txt.T.astype(np.float64)
    col = np.exp(s) / np.exp(s).sum(axis=0, keepdims=True)  # softmax over images (axis 0)
    row = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)  # softmax over texts (axis 1)
    d = np.array([col[i, i] * row[i, i] for i in range(len(s))])
    return (d - d.mean()) / d.std()


def test_rs_term_matches_numpy_and_is_the_same_on_eight_devices():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(16, 12)).astype(np.float32), rng.normal(size=(16, 12)).astype(np.float32)
    txt[:4] = img[:4] + 0.1 * txt[:4]  # a few captions that really fit their image
    ref = phi_reference(img, txt)
    single = np.asarray(jax.jit(retrieval_specificity)(img, txt))
    np.testing.assert_allclose(single, ref, atol=1e-5)
    assert single[:4].mean() > single[4:].mean()
    mesh = sharding.make_mesh((8,), ("data",))
    sharded = jax.jit(retrieval_specificity)(sharding.shard_batch(img, mesh), sharding.shard_batch(txt, mesh))
    np.testing.assert_allclose(np.asarray(sharded), single, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_world_models(tmp_path_factory):
    cap_tok, itm_tok = stacks.world_tokenizers(tmp_path_factory.mktemp("reward"))
    itm = stacks.tiny_itm(len(itm_tok), seed=1, max_positions=40, image_size=16, patch_size=8, width=24, layers=2)
    ref = stacks.tiny_opt(len(cap_tok), seed=2, max_positions=64)
    return cap_tok, itm_tok, itm, ref


def _captions(cap_tok, n=16, length=12, seed=0):
    texts = ["a red circle", "a small blue square at the left and a large red star on a white background",
             "a green star a green star", "an image of a red ring", "a cross in 1993"]
    ids = np.full((n, length), cap_tok.pad_token_id, np.int32)
    for i in range(n):
        tok = cap_tok(texts[i % len(texts)], add_special_tokens=False)["input_ids"][: length - (i % 2)]
        ids[i, : len(tok)] = tok
        if len(tok) < length and i % 2 == 0:
            ids[i, len(tok)] = cap_tok.eos_token_id
    return ids


def test_whole_reward_jitted_and_sharded_equals_single_device(tiny_world_models):
    cap_tok, itm_tok, itm, ref = tiny_world_models
    retok = Retokenizer(cap_tok, max_new_tokens=12, itm_tokenizer=itm_tok, itm_max_length=24, eos_token_id=cap_tok.eos_token_id)
    tokens = _captions(cap_tok)
    pixels = np.random.default_rng(1).normal(size=(16, 16, 16, 3)).astype(np.float32)
    bos = cap_tok.bos_token_id

    def run(itm_state, ref_state, tokens, pixels, mesh):
        m_itm, m_ref = nnx.merge(itm_def, itm_state), nnx.merge(ref_def, ref_state)
        models = RewardModels(itm=m_itm, ref_lm=m_ref)
        return vlrm_reward(models, RewardConfig.vlrm(), retok, tokens, m_itm.vision_model(pixels), bos_token_id=bos, mesh=mesh)

    itm_def, itm_state = nnx.split(itm)
    ref_def, ref_state = nnx.split(ref)
    one_mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    r1, stats1, parts1, _ = jax.jit(run, static_argnums=4)(itm_state, ref_state, tokens, pixels, one_mesh)

    mesh = sharding.make_mesh((8,), ("data",))
    r8, stats8, parts8, _ = jax.jit(run, static_argnums=4)(itm_state, ref_state, sharding.shard_batch(tokens, mesh),
                                                        sharding.shard_batch(pixels, mesh), mesh)
    np.testing.assert_allclose(np.asarray(r8), np.asarray(r1), atol=1e-5)
    for k in parts1:
        np.testing.assert_allclose(np.asarray(parts8[k]), np.asarray(parts1[k]), atol=1e-5, err_msg=k)

    # the pieces are what they claim: penalties visible, sim = ITM match logit on host-tokenized text
    parts = jax.tree.map(np.asarray, parts1)
    assert parts["bad"][3].sum() > 0 and parts["bad"][4].sum() > 0  # "an image of", a year
    assert parts["repeat"][2].sum() > 0  # repeated "star" (colour "green" exempt)
    ended = (tokens == cap_tok.eos_token_id).any(axis=1)
    assert ended.any() and not ended.all()
    np.testing.assert_array_equal(parts["noeos"], (~ended).astype(np.float32))
    enc = itm_tok([t.strip() for t in cap_tok.batch_decode(tokens, skip_special_tokens=True)], padding="max_length",
                  max_length=24, truncation=True, return_tensors="np")
    expected_sim = np.asarray(itm(pixels, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])))[:, 1]
    np.testing.assert_allclose(parts["sim"], expected_sim, atol=1e-5)
    r = np.asarray(r1)
    per_caption = parts["sim"] + parts["ref"] - parts["noeos"]
    expected = per_caption[:, None] - np.cumsum((parts["bad"] + parts["repeat"])[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(r, np.where(parts["mask"], expected, 0), atol=1e-5)
    assert np.all(parts["ref"] < 0)


def test_rs_reward_with_clip_sharded_equals_single_device(tiny_world_models):
    """VLRM-RS: sim + 0.3 Phi over the global batch, no ref term; 8 devices = 1 device, and Phi
    equals the formula on the CLIP embeddings of the host-tokenized captions."""
    import open_clip

    from vlrm_jax.models.clip import ClipConfig, ClipModel, ClipTextConfig, ClipVisionConfig

    cap_tok, itm_tok, itm, _ = tiny_world_models
    clip = ClipModel(ClipConfig(embed_dim=12, vision=ClipVisionConfig(image_size=16, patch_size=8, layers=2, width=20, head_width=10),
                                text=ClipTextConfig(context_length=20, width=20, heads=5, layers=2)), rngs=nnx.Rngs(3))
    clip_tok = open_clip.get_tokenizer("ViT-B-32", context_length=20)
    retok = Retokenizer(cap_tok, max_new_tokens=12, itm_tokenizer=itm_tok, itm_max_length=24, clip_tokenizer=clip_tok,
                        clip_context_length=20, eos_token_id=cap_tok.eos_token_id)
    tokens = _captions(cap_tok)
    rng = np.random.default_rng(2)
    pixels = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    clip_pixels = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    defs = {name: nnx.split(m) for name, m in [("itm", itm), ("clip", clip)]}

    def run(itm_state, clip_state, tokens, pixels, clip_pixels, mesh):
        m_itm, m_clip = nnx.merge(defs["itm"][0], itm_state), nnx.merge(defs["clip"][0], clip_state)
        return vlrm_reward(RewardModels(itm=m_itm, clip=m_clip), RewardConfig.vlrm_rs(), retok, tokens,
                           m_itm.vision_model(pixels), clip_pixels, bos_token_id=cap_tok.bos_token_id, mesh=mesh)

    one_mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    step = jax.jit(run, static_argnums=5)
    r1, _, p1, _ = step(defs["itm"][1], defs["clip"][1], tokens, pixels, clip_pixels, one_mesh)
    mesh = sharding.make_mesh((8,), ("data",))
    put = lambda x: sharding.shard_batch(x, mesh)  # noqa: E731
    r8, _, p8, _ = step(defs["itm"][1], defs["clip"][1], put(tokens), put(pixels), put(clip_pixels), mesh)
    np.testing.assert_allclose(np.asarray(r8), np.asarray(r1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(p8["phi"]), np.asarray(p1["phi"]), atol=1e-5)

    texts = [t.strip() for t in cap_tok.batch_decode(tokens, skip_special_tokens=True)]
    img = np.asarray(clip.encode_image(jnp.asarray(clip_pixels)))
    txt = np.asarray(clip.encode_text(jnp.asarray(np.asarray(clip_tok(texts)), jnp.int32)))
    np.testing.assert_allclose(np.asarray(p1["phi"]), phi_reference(img, txt), atol=1e-4)
    assert np.all(np.asarray(p1["ref"]) == 0)  # VLRM-RS drops the ref term
    parts = jax.tree.map(np.asarray, p1)
    per_caption = parts["sim"] + 0.3 * parts["phi"] - parts["noeos"]
    expected = per_caption[:, None] - np.cumsum((parts["bad"] + parts["repeat"])[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(np.asarray(r1), np.where(parts["mask"], expected, 0), atol=1e-5)


def test_empty_and_all_padding_captions_get_a_finite_reward(tiny_world_models):
    """A caption that is EOS at once (the empty text) or all padding without EOS still gets a
    defined reward: ITM on the empty text, ref of what was sampled, noeos where no EOS came."""
    cap_tok, itm_tok, itm, ref = tiny_world_models
    retok = Retokenizer(cap_tok, max_new_tokens=6, itm_tokenizer=itm_tok, itm_max_length=24, eos_token_id=cap_tok.eos_token_id)
    tokens = np.full((4, 6), cap_tok.pad_token_id, np.int32)
    tokens[0, 0] = tokens[2, 0] = cap_tok.eos_token_id  # rows 0, 2: empty; rows 1, 3: padding only
    pixels = np.random.default_rng(3).normal(size=(4, 16, 16, 3)).astype(np.float32)
    out = vlrm_reward(RewardModels(itm=itm, ref_lm=ref), RewardConfig.vlrm(), retok, jnp.asarray(tokens),
                      itm.vision_model(jnp.asarray(pixels)), bos_token_id=cap_tok.bos_token_id)
    returns, parts = np.asarray(out.returns), jax.tree.map(np.asarray, out.parts)
    assert np.isfinite(returns).all() and all(np.isfinite(v).all() for v in parts.values())
    np.testing.assert_array_equal(parts["noeos"], [0, 1, 0, 1])
    assert parts["mask"][0].sum() == 1 and parts["mask"][1].sum() == 6
