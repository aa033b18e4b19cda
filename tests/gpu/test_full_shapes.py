"""Full BLIP2-OPT-2.7B and BLIP2-ITM (ViT-g) shapes, random bf16 weights, on a GPU: the converted
Flax models against transformers on the same card. Prints max / mean |difference| of the logits."""
import ml_dtypes
import numpy as np
import pytest

from convert import released_shapes

pytestmark = pytest.mark.gpu


def _source_from_state_dict(state_dict):
    """A TensorSource over an in-memory torch state dict (skips the 7.5 GB round trip to disk)."""
    import torch

    from convert.sources import TensorSource

    def to_numpy(t):
        t = t.detach().cpu()
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()

    return TensorSource({k: (lambda t=v: to_numpy(t)) for k, v in state_dict.items()},
                        {k: tuple(v.shape) for k, v in state_dict.items()}, "memory")


def _hf_full_blip2():
    import torch
    from transformers import Blip2ForConditionalGeneration

    cfg = released_shapes.blip2_opt_2_7b()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Blip2ForConditionalGeneration(cfg)
    model.to(torch.bfloat16)
    model.qformer.float()  # transformers keeps these in fp32 (_keep_in_fp32_modules)
    model.query_tokens.data = model.query_tokens.data.float()
    with torch.no_grad():  # transformers initialises LayerNorms and query tokens to constants
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name == "query_tokens":
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_blip2_opt_27b_bf16_logits_match_transformers_on_gpu():
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from convert import blip2 as conv
    from convert.rules import adapt_legacy_qkv_bias
    from convert.table import expand, torch_to_flax
    from vlrm_jax.loading import override_precision
    from vlrm_jax.models import build
    from vlrm_jax.models.blip2 import Blip2Captioner, Blip2Config
    from vlrm_jax.models.opt import OPTConfig
    from vlrm_jax.models.qformer import QFormerConfig
    from vlrm_jax.models.vit import VisionConfig

    hf = _hf_full_blip2()
    cfg = override_precision(Blip2Config(vision=VisionConfig(), qformer=QFormerConfig(), text=OPTConfig()),
                             "bfloat16", "bfloat16", ("vision", "text"))
    ctor = lambda: Blip2Captioner(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    source = adapt_legacy_qkv_bias(_source_from_state_dict(hf.state_dict()), "vision_model.", 39)
    params = torch_to_flax(source, expand(conv.table(cfg), conv.layer_sets(cfg)),
                           build.flat_params(build.abstract(ctor)), ignore=conv.TIED_KEYS, progress=False)
    model = build.from_params(ctor, params)

    rng = np.random.default_rng(0)
    b, t = 4, 16
    pixels = rng.normal(size=(b, 224, 224, 3)).astype(np.float32)
    ids = rng.integers(4, 50000, size=(b, t))
    ids[:, 0] = 2
    full_ids = np.concatenate([np.full((b, 32), 50265), ids], 1)
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(pixels, device="cuda").permute(0, 3, 1, 2).to(torch.bfloat16),
                 input_ids=torch.tensor(full_ids, device="cuda")).logits[:, 32:].float().cpu().numpy()
    ours = np.asarray(nnx.jit(lambda m, p, i: m(p, i))(model, jnp.asarray(pixels), jnp.asarray(ids)))
    diff = np.abs(ours - ref)
    print(f"\nBLIP2-OPT-2.7B bf16 logits: max |diff| {diff.max():.4f}, mean |diff| {diff.mean():.5f}, "
          f"logit std {ref.std():.3f}, argmax agreement {(ours.argmax(-1) == ref.argmax(-1)).mean():.3f}")
    # bf16 through 39 + 32 layers: a few 1e-2 of drift, never a structural error
    assert diff.mean() < 0.05 * ref.std()
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_blip2_itm_vit_g_bf16_logits_match_transformers_on_gpu():
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import Blip2ForImageTextRetrieval

    from convert import blip2_itm as conv
    from convert.rules import adapt_legacy_qkv_bias
    from convert.table import expand, torch_to_flax
    from vlrm_jax.loading import override_precision
    from vlrm_jax.models import build
    from vlrm_jax.models.itm import Blip2Itm, ItmConfig
    from vlrm_jax.models.qformer import QFormerConfig
    from vlrm_jax.models.vit import VisionConfig

    torch.manual_seed(1)
    with torch.device("cuda"):
        hf = Blip2ForImageTextRetrieval(released_shapes.blip2_itm_vit_g())
    hf.vision_model.to(torch.bfloat16)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name.lower() or name == "query_tokens":
                p.add_(0.1 * torch.randn_like(p))
    hf.eval()
    cfg = override_precision(ItmConfig(vision=VisionConfig(), qformer=QFormerConfig(use_qformer_text_input=True)),
                             "bfloat16", "bfloat16", ("vision",))
    ctor = lambda: Blip2Itm(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    source = adapt_legacy_qkv_bias(_source_from_state_dict(hf.state_dict()), "vision_model.", 39)
    params = torch_to_flax(source, expand(conv.table(cfg), conv.layer_sets(cfg)), build.flat_params(build.abstract(ctor)),
                           progress=False)
    model = build.from_params(ctor, params)
    rng = np.random.default_rng(1)
    b, t = 8, 24
    pixels = rng.normal(size=(b, 224, 224, 3)).astype(np.float32)
    ids = rng.integers(1000, 30000, size=(b, t))
    mask = np.ones((b, t), np.int64)
    mask[::2, t // 2:] = 0
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(pixels, device="cuda").permute(0, 3, 1, 2).to(torch.bfloat16),
                 input_ids=torch.tensor(ids, device="cuda"), attention_mask=torch.tensor(mask, device="cuda"),
                 use_image_text_matching_head=True).logits_per_image.float().cpu().numpy()
    ours = np.asarray(nnx.jit(lambda m, p, i, a: m(p, i, a))(model, jnp.asarray(pixels), jnp.asarray(ids), jnp.asarray(mask)))
    diff = np.abs(ours - ref)
    print(f"\nBLIP2-ITM ViT-g bf16 ITM logits: max |diff| {diff.max():.4f}, mean |diff| {diff.mean():.5f}, "
          f"logit std {ref.std():.3f}")
    assert diff.max() < 0.1 * max(ref.std(), 1e-3) + 0.05
