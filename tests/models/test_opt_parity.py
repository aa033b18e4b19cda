"""OPT reference LM: transformers -> convert CLI -> vlrm_jax; full forward and KV-cached decoding."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import factories as F
from tests.helpers import convert_in_process

TOL = 1e-4
VARIANTS = {
    "opt-2.7b-like": {},
    # OPT-350m layout: post-LN blocks, no final norm, project_in/out around a narrower embedding
    "opt-350m-like": dict(do_layer_norm_before=False, word_embed_proj_dim=20),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    hf = F.save_tiny_opt(str(root / "hf"), seed=5, **VARIANTS[request.param])
    convert_in_process("convert.opt", "--src", str(root / "hf"), "--dst", str(root / "jax"), "--quiet")
    from vlrm_jax import ReferenceLM

    return hf, ReferenceLM.load(str(root / "jax"))


def test_logits_match_transformers_with_left_padding(converted):
    hf, lm = converted
    ids, mask = F.left_padded_ids(5, 11, seed=7)
    ours = lm.logits(ids, mask)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=TOL, rtol=0)


def test_cached_step_by_step_decoding_equals_full_forward(converted):
    from vlrm_jax.models.opt import KVCache, position_ids

    _, lm = converted
    model = lm.module
    ids, mask = F.left_padded_ids(3, 10, seed=8)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    full = model(ids, mask)
    prefill = 4
    cache = KVCache.zeros(model.cfg, 3, ids.shape[1])
    pos = position_ids(mask)

    def mask_for(start, length):
        # query t (absolute start + t) sees valid keys at positions <= itself
        key_ok = mask.astype(bool)[:, None, :]
        causal = jnp.arange(ids.shape[1])[None, :] <= (start + jnp.arange(length))[:, None]
        return (key_ok & causal[None])[:, None]

    hidden, cache = model.decode(model.embed(ids[:, :prefill]), pos[:, :prefill], mask_for(0, prefill), cache, 0)
    steps = [model.lm_head(hidden)]
    for t in range(prefill, ids.shape[1]):
        hidden, cache = model.decode(model.embed(ids[:, t:t + 1]), pos[:, t:t + 1], mask_for(t, 1), cache, t)
        steps.append(model.lm_head(hidden))
    cached = jnp.concatenate(steps, axis=1)
    valid = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(np.asarray(cached)[valid], np.asarray(full)[valid], atol=1e-5, rtol=0)
