"""The paper's Table 1 for one caption: each token's bad / repeat / noeos and its return R.

    python -m vlrm_jax.rewards explain --tokenizer DIR --text "an image of a man" --sim 1.2

The text is tokenized with the captioner's tokenizer (no special tokens), EOS is appended unless
--noeos says the caption was cut at the length limit, and the tokens go through the same code
path as training: prefix decoding, character marks, `compute_returns`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from typing import Any

import numpy as np

from vlrm_jax.rewards.penalties import PenaltyRules, token_penalties
from vlrm_jax.rewards.returns import RewardWeights, compute_returns


def explain_caption(
    tokenizer: Any,
    text: str,
    *,
    rules: PenaltyRules | None = None,
    sim: float = 0.0,
    ref: float = 0.0,
    noeos: bool = False,
    weights: RewardWeights = RewardWeights(),
) -> dict:
    """Per-token rows of Table 1 for `text`, as a JSON-ready dict."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if not noeos:
        ids.append(tokenizer.eos_token_id)
    penalties = token_penalties(ids, tokenizer, rules, max_new_tokens=len(ids))
    returns, _ = compute_returns(
        np.array([sim], np.float32),
        np.array([ref], np.float32),
        penalties.bad[None],
        penalties.repeat[None],
        np.array([penalties.noeos], np.float32),
        penalties.mask[None],
        weights,
    )
    returns = np.asarray(returns)[0]
    rows = []
    for k, token_id in enumerate(ids):
        start, end = (int(x) for x in penalties.spans[k])
        rows.append(
            {
                "token": token_label(tokenizer, token_id, penalties.text[start:end]),
                "id": int(token_id),
                "start": start,
                "end": end,
                "bad": int(penalties.bad[k]),
                "repeat": int(penalties.repeat[k]),
                "noeos": int(penalties.noeos),
                "R": float(returns[k]),
            }
        )
    return {
        "text": penalties.text,
        "sim": float(sim),
        "ref": float(ref),
        "noeos": int(penalties.noeos),
        "weights": {f.name: float(getattr(weights, f.name)) for f in dataclasses.fields(weights)},
        "tokens": rows,
    }


def token_label(tokenizer: Any, token_id: int, span_text: str) -> str:
    # Text tokens show the characters they cover; special tokens (EOS) show their own name.
    if token_id in set(tokenizer.all_special_ids):
        return tokenizer.convert_ids_to_tokens(int(token_id))
    return span_text


def format_table(explanation: dict) -> str:
    """Fixed-width table: one row per token (token text shown with repr so spaces are visible)."""
    labels = [repr(row["token"]) for row in explanation["tokens"]]
    width = max([len("token")] + [len(label) for label in labels])
    lines = [
        f"caption: {explanation['text']!r}",
        f"sim = {explanation['sim']:g}   ref = {explanation['ref']:g}   "
        f"noeos = {explanation['noeos']}",
        f"{'k':>3}  {'token':<{width}}  {'bad':>3}  {'repeat':>6}  {'noeos':>5}  {'R':>9}",
    ]
    for k, (label, row) in enumerate(zip(labels, explanation["tokens"])):
        lines.append(
            f"{k:>3}  {label:<{width}}  {row['bad']:>3}  {row['repeat']:>6}  "
            f"{row['noeos']:>5}  {row['R']:>9.4f}"
        )
    return "\n".join(lines)


def load_tokenizer(directory: str) -> Any:
    """AutoTokenizer from a local folder; errors name the folder."""
    if not os.path.isdir(directory):
        raise ValueError(f"--tokenizer {directory!r} is not a directory")
    from transformers import AutoTokenizer  # heavy import, only when the command runs

    try:
        return AutoTokenizer.from_pretrained(directory)
    except Exception as error:  # transformers raises many kinds; all mean "not a tokenizer dir"
        raise ValueError(f"--tokenizer {directory!r}: cannot load a tokenizer: {error}") from error


def add_explain_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="per-token penalties and returns of one caption (the paper's Table 1)"
    )
    parser.add_argument("--tokenizer", required=True, help="folder of the captioner's tokenizer")
    parser.add_argument("--text", required=True, help="the caption")
    parser.add_argument("--sim", type=float, default=0.0, help="similarity term sim(image, text)")
    parser.add_argument("--ref", type=float, default=0.0, help="reference term ref(text)")
    parser.add_argument(
        "--noeos", action="store_true", help="the caption hit the length limit (no EOS)"
    )
    parser.add_argument("--bad-phrases", help="bad phrase list file (replaces the shipped one)")
    parser.add_argument("--exempt-words", help="exempt word list file (replaces the shipped one)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=functools.partial(run_explain, parser=parser))


def run_explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the table (or JSON); input errors exit with status 2 through `parser.error`."""
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        rules = PenaltyRules.from_files(args.bad_phrases, args.exempt_words)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    explanation = explain_caption(
        tokenizer, args.text, rules=rules, sim=args.sim, ref=args.ref, noeos=args.noeos
    )
    if args.json:
        print(json.dumps(explanation, ensure_ascii=False, indent=1))
    else:
        print(format_table(explanation))
    return 0
