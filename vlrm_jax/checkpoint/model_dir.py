"""The model folder: what `convert.*` writes and `vlrm_jax.*.load` reads.

    DIR/config.json      {"kind": ..., "format_version": 1, "model": {...}}  (this package's config)
    DIR/params/NNNNN/    orbax checkpoints of the parameters, about 1 GB each (nested dicts, string keys)
    DIR/hf_config.json   the source transformers config, kept for the way back (optional)
    DIR/<tokenizer and processor files>  (a captioner's: see transformers_files.py)

Parameters are addressed by flat paths (tuples of str/int, as `nnx.to_flat_state` gives them).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
HF_CONFIG_FILE = "hf_config.json"

Path = tuple
SHARD_BYTES = 1 << 30


def _key(k) -> str:
    return str(k)


def nest(flat: dict[Path, Any]) -> dict:
    """{("a", 0, "b"): x} -> {"a": {"0": {"b": x}}} (orbax wants string keys)."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(_key(k), {})
        node[_key(path[-1])] = value
    return tree


def flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def as_str_path(path: Path) -> tuple[str, ...]:
    return tuple(_key(k) for k in path)


def dotted(path: Path) -> str:
    return ".".join(_key(k) for k in path)


def read_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir}: not a vlrm_jax model folder (no {CONFIG_FILE})")
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("format_version") != FORMAT_VERSION or "kind" not in cfg:
        raise ValueError(f"{path}: unsupported model folder format {cfg.get('format_version')!r}")
    return cfg


def check_kind(model_dir: str, *kinds: str) -> dict:
    cfg = read_config(model_dir)
    if cfg["kind"] not in kinds:
        raise ValueError(f"{model_dir} holds a {cfg['kind']!r} model; expected {' or '.join(kinds)}")
    return cfg


def _numpy_registry():
    """orbax's default registry, except that numpy arrays are written without the defensive deep
    copy orbax makes by default: the converter owns its arrays and the copy would double memory."""
    from orbax.checkpoint._src.serialization import type_handler_registry as registry
    from orbax.checkpoint._src.serialization import type_handlers

    handlers = [(t, h) for t, h in registry._DEFAULT_TYPE_HANDLERS if t is not np.ndarray]
    return registry.create_type_handler_registry(
        *handlers, (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)))


def _this_process_only():
    """orbax options for a folder one process writes or reads on its own: with several processes
    (a pod run) orbax would otherwise wait for all of them at every save."""
    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def save_params(params_dir: str, flat: Mapping[Path, Any] | Iterable[tuple[Path, Any]],
                max_shard_bytes: int = SHARD_BYTES) -> None:
    """One orbax checkpoint per group of about max_shard_bytes, under params_dir/NNNNN.

    `flat` is a dict or an iterator of (path, array) pairs (a converter's stream). A group is
    written as soon as it is full (an array of max_shard_bytes or more goes alone) and released
    before the next pair is drawn, so a stream is never held beyond one group. Groups, because
    tensorstore holds a checkpoint's encoded chunks in memory until it commits (one checkpoint
    for a 3.6 GB model peaked at 7.8 GB resident)."""
    items = flat.items() if isinstance(flat, Mapping) else flat
    local = _this_process_only()
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=_numpy_registry(), multiprocessing_options=local)
    os.makedirs(params_dir, exist_ok=True)
    group: dict[Path, Any] = {}
    names = (f"{i:05d}" for i in itertools.count())
    with ocp.Checkpointer(handler, multiprocessing_options=local) as ckptr:

        def flush() -> None:
            ckptr.save(os.path.abspath(os.path.join(params_dir, next(names))), args=ocp.args.PyTreeSave(nest(group)))
            group.clear()  # the only reference to a streamed group's arrays
            _release_freed_memory()

        for path, value in items:
            if group and _nbytes(group) + _nbytes({path: value}) > max_shard_bytes:
                flush()
            group[path] = value
            del value  # nothing here may keep an array past its group's write
            if _nbytes(group) >= max_shard_bytes:
                flush()
        if group:
            flush()


def _nbytes(group: dict[Path, Any]) -> int:
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in group.values())


def _release_freed_memory() -> None:
    """Free what the last write left: orbax's save leaves reference cycles that keep the group's
    arrays alive until the cycle collector happens to run, and glibc keeps small freed blocks."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to do
        pass


def _shards(params_dir: str) -> list[str]:
    names = sorted(n for n in os.listdir(params_dir) if n.isdigit())
    if not names:
        raise FileNotFoundError(f"{params_dir}: no parameter checkpoints")
    return [os.path.join(params_dir, n) for n in names]


def load_params(model_dir: str, abstract: dict[Path, jax.ShapeDtypeStruct]) -> dict[Path, jax.Array]:
    """Restore into the shapes, dtypes (cast on load) and shardings of `abstract`.

    Strict: a parameter the model expects but the folder lacks, or one the folder has but the
    model does not, is an error naming it.
    """
    params_dir = os.path.abspath(os.path.join(model_dir, PARAMS_DIR))
    ckptr = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
    stored, where = {}, {}
    for shard in _shards(params_dir):
        for sp, meta in flatten(ckptr.metadata(shard).item_metadata.tree).items():
            stored[sp], where[sp] = meta, shard
    wanted = {as_str_path(p): p for p in abstract}
    missing = sorted(dotted(p) for p in wanted if p not in stored)
    unexpected = sorted(dotted(p) for p in stored if p not in wanted)
    if missing or unexpected:
        raise ValueError(
            f"{model_dir}: parameters do not match the model config; "
            f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    for sp, p in wanted.items():
        if tuple(stored[sp].shape) != tuple(abstract[p].shape):
            raise ValueError(
                f"{model_dir}: parameter {dotted(p)} has shape {tuple(stored[sp].shape)}, "
                f"the config expects {tuple(abstract[p].shape)}"
            )
    out = {}
    for shard in sorted(set(where.values())):
        here = {sp: p for sp, p in wanted.items() if where[sp] == shard}
        target = nest({sp: _restore_target(abstract[p]) for sp, p in here.items()})
        restored = flatten(ckptr.restore(shard, target))
        out.update({p: restored[sp] for sp, p in here.items()})
    return out


def _restore_target(a: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    sharding = getattr(a, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)


def read_hf_config(folder: str) -> dict | None:
    """The folder's transformers config (hf_config.json), None when it has none."""
    path = os.path.join(folder, HF_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_destination(dst: str, overwrite: bool = False) -> None:
    """An existing `dst` is replaced only with overwrite: checked before a long conversion starts."""
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{os.path.abspath(dst)} already exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def staged_dir(dst: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary sibling folder; move it to `dst` only if the block succeeds.

    A failed conversion leaves nothing behind, and an existing `dst` is only replaced at the end.
    """
    dst = os.path.abspath(dst)
    check_destination(dst, overwrite)
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.partial-", dir=parent)
    try:
        yield tmp
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def write_model_dir(
    dst: str,
    kind: str,
    model_config: dict,
    flat_params: Mapping[Path, Any] | Iterable[tuple[Path, Any]],
    *,
    hf_config: dict | None = None,
    extra_files: list[str] = (),
    overwrite: bool = False,
) -> None:
    """Write a model folder atomically. flat_params may be a converter's stream of (path, array)
    pairs: it is consumed group by group, and an error raised by it leaves no folder behind."""
    with staged_dir(dst, overwrite) as tmp:
        save_params(os.path.join(tmp, PARAMS_DIR), flat_params)
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump({"kind": kind, "format_version": FORMAT_VERSION, "model": model_config}, f, indent=2)
        if hf_config is not None:
            with open(os.path.join(tmp, HF_CONFIG_FILE), "w") as f:
                json.dump(hf_config, f, indent=2)
        for path in extra_files:
            shutil.copy2(path, os.path.join(tmp, os.path.basename(path)))


def to_numpy(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def set_log_verbosity(verbose: bool) -> None:
    """For command-line tools: orbax logs every read and write at INFO through absl, which shows
    wherever logging is set to INFO (another tool's basicConfig, a notebook); only with --verbose."""
    import logging

    from absl import logging as absl_logging

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        absl_logging.set_verbosity(absl_logging.INFO)
    else:
        absl_logging.set_verbosity(absl_logging.WARNING)
