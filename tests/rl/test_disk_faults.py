"""Disk trouble while a checkpoint is written: a full or read-only disk makes the save fail with
an OSError naming the cause, and the checkpoint before it stays the latest, loads, and equals what
was saved; the half-written step is never listed.

Two ways to make the fault. A real one: a small tmpfs mounted over the checkpoint folder, then
filled or remounted read-only (root ignores file permissions, so chmod cannot make a read-only
folder); skipped, with the reason, where mounting is not allowed. An injected one, always run: the
failure is raised inside orbax's asynchronous save, see `inject`.
"""
from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess

import jax.numpy as jnp
import pytest

from vlrm_jax.rl.checkpoint import Checkpoints, tree_equal

FAULTS = {"full": errno.ENOSPC, "read-only": errno.EROFS}


@contextlib.contextmanager
def small_filesystem(path, size="4m"):
    """A tmpfs of `size` mounted at `path` (created), unmounted on exit."""
    if shutil.which("mount") is None:
        pytest.skip("a real full / read-only disk needs `mount`, which this machine lacks; the injected variant runs")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"a real full / read-only disk needs a tmpfs mount, refused here ({proc.stderr.strip()}); "
                    "the injected variant runs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def make_fault(mount, kind: str) -> None:
    """Fill the mounted filesystem, or remount it read-only; fails loudly if the disk still takes writes."""
    if kind == "full":
        with open(mount / "filler", "wb") as f:
            with pytest.raises(OSError) as filled:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
        assert filled.value.errno == errno.ENOSPC, filled.value
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(OSError) as refused:
            (mount / "probe").write_bytes(b"x")
        assert refused.value.errno == errno.EROFS, refused.value


def lift_fault(mount, kind: str) -> None:
    if kind == "full":
        (mount / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)


@contextlib.contextmanager
def inject(kind: str, step: int, monkeypatch):
    """Make orbax's asynchronous save of `step` fail as a full or read-only disk would.

    The array data goes through tensorstore (C++), which no Python patch reaches; what does run in
    Python, on orbax's background thread, are the folder operations of `async_path`: a read-only
    disk refuses the first of them, the temporary folder's mkdir (that is where a real read-only
    tmpfs fails); a full one is patched at the commit marker written after the arrays, the last
    write before the rename that publishes the step, the latest moment a save can fail.
    """
    from orbax.checkpoint._src.path import async_path

    tmp = f"{step}.orbax-checkpoint-tmp"
    name, target = ("mkdir", tmp) if kind == "read-only" else ("write_text", f"{tmp}/commit_success.txt")
    real = getattr(async_path, name)
    calls = []

    async def failing(path, *args, **kwargs):
        if str(path).endswith(target):
            calls.append(str(path))
            raise OSError(FAULTS[kind], "injected: " + ("No space left on device" if kind == "full"
                                                        else "Read-only file system"), str(path))
        return await real(path, *args, **kwargs)

    monkeypatch.setattr(async_path, name, failing)
    yield
    monkeypatch.setattr(async_path, name, real)
    assert calls, f"orbax never called async_path.{name} on {target}: the injection point moved"


def _state(k: float):
    return {"w": jnp.arange(100_000, dtype=jnp.float32) * k, "step": jnp.asarray(int(k))}


def _save_and_wait(ckpt: Checkpoints, step: int) -> None:
    ckpt.save(step, _state(step), {"step": step})
    ckpt.wait()


def _check_previous_stands(folder, step: int) -> None:
    """`step` is the latest and only listed step, in this manager and in a fresh one, and restores."""
    ckpt = Checkpoints(folder)
    assert ckpt.latest_step() == step and list(ckpt.manager.all_steps()) == [step]
    state, record = ckpt.restore(_state(0))
    ckpt.close()
    assert tree_equal(state, _state(step)) and record == {"step": step}
    assert sorted(p.name for p in folder.iterdir() if p.name.isdigit()) == [str(step)]


def _failed_save(ckpt: Checkpoints, step: int, kind: str) -> OSError:
    """Save `step` under the fault: the error comes from the save or, asynchronous, from the wait."""
    with pytest.raises(OSError) as failed:
        _save_and_wait(ckpt, step)
    assert failed.value.errno == FAULTS[kind], failed.value
    return failed.value


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_real_disk_fault_fails_the_save_and_keeps_the_previous_checkpoint(kind, tmp_path):
    folder = tmp_path / "checkpoints"
    with small_filesystem(folder) as mount:
        ckpt = Checkpoints(folder)
        _save_and_wait(ckpt, 1)
        make_fault(mount, kind)
        _failed_save(ckpt, 2, kind)
        assert ckpt.latest_step() == 1
        with contextlib.suppress(OSError):  # close re-raises the failed save's error
            ckpt.close()
        lift_fault(mount, kind)
        _check_previous_stands(folder, 1)
        ckpt = Checkpoints(folder)  # the disk is fine again: saving works and the failed step is gone
        _save_and_wait(ckpt, 3)
        assert list(ckpt.manager.all_steps()) == [1, 3]
        ckpt.close()


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_injected_asynchronous_write_failure_keeps_the_previous_checkpoint(kind, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    ckpt = Checkpoints(folder)
    _save_and_wait(ckpt, 1)
    with inject(kind, 2, monkeypatch):
        ckpt.save(2, _state(2), {"step": 2})  # returns at once: the failure is on the background thread
        with pytest.raises(OSError) as failed:
            ckpt.wait()
    assert failed.value.errno == FAULTS[kind] and "2.orbax-checkpoint-tmp" in str(failed.value), failed.value
    assert str(folder) in str(failed.value)
    assert ckpt.latest_step() == 1
    with contextlib.suppress(OSError):
        ckpt.close()
    _check_previous_stands(folder, 1)
