"""Caption generation side by side with transformers, on the same random weights: a sweep.

    python bench/generate_vs_hf.py [--vision light,heavy] [--settings sample,beam5]
        [--batch-sizes 4,16,64] [--new-tokens 15,30,60] [--reps 3] [--dtype float32] [--json FILE] [--smoke]

Models. For each vision tower one random transformers Blip2ForConditionalGeneration is built,
saved, converted once with `convert.blip2` and loaded as a vlrm_jax Captioner:
  light: a 3-layer ViT of width 256 (4 heads) at 224 px, a 2-layer Q-Former of width 256;
  heavy: a 6-layer ViT of width 384 (intermediate 1536, 6 heads) at 224 px, a 4-layer Q-Former.
Both feed 32 query tokens to the same kind of OPT: 8 layers of width 512, the real 50272-token
vocabulary. `--smoke` shrinks all of it (a few seconds on a CPU; checks the script, not speed).

Settings, as the paper's: sample = top-k 6 sampling at temperature 2; beam5 = beam 5 with
no_repeat_ngram_size 2 and min_new_tokens 4 (capped at the new tokens). EOS is ignored on both
sides, so every caption has exactly N new tokens whatever the random weights say.

Measured, for every (vision, setting, batch B, new tokens N), on the same pixels:
  captions/s of each side: B / median of `--reps` timed calls, after one warm-up (compile) call;
  ratio: ours / transformers captions/s;
  ms per decoded token (ours): t(N) - t(1) over N - 1 steps, t(1) being our call with 1 new
    token (vision + prefill + 1 token) at the same B. One step decodes all rows at once: B rows
    for sampling, 5B for beam search;
  bound ms per token: the bytes a step must read, divided by this machine's copy bandwidth
    (bench/bandwidth.py): every OPT weight (the embedding doubles as lm_head) plus the KV cache
    at its mean length over the caption, rows x layers x 2 x (32 queries + BOS + N/2) x width;
  compute ms per token: the step's FLOPs (the layers' and the head's products for every row,
    the attention over the mean cache) over the best measured float32 matrix-product rate;
  roofline: the larger of the two bounds, and ms/token over it (the bandwidth bound is the
    step's floor at few rows; at many rows the products are);
  beam tokens equal: rows whose tokens are transformers' exactly (random weights leave rare
    near-ties, so a few rows may differ).
Runs on CPU or, unchanged, on a GPU (torch and JAX then share the card; the bound then uses the
device's copy bandwidth).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the card
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import bandwidth as bw  # noqa: E402

SETTINGS = {
    "sample": dict(do_sample=True, top_k=6, temperature=2.0),
    "beam5": dict(num_beams=5, no_repeat_ngram_size=2, min_new_tokens=4),
}
TOWERS = {  # (vision, Q-Former layers)
    "light": (dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=4), 2),
    "heavy": (dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6), 4),
}
OPT = dict(vocab_size=50272, hidden_size=512, ffn_dim=2048, num_hidden_layers=8, num_attention_heads=8)
SMOKE_OPT = dict(vocab_size=512, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=2)


def hf_config(tower: str, smoke: bool):
    from transformers import Blip2Config

    vision, q_layers = TOWERS[tower]
    vision = dict(vision, image_size=224, patch_size=14, initializer_range=0.2)
    opt, queries = dict(OPT), 32
    if smoke:
        vision.update(hidden_size=vision["hidden_size"] // 4, intermediate_size=128, image_size=28)
        opt, queries = dict(SMOKE_OPT), 4
    qformer = dict(hidden_size=256 // (4 if smoke else 1), intermediate_size=1024 // (8 if smoke else 1),
                   num_hidden_layers=q_layers, num_attention_heads=4, encoder_hidden_size=vision["hidden_size"],
                   cross_attention_frequency=1, initializer_range=0.2)
    # init_std 0.2: logits far apart, so beam search has no near-ties and tokens can be compared
    text = dict(opt, model_type="opt", word_embed_proj_dim=opt["hidden_size"], max_position_embeddings=256,
                bos_token_id=2, eos_token_id=2, pad_token_id=1, init_std=0.2)
    image_token = 50265 if not smoke else opt["vocab_size"] - 1
    return Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                       num_query_tokens=queries, image_token_index=image_token, initializer_range=0.2)


def build(tower: str, smoke: bool, dtype: str, device: str):
    """The transformers model on `device` and our captioner converted (once) from its saved weights."""
    from transformers import Blip2ForConditionalGeneration

    from convert.blip2 import convert
    from vlrm_jax import Captioner

    torch.manual_seed(0)
    hf = Blip2ForConditionalGeneration(hf_config(tower, smoke)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(os.path.join(tmp, "hf"))
        convert(os.path.join(tmp, "hf"), os.path.join(tmp, "jax"), progress=False)
        cap = Captioner.load(os.path.join(tmp, "jax"), dtype=dtype, param_dtype=dtype)
    return hf.to(device=device, dtype=getattr(torch, dtype)), cap


def timed(fn, reps: int):
    """(seconds of the first call, median seconds of `reps` further calls)."""
    times = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times[0], statistics.median(times[1:])


class Bench:
    """One tower's two models, and timed generation of both at a given setting, B and N."""

    def __init__(self, hf, cap, device: str, reps: int):
        self.hf, self.cap, self.device, self.reps = hf, cap, device, reps
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.image_size = cap.config.vision.image_size

    def pixels(self, b: int):
        x = np.random.default_rng(b).normal(size=(b, self.image_size, self.image_size, 3)).astype(np.float32)
        return x, torch.tensor(x).permute(0, 3, 1, 2).contiguous().to(device=self.device, dtype=self.hf.dtype)

    @staticmethod
    def kwargs(setting: str, n: int) -> dict:
        kw = dict(SETTINGS[setting])
        if "min_new_tokens" in kw:
            kw["min_new_tokens"] = min(kw["min_new_tokens"], n)
        return kw

    @staticmethod
    def config(setting: str, n: int):
        """Our GenerationConfig for a setting at exactly n new tokens (EOS ignored)."""
        from vlrm_jax.generate import GenerationConfig

        return GenerationConfig(max_new_tokens=n, ignore_eos=True, **Bench.kwargs(setting, n))

    def ours(self, setting: str, n: int, px):
        """(first-call s, median s, tokens) of our generation."""
        from vlrm_jax.generate.search import generate_jit

        cfg = self.config(setting, n)
        out = {}

        def run():
            out["ids"] = np.asarray(generate_jit(self.cap._graphdef, cfg, self.cap._state, px, jax.random.key(0)).tokens)

        first, med = timed(run, self.reps)
        return first, med, out["ids"]

    def theirs(self, setting: str, n: int, px):
        """(median s, new tokens) of transformers' generation."""
        out = {}

        def run():
            with torch.no_grad():
                out["ids"] = self.hf.generate(pixel_values=px, max_new_tokens=n, eos_token_id=None,
                                              **self.kwargs(setting, n))
            self.sync()

        _, med = timed(run, self.reps)
        return med, out["ids"].cpu().numpy()[:, self.hf.config.num_query_tokens + 1:]


def measure(bench: Bench, tower: str, setting: str, b: int, n: int, t1: float, px, px_torch, bound, compute) -> dict:
    first, ours_s, ours_ids = bench.ours(setting, n, px)
    hf_s, hf_ids = bench.theirs(setting, n, px_torch)
    rows = b * (5 if setting == "beam5" else 1)
    ms_tok = (ours_s - t1) / (n - 1) * 1e3 if n > 1 else None
    bound_ms, compute_ms = bound(rows, n), compute(rows, n)
    roof = max(bound_ms, compute_ms)
    row = dict(vision=tower, setting=setting, batch=b, new_tokens=n, decode_rows=rows,
               ours_caps_s=b / ours_s, hf_caps_s=b / hf_s, ratio=hf_s / ours_s, ours_s=ours_s, hf_s=hf_s,
               ours_t1_s=t1, compile_s=max(first - ours_s, 0.0), ms_per_token=ms_tok,
               bound_ms_per_token=bound_ms, over_bound=ms_tok / bound_ms if ms_tok is not None else None,
               compute_ms_per_token=compute_ms, roofline_ms_per_token=roof,
               over_roofline=ms_tok / roof if ms_tok is not None else None)
    if setting == "beam5":
        row["tokens_equal"] = f"{int(np.all(hf_ids == ours_ids, axis=1).sum())}/{b}"
    return row


def sweep_tower(tower: str, args, device: str, bandwidth: float, peak: float, report: dict):
    hf, cap = build(tower, args.smoke, args.dtype, device)
    lm = cap.module.language_model
    weights = bw.param_bytes(lm)
    prompt = cap.config.num_query_tokens + 1  # image queries, then BOS as the prompt text
    itemsize = np.dtype(jax.numpy.dtype(args.dtype)).itemsize
    layers, width = lm.cfg.num_hidden_layers, lm.cfg.hidden_size

    def bound(rows, n):
        return bw.bound_ms_per_token(weights, bw.kv_bytes(rows, layers, width, prompt, n, itemsize), bandwidth)

    def compute(rows, n):
        flops = bw.decode_flops(rows, layers, width, lm.cfg.ffn_dim, lm.cfg.vocab_size, prompt, n)
        return bw.compute_ms_per_token(flops, peak)

    report["models"][tower] = dict(hf_config=hf.config.to_dict(), opt_weight_bytes=weights, prompt_tokens=prompt)
    print(f"# {tower}: OPT weights {weights / 2**20:.1f} MiB at {args.dtype}, prompt {prompt} tokens", flush=True)
    bench = Bench(hf, cap, device, args.reps)
    for b in args.batch_sizes:
        px, px_torch = bench.pixels(b)
        px = jax.device_put(px)
        for setting in args.settings:
            _, t1, _ = bench.ours(setting, 1, px)
            for n in args.new_tokens:
                row = measure(bench, tower, setting, b, n, t1, px, px_torch, bound, compute)
                report["rows"].append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict]):
    print("\n| vision | setting | B | rows | new tokens | ours cap/s | HF cap/s | ratio | ms/token | "
          "bound ms/token | ms/token ÷ bound | compute ms/token | ms/token ÷ roofline | beam tokens equal |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['vision']} | {r['setting']} | {r['batch']} | {r['decode_rows']} | {r['new_tokens']} | "
              f"{r['ours_caps_s']:.2f} | {r['hf_caps_s']:.2f} | {r['ratio']:.2f}x | {fmt(r['ms_per_token'], '.2f')} | "
              f"{r['bound_ms_per_token']:.2f} | {fmt(r['over_bound'], '.1f')} | {r['compute_ms_per_token']:.2f} | "
              f"{fmt(r['over_roofline'], '.1f')} | {r.get('tokens_equal', '-')} |")


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vision", default="light,heavy", type=lambda s: s.split(","))
    p.add_argument("--settings", default="sample,beam5", type=lambda s: s.split(","))
    p.add_argument("--batch-sizes", default="4,16,64", type=ints)
    p.add_argument("--new-tokens", default="15,30,60", type=ints)
    p.add_argument("--reps", type=int, default=3, help="timed calls per point (median), after one warm-up")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--smoke", action="store_true", help="tiny models and a 64 MB bandwidth copy: checks the script")
    args = p.parse_args(argv)
    assert set(args.vision) <= set(TOWERS) and set(args.settings) <= set(SETTINGS), "unknown --vision / --settings"

    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = bw.machine_info()
    mb = 64 if args.smoke else 512
    host_bw = bw.copy_bandwidth(mb)
    dev_bw = bw.device_copy_bandwidth(mb) if jax.default_backend() != "cpu" else None
    bandwidth = dev_bw or host_bw
    peak = bw.matmul_peak(256 if args.smoke else 2048)
    print(f"# {json.dumps(machine)}")
    print(f"# copy bandwidth: host {host_bw / 1e9:.2f} GB/s" + (f", device {dev_bw / 1e9:.1f} GB/s" if dev_bw else "")
          + f" (bound uses {bandwidth / 1e9:.2f} GB/s); float32 matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)
    report = dict(machine=machine, host_copy_bandwidth_bytes_s=host_bw, device_copy_bandwidth_bytes_s=dev_bw,
                  bound_bandwidth_bytes_s=bandwidth, matmul_peak_flops_s=peak, args=vars(args), models={}, rows=[])
    for tower in args.vision:
        sweep_tower(tower, args, device, bandwidth, peak, report)
    print_table(report["rows"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
