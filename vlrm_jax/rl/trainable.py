"""Which parameters a network trains, from path regexes in the config (big_vision's style).

A parameter's path is its nnx path joined by "/", e.g. "qformer/layers/attention/query/kernel"
or "lora/q_proj_a". A parameter trains when any rule matches (`re.search`); every other one is
frozen: it stays out of the optimizer state and out of the donated arguments.
"""
from __future__ import annotations

import re
from typing import Sequence

from flax import nnx


def path_name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def regex_filter(rules: Sequence[str]):
    """An nnx filter: parameters whose path matches one of `rules`."""
    compiled = [re.compile(r) for r in rules]

    def matches(path, value) -> bool:
        return isinstance(value, nnx.Param) and any(c.search(path_name(path)) for c in compiled)

    return matches


def split_trainable(module: nnx.Module, rules: Sequence[str], what: str):
    """(graphdef, trainable state, frozen state). A rule that selects nothing is an error that
    names it: a typo would otherwise freeze the whole network silently."""
    names = [path_name(p) for p, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))]
    for rule in rules:
        if not any(re.search(rule, n) for n in names):
            raise ValueError(f"{what} trainable rule {rule!r} matches no parameter (e.g. {names[:3]})")
    graphdef, trainable, frozen = nnx.split(module, regex_filter(rules), ...)
    return graphdef, trainable, frozen


def trainable_names(state) -> list[str]:
    return sorted(path_name(p) for p, _ in nnx.to_flat_state(state))
