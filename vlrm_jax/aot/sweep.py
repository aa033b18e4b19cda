"""Find a slice's mesh and micro-batch by compiling the candidates (`python -m vlrm_jax.aot` each,
in its own process so one compile's memory is gone before the next):

    python -m vlrm_jax.aot.sweep --config=configs/vlrm.py --topology v5e:8x8 v4:2x4x4 --out runs/aot/slices.jsonl
    python -m vlrm_jax.aot.sweep --table runs/aot/slices.jsonl     # the markdown tables of docs/scaling.md

1. meshes: every (data, 1, tensor) with tensor in --tensor (default 1, 2, 4) at the config's
   micro-batches, training step only; the best is the one that fits with the lowest roofline
   bound (the longest of FLOPs at peak, HBM bytes at bandwidth, collective bytes at ICI bandwidth);
2. micro-batches: on that mesh, fewer and larger micro-batches (--micro-batches, largest first
   tried last) until one does not fit: the largest micro-batch that fits;
3. the training step and the evaluation's beam search on that mesh with that micro-batch.
Every compile is one JSON line in --out (its command and report); a "choice" line ends a slice.
fsdp is not tried: the decode loop would gather every weight at each token (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from vlrm_jax.aot import topology


def command(config: str, target: str, data: int, tensor: int, micro_batches: int, programs: str = "train") -> list[str]:
    """The aot command of one candidate; programs: "train", "eval" or "both"."""
    cmd = ["python", "-m", "vlrm_jax.aot", f"--config={config}", f"--topology={target}",
           f"--config.mesh.data={data}", "--config.mesh.fsdp=1", f"--config.mesh.tensor={tensor}",
           f"--config.a2c.micro_batches={micro_batches}"]
    return cmd + {"train": ["--noeval"], "eval": ["--notrain"], "both": []}[programs]


def compile_once(cmd: list[str], out, phase: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report_path = os.path.join(tmp, "report.json")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *cmd[1:], f"--json={report_path}"], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        report = json.load(open(report_path)) if os.path.exists(report_path) else None
    if proc.returncode not in (0, 1) or report is None:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    record = {"phase": phase, "command": " ".join(cmd), "wall_s": round(seconds, 1), "report": report}
    out.write(json.dumps(record) + "\n")
    out.flush()
    fits = "fits" if report["fits"] else f"does not fit (+{report['overshoot_bytes'] / topology.GIB:.2f} GiB)"
    print(f"{phase}: {' '.join(cmd[3:])}: {fits}, step bound {report['step_bound_s']:.2f} s, {seconds:.0f} s",
          flush=True)
    return report


def sweep(config: str, target_name: str, tensors: list[int], micro_batches: list[int], out,
          evaluate: bool = True) -> dict:
    from vlrm_jax.config_utils import load_config

    target = topology.parse(target_name)
    base_mb = load_config(config).a2c.micro_batches
    best = None
    for tensor in tensors:
        if target.chips % tensor:
            continue
        data = target.chips // tensor
        report = compile_once(command(config, target_name, data, tensor, base_mb), out, "mesh")
        if report["fits"] and (best is None or report["step_bound_s"] < best[0]["step_bound_s"]):
            best = (report, data, tensor)
    if best is None:
        raise RuntimeError(f"no mesh of {tensors} fits {target_name}")
    chosen, data, tensor = best
    # fewer, larger micro-batches until one does not fit (the list in the order to try)
    for mb in micro_batches:
        report = compile_once(command(config, target_name, data, tensor, mb), out, "micro_batches")
        if not report["fits"]:
            break
        chosen = report
    if evaluate:
        compile_once(command(config, target_name, data, tensor, chosen["micro_batches"], "eval"), out, "eval")
    out.write(json.dumps({"phase": "choice", "command": " ".join(command(
        config, target_name, data, tensor, chosen["micro_batches"], "both")), "report": chosen}) + "\n")
    out.flush()
    return chosen


def _mesh_text(mesh: dict) -> str:
    return f"({mesh['data']}, {mesh['fsdp']}, {mesh['tensor']})"


def table(path: str) -> str:
    """Markdown of a sweep's JSON lines: each slice's choice, then every candidate compiled."""
    gib = lambda b: f"{b / topology.GIB:.1f}"  # noqa: E731
    records = [json.loads(line) for line in open(path) if line.strip()]
    # the beam search is the captioner's alone, its resident state the same in both configs: one
    # compile serves every config on that slice and mesh
    evals = {(r["report"]["topology"], _mesh_text(r["report"]["mesh"])): r["report"]
             for r in records if r["phase"] == "eval"}
    rows = ["| slice | chips | config | mesh (data, fsdp, tensor) | micro-batches x captions | step peak / HBM GiB "
            "| beam search peak GiB | TFLOP per chip | bound s (FLOPs / HBM / ICI) | captions/s per chip | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["phase"] != "choice":
            continue
        rep = r["report"]
        step = next(p for p in rep["programs"] if p["name"] == "train_step")
        terms = rep["step_terms_s"]
        beam = evals.get((rep["topology"], _mesh_text(rep["mesh"])))
        beam_peak = gib(beam["programs"][0]["memory"]["peak"]) if beam else "-"
        rows.append(
            f"| {rep['slice']} | {rep['chips']} | {os.path.basename(rep['config'])} | {_mesh_text(rep['mesh'])} "
            f"| {rep['micro_batches']} x {rep['captions_per_step'] // rep['micro_batches']} "
            f"| {gib(step['memory']['peak'])} / {gib(rep['hbm_bytes_per_chip'])} | {beam_peak} "
            f"| {step['flops'] / 1e12:.0f} | {rep['step_bound_s']:.2f} ({terms['flops']:.2f} / {terms['hbm']:.2f} / "
            f"{terms['ici']:.2f}) | {rep['captions_per_s_per_chip_bound']:.1f} | `{r['command']}` |")
    rows += ["", "| slice | config | phase | mesh | micro-batches | fits | peak GiB | step bound s | all-reduces "
                 "| compile wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["phase"] == "choice":
            continue
        rep = r["report"]
        programs = {p["name"]: p for p in rep["programs"]}
        program = programs.get("train_step") or programs.get("eval_beam_search")
        compiled = program["memory"] is not None
        peak = gib(program["memory"]["peak"]) if compiled else f"over by {gib(rep['overshoot_bytes'])}"
        reduces = int(program["collectives"].get("all-reduce", {}).get("count", 0)) if compiled else "-"
        bound = f"{rep['step_bound_s']:.2f}" if compiled and "train_step" in programs else "-"
        rows.append(f"| {rep['slice']} | {os.path.basename(rep['config'])} | {r['phase']} | {_mesh_text(rep['mesh'])} "
                    f"| {rep['micro_batches']} | {'yes' if rep['fits'] else 'no'} | {peak} "
                    f"| {bound} | {reduces} | {r['wall_s']:.0f} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config")
    parser.add_argument("--topology", nargs="+")
    parser.add_argument("--table", metavar="JSONL", help="print a finished sweep's markdown tables and exit")
    parser.add_argument("--tensor", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--micro-batches", type=int, nargs="*", default=[16, 8],
                        help="micro-batch counts to try on the chosen mesh, in order, until one does not fit")
    parser.add_argument("--noeval", action="store_true", help="skip the beam search compile of the choice")
    parser.add_argument("--out", help="JSON lines, appended")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return
    if not args.config or not args.topology or not args.out:
        parser.error("--config, --topology and --out are required (or --table)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "a") as out:
        for name in args.topology:
            sweep(args.config, name, args.tensor, args.micro_batches, out, evaluate=not args.noeval)


if __name__ == "__main__":
    main()
