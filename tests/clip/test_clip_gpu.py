"""OpenCLIP at the real ViT-g-14 and ViT-bigG-14 shapes with random bf16 weights: the converted Flax
model against open_clip on the same GPU. Prints max / mean |difference| of the embeddings.

The comparison itself also runs on the CPU at the tiny shapes (in bf16 as well), so the GPU test's
code is exercised on every `make test`, not only on a GPU machine.
"""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the card with JAX

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.clip import tiny  # noqa: E402
from vlrm_jax.testing.hf_weights import source_from_state_dict  # noqa: E402

SOT, EOT = 49406, 49407


def _has_gpu() -> bool:
    try:
        import jax
        import torch

        return torch.cuda.is_available() and any(d.platform == "gpu" for d in jax.devices())
    except Exception:  # noqa: BLE001 - any import/back-end failure means no usable GPU
        return False


def _random_open_clip_bf16(model_cfg: dict, device: str, seed: int):
    import open_clip
    import torch

    torch.manual_seed(seed)
    with torch.device(device):
        model = open_clip.model.CLIP(**model_cfg)
    model.to(torch.bfloat16)  # open_clip's precision="pure_bf16"
    with torch.no_grad():  # open_clip initialises these to constants
        for name, p in model.named_parameters():
            if ".ln_" in f".{name}" or name.endswith("in_proj_bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _token_ids(batch: int, context: int, rng) -> np.ndarray:
    """SOT, random words, EOT at a different position per row (the last row at the limit), zeros."""
    ids = np.zeros((batch, context), np.int64)
    ends = np.linspace(1, context - 1, batch).astype(int)
    for row, end in enumerate(ends):
        ids[row, 0], ids[row, end] = SOT, EOT
        ids[row, 1:end] = rng.integers(1, SOT, end - 1)
    return ids


def compare_bf16(model_cfg: dict, device: str, batch: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Both towers of a random bf16 open_clip model and of its conversion, on `device`."""
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from convert import open_clip as conv
    from vlrm_jax.loading import override_precision
    from vlrm_jax.models import build
    from vlrm_jax.models.clip import ClipConfig, ClipModel

    reference = _random_open_clip_bf16(model_cfg, device, seed)
    cfg = override_precision(ClipConfig.from_open_clip(model_cfg), "bfloat16", "bfloat16", ("vision", "text"))
    params = dict(conv.convert_source(source_from_state_dict(reference.state_dict()), cfg, progress=False))
    model = build.from_params(lambda: ClipModel(cfg, rngs=nnx.Rngs(0)), params)

    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(batch, *cfg.vision.image_size, 3)).astype(np.float32)
    ids = _token_ids(batch, cfg.text.context_length, rng)
    with torch.no_grad():
        ref_image = reference.encode_image(torch.tensor(pixels, device=device).permute(0, 3, 1, 2).to(torch.bfloat16))
        ref_text = reference.encode_text(torch.tensor(ids, device=device))
    ours_image = nnx.jit(lambda m, p: m.encode_image(p))(model, jnp.asarray(pixels))
    ours_text = nnx.jit(lambda m, i: m.encode_text(i))(model, jnp.asarray(ids, jnp.int32))
    return {
        "image": _diff(ours_image, ref_image.float().cpu().numpy()),
        "text": _diff(ours_text, ref_text.float().cpu().numpy()),
    }


def _diff(ours, ref: np.ndarray) -> dict[str, float]:
    ours = np.asarray(ours, np.float32)
    cos = (ours * ref).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1))
    d = np.abs(ours - ref)
    return dict(max=float(d.max()), mean=float(d.mean()), ref_std=float(ref.std()), min_cos=float(cos.min()))


def _check(name: str, stats: dict[str, dict[str, float]]) -> None:
    for tower, s in stats.items():
        print(f"\n{name} bf16 {tower} embeddings: max |diff| {s['max']:.4f}, mean |diff| {s['mean']:.5f}, "
              f"ref std {s['ref_std']:.4f}, min cosine {s['min_cos']:.5f}")
        # bf16 through every layer: a few per cent of drift, never a structural error
        assert s["mean"] < 0.05 * s["ref_std"], (tower, s)
        assert s["min_cos"] > 0.99, (tower, s)


def test_bf16_comparison_runs_at_tiny_shapes_on_cpu():
    _check(tiny.NAME, compare_bf16(tiny.CONFIG, "cpu", batch=3))


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a GPU visible to both JAX and torch")
@pytest.mark.parametrize("name", ["ViT-g-14", "ViT-bigG-14"])
def test_full_size_bf16_embeddings_match_open_clip_on_gpu(name):
    import open_clip
    import torch

    _check(name, compare_bf16(open_clip.get_model_config(name), "cuda", batch=8))
    torch.cuda.empty_cache()
