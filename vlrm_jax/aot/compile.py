"""Compile a run config's training step and its evaluation beam search for a TPU target, and
read what the compiler says: memory per chip, FLOPs, HBM bytes and collectives per step, and the
roofline bound on step time that follows from the chip's peak figures.

    report = compile_config(cfg, topology.parse("v5e:8x8"), layers=2)
"""
from __future__ import annotations

import dataclasses
import os
import re
import time

import jax
import numpy as np
from flax import nnx

from vlrm_jax.aot import hlo
from vlrm_jax.aot.topology import GIB, Target


@dataclasses.dataclass
class Memory:
    """Per-chip bytes of one compiled program (XLA's `memory_analysis()`); `resident`: bytes that
    stay on the chip while it runs but are not its arguments (the training state during evaluation)."""

    argument: int
    output: int
    alias: int
    temp: int
    code: int
    resident: int = 0

    @property
    def peak(self) -> int:
        """Arguments and outputs (an output that reuses a donated argument counted once),
        temporaries, code and the resident state: what must fit in HBM at once."""
        return self.argument + self.output - self.alias + self.temp + self.code + self.resident


@dataclasses.dataclass
class ProgramReport:
    name: str  # "train_step" or "eval_beam_search"
    compile_s: float
    memory: Memory | None  # None when the compiler refused it for lack of memory
    flops: float = 0.0  # per run, per chip
    hbm_bytes: float = 0.0
    collectives: dict = dataclasses.field(default_factory=dict)
    error: str = ""  # the compiler's out-of-memory message


@dataclasses.dataclass
class Report:
    config: str
    topology: str
    slice: str
    chips: int
    mesh: dict
    layers: int | None
    captions_per_step: int
    micro_batches: int
    hbm_bytes_per_chip: int
    peak_flops: float
    hbm_bandwidth: float
    ici_bandwidth: float
    programs: list[ProgramReport]

    def fits(self) -> bool:
        return all(p.memory is not None and p.memory.peak <= self.hbm_bytes_per_chip for p in self.programs)

    def overshoot(self) -> int:
        """Bytes per chip beyond HBM of the program that needs most (0 when everything fits)."""
        worst = 0
        for p in self.programs:
            if p.memory is None:
                worst = max(worst, _overshoot_from_error(p.error))
            else:
                worst = max(worst, p.memory.peak - self.hbm_bytes_per_chip)
        return max(worst, 0)

    def step_program(self) -> ProgramReport | None:
        return next((p for p in self.programs if p.name == "train_step"), None)

    def step_terms_s(self) -> dict[str, float]:
        """The training step's FLOPs at the chip's peak, its HBM bytes at the chip's bandwidth and
        its collectives' bytes at the chip's ICI bandwidth (an all-reduce moves about twice its
        bytes through each chip), in seconds."""
        step = self.step_program()
        if step is None or step.memory is None:
            return {"flops": 0.0, "hbm": 0.0, "ici": 0.0}
        moved = sum(c["bytes"] * (2 if kind == "all-reduce" else 1) for kind, c in step.collectives.items())
        return {"flops": step.flops / self.peak_flops, "hbm": step.hbm_bytes / self.hbm_bandwidth,
                "ici": moved / self.ici_bandwidth}

    def step_bound_s(self) -> float:
        """Roofline lower bound on the step's time: the longest of `step_terms_s` (none of them
        overlaps perfectly with the others on a real chip, so the step takes longer)."""
        return max(self.step_terms_s().values())

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for program, record in zip(self.programs, out["programs"]):
            if program.memory is not None:
                record["memory"]["peak"] = program.memory.peak
        out["fits"] = self.fits()
        out["overshoot_bytes"] = self.overshoot()
        bound = self.step_bound_s()
        out["step_bound_s"] = bound
        out["step_terms_s"] = self.step_terms_s()
        out["captions_per_s_per_chip_bound"] = self.captions_per_step / self.chips / bound if bound else None
        return out


_SIZE = r"([0-9.]+)([KMGT])"
_SCALE = {"K": 1024, "M": 1024 ** 2, "G": GIB, "T": 1024 * GIB}


def _overshoot_from_error(message: str) -> int:
    """Bytes over HBM in XLA's out-of-memory message ("... required for HLO temporaries (19.75G)
    exceeds available HBM (15.75G)"); 1 when the message gives no sizes."""
    match = re.search(rf"\({_SIZE}\) exceeds available HBM \({_SIZE}\)", message)
    if not match:
        return 1
    need = float(match.group(1)) * _SCALE[match.group(2)]
    have = float(match.group(3)) * _SCALE[match.group(4)]
    return max(int(need - have), 1)


def _is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "exceeded" in text and "memory" in text


def _compile(name: str, lowered, resident: int = 0, dump: str | None = None) -> ProgramReport:
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA raises its runtime error type for OOM
        if not _is_out_of_memory(e):
            raise
        return ProgramReport(name, time.perf_counter() - start, None, error=str(e).splitlines()[0][:2000])
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    memory = Memory(stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.alias_size_in_bytes,
                    stats.temp_size_in_bytes, stats.generated_code_size_in_bytes, resident)
    text = compiled.as_text()
    if dump:
        os.makedirs(dump, exist_ok=True)
        with open(os.path.join(dump, f"{name}.hlo.txt"), "w") as f:
            f.write(text)
    counts = hlo.count(text)
    return ProgramReport(name, seconds, memory, counts.flops, counts.hbm_bytes, counts.collectives)


def chip_bytes(tree) -> int:
    """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
    return total


def lower_step(trainer, rows: int):
    """The training step lowered on abstract inputs of `rows` images."""
    return trainer.step.lower(*trainer.abstract_inputs(rows))


def lower_eval(trainer, cfg):
    """The evaluation's beam search (the paper's inference settings) of the policy, on
    eval.batch_size images split over the batch axes."""
    from vlrm_jax import sharding as shd
    from vlrm_jax.generate.config import GenerationConfig
    from vlrm_jax.generate.search import generate_jit

    state, _, _ = trainer.abstract_inputs(cfg.batch_size)
    rows = cfg.eval.batch_size
    if rows % shd.batch_devices(trainer.mesh):
        raise ValueError(f"eval.batch_size={rows} does not divide over the {shd.batch_devices(trainer.mesh)} devices "
                         "of the batch axes")
    graphdef, params = nnx.split(trainer.policy_module(state))
    side = trainer.image_sizes["pixels"]
    pixels = jax.ShapeDtypeStruct((rows, *side, 3), np.float32, sharding=shd.batch_sharding(trainer.mesh, 4))
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=jax.sharding.NamedSharding(trainer.mesh, jax.sharding.PartitionSpec()))
    generation = GenerationConfig.paper_inference(no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size)
    lowered = generate_jit.lower(graphdef, generation, params, pixels, key)
    # during evaluation the rest of the training state stays on the chip
    resident = chip_bytes((state.value, state.policy_opt, state.value_opt))
    return lowered, resident


def compile_config(cfg, target: Target, devices, layers: int | None = None, evaluate: bool = True,
                   config_name: str = "", progress=print, dump: str | None = None, train: bool = True) -> Report:
    """Compile the training step (and the evaluation's beam search) of `cfg` for `devices`;
    dump: a folder for each compiled program's optimised HLO text."""
    from vlrm_jax.rl.assemble import abstract_step
    from vlrm_jax.sharding import MESH_AXES

    trainer, spec = abstract_step(cfg, devices, layers=layers)
    mesh = dict(zip(MESH_AXES, spec.mesh_shape))
    progress(f"compiling the training step for {target.name} ({target.slice_name}), mesh {mesh}, "
             f"{cfg.batch_size} images in {trainer.cfg.micro_batches} micro-batches"
             + (f", {layers} layers per tower" if layers else ""))
    programs = [_compile("train_step", lower_step(trainer, cfg.batch_size), dump=dump)] if train else []
    if evaluate:
        progress(f"compiling the evaluation's beam search ({cfg.eval.batch_size} images, 5 beams)")
        lowered, resident = lower_eval(trainer, cfg)
        programs.append(_compile("eval_beam_search", lowered, resident, dump=dump))
    return Report(config=config_name, topology=target.name, slice=target.slice_name, chips=target.chips, mesh=mesh,
                  layers=layers, captions_per_step=cfg.batch_size * trainer.cfg.samples_per_image,
                  micro_batches=trainer.cfg.micro_batches, hbm_bytes_per_chip=target.chip.hbm_bytes,
                  peak_flops=target.chip.peak_flops, hbm_bandwidth=target.chip.hbm_bandwidth,
                  ici_bandwidth=target.chip.ici_bandwidth, programs=programs)


def format_report(report: Report) -> str:
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    lines = [f"{report.config} on {report.topology} ({report.slice}, {report.chips} chips), mesh {report.mesh}"
             + (f", {report.layers} layers per tower" if report.layers else "")
             + f": {report.captions_per_step} captions per step in {report.micro_batches} micro-batches",
             f"HBM per chip {gib(report.hbm_bytes_per_chip)} GiB; peak {report.peak_flops / 1e12:.0f} TFLOP/s bf16, "
             f"HBM {report.hbm_bandwidth / 1e9:.0f} GB/s, ICI {report.ici_bandwidth / 1e9:.0f} GB/s"]
    for p in report.programs:
        lines.append(f"\n{p.name}: compiled in {p.compile_s:.0f} s")
        if p.memory is None:
            lines.append(f"  does not fit: {p.error}")
            continue
        m = p.memory
        lines.append(f"  per chip GiB: arguments {gib(m.argument)}, outputs {gib(m.output)}, aliased {gib(m.alias)}, "
                     f"temporaries {gib(m.temp)}, code {gib(m.code)}"
                     + (f", resident state {gib(m.resident)}" if m.resident else ""))
        verdict = "fits" if m.peak <= report.hbm_bytes_per_chip else "DOES NOT FIT"
        lines.append(f"  peak {gib(m.peak)} of {gib(report.hbm_bytes_per_chip)} GiB: {verdict}")
        lines.append(f"  per chip and run: {p.flops / 1e12:.2f} TFLOP, {p.hbm_bytes / 1e9:.1f} GB of HBM traffic")
        if p.collectives:
            parts = ", ".join(f"{kind} {int(c['count'])} ({c['bytes'] / 1e9:.2f} GB)" for kind, c in sorted(p.collectives.items()))
            lines.append(f"  collectives per run: {parts}")
        else:
            lines.append("  collectives per run: none")
    step = report.step_program()
    if step is not None and step.memory is not None and step.flops:
        bound, terms = report.step_bound_s(), report.step_terms_s()
        lines.append(f"\nroofline bound on the step: {bound:.2f} s ({terms['flops']:.2f} s of FLOPs, "
                     f"{terms['hbm']:.2f} s of HBM traffic, {terms['ici']:.2f} s of collectives), at most "
                     f"{report.captions_per_step / report.chips / bound:.1f} captions/s per chip")
    lines.append("fits" if report.fits() else f"does not fit: {report.overshoot() / GIB:.2f} GiB per chip over HBM")
    return "\n".join(lines)
