"""`python -m vlrm_jax.aot`: the compile check a user runs before a pod job. Bad input exits 2
before anything compiles; the compiles themselves (minutes) are in the slow set."""
import json

import pytest

from tests.helpers import run_module


def _aot(*args, check=False):
    return run_module("vlrm_jax.aot", *args, check=check)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/vlrm.py", "--topology=v5e:8"], "expected GENERATION:AxB"),
    (["--config=configs/vlrm.py", "--topology=v5e:2x2", "--config.nonexistent=1"], "vlrm_jax.aot: bad config"),
    (["--config=configs/vlrm.py"], "--config and --topology are required"),
])
def test_bad_input_exits_2_naming_it(args, message):
    proc = _aot(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "E0000" not in proc.stderr  # libtpu's start-up noise is kept out of the user's way


def test_topology_names():
    from vlrm_jax.aot import topology

    v4 = topology.parse("v4:2x4x4")
    assert (v4.chips, v4.slice_name, v4.accelerator_type, v4.chip.hbm_bytes) == (32, "v4-64", "v4-64", 32 * 2 ** 30)
    v5e = topology.parse("v5e:16x16")
    assert (v5e.chips, v5e.slice_name, v5e.accelerator_type) == (256, "v5e-256", "v5litepod-256")
    for bad, why in (("v4:4x4", "3-D"), ("v7:2x2", "GENERATION"), ("v5e-64", "GENERATION")):
        with pytest.raises(ValueError, match=why):
            topology.parse(bad)


def _compile_small(tmp_path, variant, *extra):
    out = tmp_path / f"{variant}.json"
    proc = _aot(f"--config=configs/{variant}.py", "--topology=v5e:2x2", "--layers=2", "--config.batch_size=8",
                "--config.a2c.micro_batches=2", f"--json={out}", *extra)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vlrm", "vlrm_rs"])
def test_small_slice_compiles_and_reports(tmp_path, variant):
    """The paper's step and beam search at the released widths, 2 layers per tower, on 4 v5e chips."""
    proc, report = _compile_small(tmp_path, variant)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["fits"] and report["overshoot_bytes"] == 0 and report["chips"] == 4
    step, beam = report["programs"]
    assert (step["name"], beam["name"]) == ("train_step", "eval_beam_search")
    for program in (step, beam):
        assert 0 < program["memory"]["peak"] <= report["hbm_bytes_per_chip"]
        assert program["flops"] > 0 and program["hbm_bytes"] > 0
    assert step["collectives"]["all-reduce"]["count"] > 0  # gradients across data, activations across tensor
    assert beam["memory"]["resident"] > 0  # the training state stays on the chip during evaluation
    assert report["step_bound_s"] > 0 and report["captions_per_s_per_chip_bound"] > 0
    assert "roofline bound on the step" in proc.stdout and proc.stdout.rstrip().endswith("fits")


@pytest.mark.slow
def test_full_size_step_on_v5e_64_fits_with_its_mesh(tmp_path):
    """The paper config at full size on v5e-64 with the mesh configs/vlrm.py names for it; the
    data-only mesh does not fit a v5e chip, and says by how much (exit 1)."""
    out = tmp_path / "full.json"
    proc = _aot("--config=configs/vlrm.py", "--topology=v5e:8x8", "--config.mesh.data=16", "--config.mesh.tensor=4",
                "--noeval", f"--json={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["fits"] and report["mesh"] == {"data": 16, "fsdp": 1, "tensor": 4}
    assert report["programs"][0]["flops"] > 1e14  # about 16 PFLOP over 64 chips
    proc = _aot("--config=configs/vlrm.py", "--topology=v5e:8x8", "--config.mesh.data=64", "--config.mesh.tensor=1",
                "--noeval")
    assert proc.returncode == 1 and "does not fit" in proc.stdout


def test_sweep_table_reads_its_lines(tmp_path):
    """`python -m vlrm_jax.aot.sweep --table`: a slice's choice row and every candidate's row."""
    from vlrm_jax.aot import sweep

    def report(tensor, fits, phase_programs):
        programs = [{"name": name, "memory": {"peak": 5 * 2 ** 30} if fits else None, "flops": 2e14,
                     "collectives": {"all-reduce": {"count": 7, "bytes": 1e9}}} for name in phase_programs]
        return {"config": "configs/vlrm.py", "topology": "v5e:8x8", "slice": "v5e-64", "chips": 64,
                "mesh": {"data": 64 // tensor, "fsdp": 1, "tensor": tensor}, "micro_batches": 64,
                "captions_per_step": 4096, "hbm_bytes_per_chip": 16 * 2 ** 30, "fits": fits,
                "overshoot_bytes": 0 if fits else 2 ** 30, "step_bound_s": 1.5,
                "step_terms_s": {"flops": 1.0, "hbm": 1.5, "ici": 0.5}, "captions_per_s_per_chip_bound": 42.7,
                "programs": programs}

    lines = [{"phase": "mesh", "command": "python -m vlrm_jax.aot a", "wall_s": 200, "report": report(1, False, ["train_step"])},
             {"phase": "mesh", "command": "python -m vlrm_jax.aot b", "wall_s": 150, "report": report(4, True, ["train_step"])},
             {"phase": "eval", "command": "python -m vlrm_jax.aot c", "wall_s": 90, "report": report(4, True, ["eval_beam_search"])},
             {"phase": "choice", "command": "python -m vlrm_jax.aot d", "report": report(4, True, ["train_step"])}]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = sweep.table(str(path))
    assert "| v5e-64 | 64 | vlrm.py | (16, 1, 4) | 64 x 64 | 5.0 / 16.0 | 5.0 | 200 | 1.50 (1.00 / 1.50 / 0.50) | 42.7 | `python -m vlrm_jax.aot d` |" in text
    assert "| v5e-64 | vlrm.py | mesh | (64, 1, 1) | 64 | no | over by 1.0 | - | - | 200 |" in text
