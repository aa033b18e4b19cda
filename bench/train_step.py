"""The whole A2C step (rollout, reward, value and policy updates) beside a PyTorch composite of
the same step, on the same random weights, in one run.

    python bench/train_step.py [--shapes tiny|medium|released] [--variants vlrm,vlrm_rs] [--reps 3]
                               [--json FILE] [--no-memory] [--no-stages]

JAX: `vlrm_jax.rl.step.A2CStep.step` exactly as training calls it (VlrmScorer reward inside the
jitted program, ViT trunk shared with the ITM, the captioner's OPT as reference LM).
PyTorch: what a competent transformers user writes for the same step: the soft prompt once
under no_grad, `language_model.generate` (top-k 6, temperature 2, do_sample), the host penalties
and retokenisation of the same `Retokenizer`, `Blip2ForImageTextRetrieval(...,
use_image_text_matching_head=True)`, the captioner's own OPT as reference LM, the value network of
vlrm_jax/testing/torch_step.py (peft LoRA on a copy of the OPT, a head of transformers
`OPTDecoderLayer`s), the policy through Q-Former / query tokens / projection and the frozen OPT
with autograd, both over the same micro-batches, then torch Adam with the joint norm clip.
VLRM-RS adds open_clip's image and text towers to both sides (and drops the reference LM).
The two differ in one way of computing: JAX's policy pass takes p_k from the logits of the
rollout's recorded top-k support only (`A2CConfig.support_only`), the composite from the whole
vocabulary's; the check (bench/parity.py) finds the same losses.

Before any timing the composite scores the JAX step's first rollout and computes its losses on
it: returns and both losses must equal the JAX step's (that is what makes the comparison fair).
Timing: JAX and PyTorch steps alternate (J T J T ...), medians are reported; JAX compile time =
first call minus the median. Peak memory: on CPU each side runs alone in a subprocess, its peak
resident set (Linux VmHWM, reset through /proc/self/clear_refs after the models are built) during
two steps; on a GPU the frameworks' own peak counters. MFU: the analytic FLOPs of one caption
(`caption_flops` in bench/flops.py, every formula there) x captions/s / the peak FLOP/s of a large
matmul measured in the same run (`matmul_peak`). `os.getloadavg()` before and after goes into the
JSON.

The shapes and models: bench/step_shapes.py; the two sides: bench/jax_side.py, bench/torch_side.py
(on vlrm_jax/testing/torch_step.py); memory: bench/memory.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import bench  # noqa: E402, F401 - before jax: XLA_PYTHON_CLIENT_PREALLOCATE=false, torch shares the card
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.flops import caption_flops, matmul_peak  # noqa: E402
from bench.jax_side import JaxSide  # noqa: E402
from bench.memory import memory_child, memory_per_side  # noqa: E402
from bench.parity import check_same_step  # noqa: E402
from bench.step_shapes import SHAPES, bench_pixels, make_setup, shape_of  # noqa: E402
from bench.torch_side import TorchSide  # noqa: E402


def run_variant(args, variant: str, device: str) -> dict:
    """One variant: build both sides, check they compute the same step, then time them alternately."""
    shape = shape_of(args)
    setup = make_setup(shape, variant, device)
    t0 = time.perf_counter()
    jax_side = JaxSide(setup)
    torch_side = TorchSide(setup)
    build_s = time.perf_counter() - t0
    pixels = bench_pixels(shape)
    t0 = time.perf_counter()
    check = check_same_step(jax_side, torch_side, pixels)  # also the JAX step's compile
    first_jax = time.perf_counter() - t0
    print(f"# {variant} check: {json.dumps(check)}", flush=True)
    jbatch, tbatch = jax_side.batch(pixels), torch_side.batch(pixels)
    torch_side.step(tbatch)  # warm-up (allocator, oneDNN primitives)
    torch_side.times.clear()
    jax_times, torch_times, lengths = [], [], []
    for _ in range(args.reps):  # alternate, so load from others falls on both sides alike
        t = time.perf_counter()
        jax_side.step(jbatch)
        jax_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        _, length = torch_side.step(tbatch)
        torch_times.append(time.perf_counter() - t)
        lengths.append(length)
    b = shape["batch"]
    jax_s, torch_s = float(np.median(jax_times)), float(np.median(torch_times))
    cap_cfg, itm_cfg = setup.hf_cap.config, setup.hf_itm.config
    flops = caption_flops(cap_cfg, itm_cfg, setup.value_cfg, shape["new_tokens"], variant, shape.get("clip"),
                          top_k=setup.rollout.top_k)
    row = dict(
        variant=variant, build_s=build_s, check=check,
        jax=dict(step_s=jax_s, step_s_all=jax_times, caps_s=b / jax_s, compile_s=max(first_jax - jax_s, 0.0)),
        torch=dict(step_s=torch_s, step_s_all=torch_times, caps_s=b / torch_s, caption_length=float(np.mean(lengths)),
                   stages={k: v / args.reps for k, v in torch_side.times.items()}),
        ratio=torch_s / jax_s, flops_per_caption=flops,
    )
    if args.stages:
        try:
            row["jax"]["stages"] = jax_side.stage_times(jbatch, max(1, min(args.reps, 2)))
        except Exception as e:  # noqa: BLE001 - a diagnostic; the step's own numbers stand without it
            row["jax"]["stages"] = dict(error=repr(e))
    if device == "cuda":
        stats = jax.devices()[0].memory_stats() or {}
        row["jax"]["peak_bytes"] = stats.get("peak_bytes_in_use")
        row["torch"]["peak_bytes"] = torch.cuda.max_memory_allocated()
    return row


def machine_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({jax.default_backend()}), {os.cpu_count()} CPU cores"
    return f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPU cores"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="medium", choices=sorted(SHAPES))
    p.add_argument("--tiny", action="store_true", help="--shapes tiny --reps 1 (a smoke test)")
    p.add_argument("--variants", default="vlrm,vlrm_rs")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--micro-batches", dest="micro_batches", type=int, default=0)
    p.add_argument("--new-tokens", dest="new_tokens", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (XLA uses every core)")
    p.add_argument("--remat", choices=["auto", "on", "off"], default="auto",
                   help="recompute OPT layers in the JAX update (auto: as the shape says)")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--no-stages", dest="stages", action="store_false")
    p.add_argument("--json", default=None)
    p.add_argument("--only", choices=["jax", "torch"], help=argparse.SUPPRESS)  # the memory subprocess
    args = p.parse_args(argv)
    if args.tiny:
        args.shapes, args.reps = "tiny", 1
    torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(memory_child(args)), flush=True)
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = shape_of(args)
    result = dict(
        machine=machine_name(), date=datetime.date.today().isoformat(), shapes=args.shapes,
        batch=shape["batch"], micro_batches=shape["micro_batches"], new_tokens=shape["new_tokens"], dtype=shape["dtype"],
        remat=shape["remat"],
        versions=dict(jax=jax.__version__, torch=torch.__version__), torch_threads=torch.get_num_threads(),
        loadavg_before=list(os.getloadavg()), reps=args.reps,
    )
    print(f"# {result['machine']}; jax {jax.__version__}, torch {torch.__version__}, torch threads "
          f"{torch.get_num_threads()}; load {result['loadavg_before']}", flush=True)
    result["matmul"] = matmul_peak(device, shape["dtype"])
    rows = []
    for variant in args.variants.split(","):
        row = run_variant(args, variant, device)
        if args.memory and device == "cpu":
            sub = argparse.Namespace(**{**vars(args), "variants": variant})
            row["memory"] = memory_per_side(sub)
            for side in ("jax", "torch"):
                if "peak_rss" in row["memory"][side]:
                    row[side]["peak_bytes"] = row["memory"][side]["peak_rss"]
        for side in ("jax", "torch"):
            row[side]["mfu"] = row["flops_per_caption"]["total"] * row[side]["caps_s"] / result["matmul"]["peak_flops_s"]
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("variant", "ratio")} | {s: {k: row[s].get(k) for k in ("caps_s", "compile_s", "mfu", "peak_bytes")} for s in ("jax", "torch")}), flush=True)
    result["rows"] = rows
    result["loadavg_after"] = list(os.getloadavg())
    print_table(result)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def print_table(result: dict) -> None:
    gib = lambda x: f"{x / 2**30:.2f}" if x else "-"  # noqa: E731
    print(f"\n{result['machine']}, {result['date']}, B={result['batch']}, {result['new_tokens']} new tokens, "
          f"{result['micro_batches']} micro-batches, {result['dtype']}, remat {result['remat']}; load {result['loadavg_before']} -> "
          f"{result['loadavg_after']}")
    print("| step | side | captions/s | step s | compile s | peak GiB | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        for side in ("jax", "torch"):
            s = r[side]
            print(f"| {r['variant']} | {side} | {s['caps_s']:.2f} | {s['step_s']:.2f} | {s.get('compile_s', 0):.1f} | "
                  f"{gib(s.get('peak_bytes'))} | {100 * s['mfu']:.1f}% |")
        print(f"| {r['variant']} | ratio | {r['ratio']:.2f}x | | | | check {'ok' if r['check']['ok'] else 'FAILED'} |")


if __name__ == "__main__":
    main()
