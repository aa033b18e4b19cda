"""Full BLIP2-OPT-2.7B and BLIP2-ITM (ViT-g) shapes, random bf16 weights, on a GPU: the converted
Flax models against transformers on the same card. Prints max / mean |difference| of the logits.

The comparisons also run on the CPU at the tiny test shapes (in bf16 as well), so the GPU tests'
code is exercised on every `make test`, not only on a GPU machine.
"""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the card with JAX

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from convert import released_shapes  # noqa: E402
from tests import factories as F  # noqa: E402
from vlrm_jax.testing.hf_weights import source_from_state_dict  # noqa: E402


def _perturb_constants(model):
    """transformers initialises LayerNorms and the query tokens to constants, which would hide a
    dropped bias or a query-order bug."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name == "query_tokens":
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _convert(conv, hf, cfg, ctor, ignore=()):
    from convert.rules import adapt_legacy_qkv_bias
    from convert.table import expand, torch_to_flax
    from vlrm_jax.models import build

    source = adapt_legacy_qkv_bias(source_from_state_dict(hf.state_dict()), "vision_model.",
                                   cfg.vision.num_hidden_layers)
    params = torch_to_flax(source, expand(conv.table(cfg), conv.layer_sets(cfg)),
                           build.flat_params(build.abstract(ctor)), ignore=ignore, progress=False)
    return build.from_params(ctor, params)


def _pixels(torch_device, pixels):
    import torch

    return torch.tensor(pixels, device=torch_device).permute(0, 3, 1, 2).to(torch.bfloat16)


def compare_blip2_bf16(hf_cfg, device: str, batch: int, length: int, seed: int = 0) -> dict:
    """A random bf16 Blip2ForConditionalGeneration (Q-Former fp32, as transformers keeps it) and its
    conversion: text logits on `device`."""
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import Blip2ForConditionalGeneration

    from convert import blip2 as conv
    from vlrm_jax.loading import override_precision
    from vlrm_jax.models.blip2 import Blip2Captioner

    torch.manual_seed(seed)
    with torch.device(device):
        hf = Blip2ForConditionalGeneration(hf_cfg)
    hf.to(torch.bfloat16)
    hf.qformer.float()  # _keep_in_fp32_modules
    hf.query_tokens.data = hf.query_tokens.data.float()
    hf = _perturb_constants(hf)
    cfg = override_precision(conv.config_from_hf_config(hf_cfg), "bfloat16", "bfloat16", ("vision", "text"))
    model = _convert(conv, hf, cfg, lambda: Blip2Captioner(cfg, rngs=nnx.Rngs(0)), ignore=conv.TIED_KEYS)

    rng = np.random.default_rng(seed)
    size, queries, text = cfg.vision.image_size, cfg.num_query_tokens, cfg.text
    pixels = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    ids = rng.integers(4, min(text.vocab_size, hf_cfg.image_token_index) - 1, size=(batch, length))
    ids[:, 0] = text.bos_token_id
    full_ids = np.concatenate([np.full((batch, queries), hf_cfg.image_token_index), ids], 1)
    with torch.no_grad():
        ref = hf(pixel_values=_pixels(device, pixels),
                 input_ids=torch.tensor(full_ids, device=device)).logits[:, queries:].float().cpu().numpy()
    ours = np.asarray(nnx.jit(lambda m, p, i: m(p, i))(model, jnp.asarray(pixels), jnp.asarray(ids)), np.float32)
    d = np.abs(ours - ref)
    return dict(max=float(d.max()), mean=float(d.mean()), ref_std=float(ref.std()),
                argmax=float((ours.argmax(-1) == ref.argmax(-1)).mean()))


def compare_itm_bf16(hf_cfg, device: str, batch: int, length: int, seed: int = 1) -> dict:
    """A random Blip2ForImageTextRetrieval with a bf16 ViT (as the released model runs) and its
    conversion: ITM logits on `device`, half the rows right-padded."""
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import Blip2ForImageTextRetrieval

    from convert import blip2_itm as conv
    from vlrm_jax.loading import override_precision
    from vlrm_jax.models.itm import Blip2Itm

    torch.manual_seed(seed)
    with torch.device(device):
        hf = Blip2ForImageTextRetrieval(hf_cfg)
    hf.vision_model.to(torch.bfloat16)
    hf = _perturb_constants(hf)
    cfg = override_precision(conv.config_from_hf_config(hf_cfg), "bfloat16", "bfloat16", ("vision",))
    model = _convert(conv, hf, cfg, lambda: Blip2Itm(cfg, rngs=nnx.Rngs(0)))

    rng = np.random.default_rng(seed)
    size = cfg.vision.image_size
    pixels = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    ids = rng.integers(4, cfg.qformer.vocab_size, size=(batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[::2, length // 2:] = 0
    with torch.no_grad():
        ref = hf(pixel_values=_pixels(device, pixels), input_ids=torch.tensor(ids, device=device),
                 attention_mask=torch.tensor(mask, device=device),
                 use_image_text_matching_head=True).logits_per_image.float().cpu().numpy()
    ours = nnx.jit(lambda m, p, i, a: m(p, i, a))(model, jnp.asarray(pixels), jnp.asarray(ids), jnp.asarray(mask))
    d = np.abs(np.asarray(ours, np.float32) - ref)
    return dict(max=float(d.max()), mean=float(d.mean()), ref_std=float(ref.std()))


def _check_blip2(name, s):
    print(f"\n{name} bf16 logits: max |diff| {s['max']:.4f}, mean |diff| {s['mean']:.5f}, "
          f"logit std {s['ref_std']:.3f}, argmax agreement {s['argmax']:.3f}")
    # bf16 through every layer: a few 1e-2 of drift, never a structural error
    assert s["mean"] < 0.05 * s["ref_std"], s
    assert s["argmax"] > 0.9, s


def _check_itm(name, s):
    print(f"\n{name} bf16 ITM logits: max |diff| {s['max']:.4f}, mean |diff| {s['mean']:.5f}, "
          f"logit std {s['ref_std']:.3f}")
    assert s["max"] < 0.1 * max(s["ref_std"], 1e-3) + 0.05, s


def test_bf16_comparisons_run_at_tiny_shapes_on_cpu():
    _check_blip2("tiny BLIP2", compare_blip2_bf16(F.tiny_blip2_config(), "cpu", batch=3, length=9))
    _check_itm("tiny BLIP2-ITM", compare_itm_bf16(F.tiny_itm_config(), "cpu", batch=4, length=10))


@pytest.mark.gpu  # skipped where no GPU is visible (tests/conftest.py)
def test_blip2_opt_27b_bf16_logits_match_transformers_on_gpu():
    import torch

    _check_blip2("BLIP2-OPT-2.7B", compare_blip2_bf16(released_shapes.blip2_opt_2_7b(), "cuda", batch=4, length=16))
    torch.cuda.empty_cache()


@pytest.mark.gpu  # skipped where no GPU is visible (tests/conftest.py)
def test_blip2_itm_vit_g_bf16_logits_match_transformers_on_gpu():
    import torch

    _check_itm("BLIP2-ITM ViT-g", compare_itm_bf16(released_shapes.blip2_itm_vit_g(), "cuda", batch=8, length=24))
    torch.cuda.empty_cache()
