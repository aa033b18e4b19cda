"""Memory and time per chip of one paper-sized step (4096 captions of 60 tokens, BLIP2-OPT-2.7B +
BLIP2-ITM ViT-g) on pod slices and GPU nodes: a projection from the analytic FLOPs of
bench/flops.py (`caption_flops`) and the parameter counts of the released shapes, for
docs/scaling.md.

    python bench/scaling.py [--mfu 0.4] [--captions 4096] [--variant vlrm|vlrm_rs]

Nothing here is measured on those chips: time = FLOPs / (chips x bf16 peak x MFU), the MFU an
assumption you pass; the rollout's decode is also bounded by reading the weights and the KV cache
once per token (HBM bandwidth), which the table shows beside it.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python bench/scaling.py` imports bench.* from the repository root

GIB = 2 ** 30
NEW_TOKENS = 60

# Vendor figures per chip: dense bf16 peak FLOP/s, HBM bytes, HBM bandwidth bytes/s.
CHIPS = {
    "TPU v4": (275e12, 32 * GIB, 1.2e12),
    "TPU v5e": (197e12, 16 * GIB, 0.82e12),
    "TPU v5p": (459e12, 95 * GIB, 2.76e12),
    "H100 SXM": (989e12, 80e9, 3.35e12),
    "H200": (989e12, 141e9, 4.8e12),
}
# (slice, chip, chips, mesh (data, fsdp, tensor)): the mesh keeps frozen weights whole or split
# over tensor where HBM allows, because fsdp gathers every weight again at each decoded token.
SLICES = [
    ("v4-64", "TPU v4", 32, (32, 1, 1)),
    ("v5e-64", "TPU v5e", 64, (16, 1, 4)),
    ("v5e-256", "TPU v5e", 256, (64, 1, 4)),
    ("v5p-64", "TPU v5p", 32, (32, 1, 1)),
    ("8 x H100", "H100 SXM", 8, (8, 1, 1)),
    ("8 x H200", "H200", 8, (8, 1, 1)),
]


def parameter_counts() -> dict[str, int]:
    """Parameters of each part at the released shapes: transformers' models on the meta device,
    the project's value network as an abstract (shape-only) module."""
    import numpy as np
    import torch
    from flax import nnx
    from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

    from convert import blip2 as blip2_conv
    from convert import released_shapes
    from vlrm_jax.models import build
    from vlrm_jax.models.value import ValueConfig, ValueNetwork

    cap_hf = released_shapes.blip2_opt_2_7b()
    with torch.device("meta"):
        cap = Blip2ForConditionalGeneration(cap_hf)
        itm = Blip2ForImageTextRetrieval(released_shapes.blip2_itm_vit_g())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 - the tied lm_head counts once
    text_cfg = blip2_conv.config_from_hf_config(cap_hf).text
    value = build.flat_params(build.abstract(lambda: ValueNetwork(ValueConfig(), text_cfg, rngs=nnx.Rngs(0))))
    return {
        "vit": count(cap.vision_model),
        "opt": count(cap.language_model),
        "itm_qformer": count(itm) - count(itm.vision_model),
        "policy": count(cap.qformer) + cap.query_tokens.numel() + count(cap.language_projection),
        "value": sum(int(np.prod(v.shape)) for v in value.values()),
    }


def clip_parameters(clip_cfg: dict) -> int:
    """The reward CLIP's towers (VLRM-RS): 4 w^2 attention and 2 w x mlp per block."""
    total = 0
    for tower in (clip_cfg["vision_cfg"], clip_cfg["text_cfg"]):
        w = tower["width"]
        total += tower["layers"] * (4 * w * w + 2 * w * int(tower.get("mlp_ratio", 4.0) * w))
    return total


def kv_bytes_per_caption(layers=32, d=2560, queries=32) -> int:
    """bf16 keys and values of every OPT layer over [soft prompt; BOS; 60 tokens]."""
    return 2 * layers * (queries + 1 + NEW_TOKENS) * d * 2


def project(counts: dict, flops: dict, captions: int, mfu: float, micro_batches: int = 64) -> list[dict]:
    frozen = (counts["vit"] + counts["opt"] + counts["itm_qformer"] + counts.get("clip", 0)) * 2  # bf16
    trainable = counts["policy"] + counts["value"]
    opt_state = trainable * (4 + 4 + 4 + 4)  # fp32 parameters, gradients, Adam mu and nu
    rows = []
    for name, chip, n, (data, fsdp, tensor) in SLICES:
        peak, hbm, bandwidth = CHIPS[chip]
        batch_split = data * fsdp
        weights = frozen / (fsdp * tensor) + opt_state / (fsdp * tensor)
        kv = kv_bytes_per_caption() * captions / batch_split / tensor
        # one micro-batch's update activations, each OPT layer's input kept (remat) + 16 vocab positions
        rows_per_chip = max(1, captions // micro_batches // batch_split)
        act = rows_per_chip * (32 * (32 + 1 + NEW_TOKENS) * 2560 * 2 + 16 * 50272 * 4)
        total = weights + kv + act
        compute_s = flops["total"] * captions / (n * peak * mfu)
        # decode: every token reads this chip's OPT share and its KV cache once
        decode_s = NEW_TOKENS * (counts["opt"] * 2 / tensor + kv / 2) / bandwidth
        rows.append(dict(slice=name, chips=n, mesh=(data, fsdp, tensor), weights_gib=weights / GIB, kv_gib=kv / GIB,
                         act_gib=act / GIB, total_gib=total / GIB, hbm_gib=hbm / GIB, fits=total < 0.9 * hbm,
                         step_s=compute_s, decode_floor_s=decode_s))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--captions", type=int, default=4096)
    p.add_argument("--variant", default="vlrm", choices=["vlrm", "vlrm_rs"])
    args = p.parse_args(argv)

    from bench import flops as bench_flops
    from bench.step_shapes import SHAPES, hf_configs
    from vlrm_jax.models.value import ValueConfig

    shape = SHAPES["released"]
    cap_cfg, itm_cfg = hf_configs(shape)
    flops = bench_flops.caption_flops(cap_cfg, itm_cfg, ValueConfig(), NEW_TOKENS, args.variant, shape["clip"])
    counts = parameter_counts()
    if args.variant == "vlrm_rs":
        counts["clip"] = clip_parameters(shape["clip"])
    print(f"{args.variant}: {flops['total'] / 1e12:.2f} TFLOP per caption ("
          + ", ".join(f"{k} {v / 1e12:.2f}" for k, v in flops.items() if k != "total") + ")")
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in counts.items() ))
    print(f"{args.captions} captions per step, MFU {args.mfu:.0%} assumed\n")
    print("| slice | chips | mesh (data, fsdp, tensor) | weights + Adam GiB | KV cache GiB | update act. GiB "
          "| total / HBM GiB | step s | decode floor s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in project(counts, flops, args.captions, args.mfu):
        print(f"| {r['slice']} | {r['chips']} | {r['mesh']} | {r['weights_gib']:.1f} | {r['kv_gib']:.1f} | "
              f"{r['act_gib']:.2f} | {r['total_gib']:.1f} / {r['hbm_gib']:.0f}{'' if r['fits'] else ' (too big)'} | "
              f"{r['step_s']:.1f} | {r['decode_floor_s']:.2f} |")


if __name__ == "__main__":
    main()
