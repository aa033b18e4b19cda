"""OpenCLIP: open_clip -> convert CLI -> vlrm_jax, embeddings equal within 1e-4 (fp32)."""
import numpy as np
import pytest
import torch

from tests.clip import tiny

TOL = 1e-4


@pytest.fixture(scope="module")
def loaded(tiny_clip):
    from vlrm_jax.clip_api import ClipModel

    model, _, _, dst, _ = tiny_clip
    return model, ClipModel.load(str(dst))


def _torch_text(model, ids):
    with torch.no_grad():
        return model.encode_text(torch.tensor(ids, dtype=torch.long)).numpy()


def test_image_embeddings_match_open_clip(loaded):
    model, clip = loaded
    pixels = tiny.random_pixels(3, seed=1)
    with torch.no_grad():
        ref = model.encode_image(torch.tensor(pixels).permute(0, 3, 1, 2)).numpy()
    ours = clip.encode_image(pixels)
    assert ours.shape == (3, 12) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_text_embeddings_match_open_clip_with_eot_anywhere(loaded):
    model, clip = loaded
    ids = clip.tokenize(tiny.TEXTS)
    eot = ids.argmax(-1)
    assert len(set(eot.tolist())) == len(tiny.TEXTS) and eot.max() == ids.shape[1] - 1  # one cut at the limit
    np.testing.assert_allclose(clip.encode_text(ids), _torch_text(model, ids), atol=TOL, rtol=0)


def test_text_cut_after_eot_gives_the_same_embeddings(loaded):
    """Causal attention: the padding after EOT never reaches it, so shorter inputs are allowed."""
    model, clip = loaded
    ids = clip.tokenize(tiny.TEXTS[:3])
    cut = ids[:, : ids.argmax(-1).max() + 1]
    assert cut.shape[1] < ids.shape[1]
    np.testing.assert_allclose(clip.encode_text(cut), _torch_text(model, ids), atol=TOL, rtol=0)


def test_logits_match_open_clip(loaded):
    from flax import nnx

    model, clip = loaded
    pixels, ids = tiny.random_pixels(2, seed=4), clip.tokenize(tiny.TEXTS)
    with torch.no_grad():
        ref, _ = model.get_logits(torch.tensor(pixels).permute(0, 3, 1, 2), torch.tensor(ids, dtype=torch.long))
    ours = nnx.jit(lambda m, p, i: m.logits(p, i))(clip.module, pixels, ids)
    assert clip.logit_scale == pytest.approx(float(model.logit_scale.detach()))
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=TOL, rtol=0)


def test_weights_are_not_constant(tiny_clip):
    """Guard for the parity premise: open_clip's constant-initialised parameters really are random."""
    sd = tiny_clip[0].state_dict()
    for key in ["visual.ln_pre.weight", "visual.ln_post.bias", "ln_final.weight", "visual.class_embedding",
                "transformer.resblocks.1.attn.in_proj_bias", "visual.transformer.resblocks.2.ln_2.bias"]:
        assert sd[key].std() > 0.05, key
    assert float(sd["logit_scale"]) != pytest.approx(np.log(1 / 0.07))  # open_clip's initial value


@pytest.mark.parametrize("name,heads,mlp,text_heads", [("ViT-g-14", 16, 6144, 16), ("ViT-bigG-14", 16, 8192, 20)])
def test_real_model_configs_read_as_open_clip_builds_them(name, heads, mlp, text_heads):
    import open_clip

    from vlrm_jax.models.clip import ClipConfig

    cfg = ClipConfig.from_open_clip(open_clip.get_model_config(name))
    assert (cfg.vision.heads, cfg.vision.mlp_width, cfg.text.heads) == (heads, mlp, text_heads)
    assert cfg.vision.grid == (16, 16) and cfg.text.context_length == 77 and cfg.vision.act == "gelu"
    assert ClipConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("where,option", [("vision_cfg", {"ls_init_value": 1e-4}), ("text_cfg", {"embed_cls": True}),
                                          ("vision_cfg", {"attentional_pool": True}), ("text_cfg", {"bogus": 1})])
def test_options_the_port_lacks_are_refused_by_name(where, option):
    from vlrm_jax.models.clip import ClipConfig

    cfg = {**tiny.CONFIG, where: {**tiny.CONFIG[where], **option}}
    with pytest.raises(ValueError, match=next(iter(option))):
        ClipConfig.from_open_clip(cfg)
