"""Conversion as a declarative table of name patterns and per-key transforms.

A `Rule` maps one PyTorch tensor name to one Flax parameter path, both written as templates with
`{i}` for a layer index. A rule with `layers=` expands over the named layer set; if its target has
no `{i}`, the layers are stacked on a new leading axis (layers that run under `lax.scan`).

The same table runs both ways: `iter_torch_to_flax` / `torch_to_flax` (strict: every expected
source tensor must exist with the right shape, every source tensor must be claimed by a rule,
every Flax parameter must be produced) and `flax_to_torch` (the inverse transforms, for the way
back to transformers).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from convert.sources import TensorSource


class ConversionError(ValueError):
    """A source that does not fit the table; the message names the offending key."""


@dataclasses.dataclass(frozen=True)
class Transform:
    name: str
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda x: x, lambda x: x)
# torch Linear weight (out, in) <-> flax kernel (in, out)
LINEAR = Transform("linear", lambda x: np.swapaxes(x, 0, 1), lambda x: np.swapaxes(x, 0, 1))
# torch Conv2d weight (out, in, kh, kw) <-> flax Conv kernel (kh, kw, in, out)
CONV = Transform("conv", lambda x: np.transpose(x, (2, 3, 1, 0)), lambda x: np.transpose(x, (3, 2, 0, 1)))


@dataclasses.dataclass(frozen=True)
class Rule:
    source: str
    target: str
    transform: Transform = IDENTITY
    layers: str | None = None  # name of a layer set, when the templates use {i}


@dataclasses.dataclass(frozen=True)
class Entry:
    source: str
    target: tuple
    transform: Transform
    stack_index: int | None  # position on the stacked leading axis, or None


def _path(dotted: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def expand(table: Iterable[Rule], layer_sets: dict[str, Iterable[int]]) -> list[Entry]:
    entries = []
    for rule in table:
        if rule.layers is None:
            entries.append(Entry(rule.source, _path(rule.target), rule.transform, None))
            continue
        stacked = "{i}" not in rule.target
        for i in layer_sets[rule.layers]:
            target = _path(rule.target.format(i=i))
            entries.append(Entry(rule.source.format(i=i), target, rule.transform, i if stacked else None))
    return entries


def iter_torch_to_flax(
    source: TensorSource,
    entries: list[Entry],
    abstract: dict[tuple, "jax.ShapeDtypeStruct"],  # noqa: F821
    *,
    ignore: Iterable[str] = (),
    progress: bool = True,
) -> Iterator[tuple[tuple, np.ndarray]]:
    """Yield (path, array) for every Flax parameter in `abstract`, each cast to its dtype, one
    finished parameter at a time: a caller that writes and drops them (`write_model_dir`) holds
    one parameter, not the model. The source's key set is checked before any tensor is read;
    ConversionError names the first missing, unexpected or mis-shaped key."""
    ignore = set(ignore)
    by_source = {e.source: e for e in entries}
    missing = [e.source for e in entries if e.source not in source]
    if missing:
        raise ConversionError(f"{source.origin}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = [k for k in source.keys() if k not in by_source and k not in ignore]
    if unexpected:
        raise ConversionError(
            f"{source.origin}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all)"
        )
    by_target: dict[tuple, list[Entry]] = {}
    for e in entries:
        if e.target not in abstract:
            raise ConversionError(f"rule for {e.source!r} targets unknown parameter {'.'.join(map(str, e.target))}")
        by_target.setdefault(e.target, []).append(e)
    for path, want in abstract.items():  # table bugs, not bad sources: say which parameter
        parts = by_target.get(path, [])
        stacked = [e.stack_index for e in parts if e.stack_index is not None]
        complete = sorted(stacked) == list(range(want.shape[0])) if stacked else len(parts) == 1
        if not complete:
            raise ConversionError(f"the rules do not produce parameter {'.'.join(map(str, path))} exactly once")

    with tqdm(total=len(entries), desc="convert", unit="tensor", disable=not progress, leave=False) as bar:
        for path, want in abstract.items():
            shape, dtype = tuple(want.shape), want.dtype
            out = None
            for e in by_target[path]:
                want_one = shape[1:] if e.stack_index is not None else shape
                value = e.transform.to_flax(source.load(e.source))
                if tuple(value.shape) != want_one:
                    raise ConversionError(
                        f"{source.origin}: tensor {e.source!r} has shape {tuple(source.shape(e.source))}, "
                        f"expected {_torch_shape(e.transform, want_one)}"
                    )
                if e.stack_index is None:
                    out = np.asarray(value, dtype=dtype)
                else:
                    if out is None:
                        out = np.empty(shape, dtype=dtype)
                    out[e.stack_index] = value
                bar.update()
            yield path, out


def torch_to_flax(source: TensorSource, entries: list[Entry], abstract, *, ignore: Iterable[str] = (),
                  progress: bool = True) -> dict[tuple, np.ndarray]:
    """All of `iter_torch_to_flax` in one dict (tests, in-memory use)."""
    return dict(iter_torch_to_flax(source, entries, abstract, ignore=ignore, progress=progress))


def _torch_shape(transform: Transform, flax_shape: tuple) -> tuple:
    return tuple(transform.to_torch(np.empty(flax_shape, np.uint8)).shape)


def flax_to_torch(flat: dict[tuple, np.ndarray], entries: list[Entry]) -> dict[str, np.ndarray]:
    """The inverse: Flax parameters back to PyTorch tensor names and layouts."""
    out = {}
    for e in entries:
        if e.target not in flat:
            raise ConversionError(f"parameter {'.'.join(map(str, e.target))} is missing from the model folder")
        value = np.asarray(flat[e.target])
        if e.stack_index is not None:
            value = value[e.stack_index]
        out[e.source] = np.ascontiguousarray(e.transform.to_torch(value))
    unused = set(flat) - {e.target for e in entries}
    if unused:
        raise ConversionError(f"no rule maps parameter {'.'.join(map(str, sorted(unused, key=str)[0]))} back")
    return out
