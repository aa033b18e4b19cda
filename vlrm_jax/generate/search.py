"""Greedy search, sampling and beam search as `lax.while_loop`s over state dataclasses (pytrees).

Everything runs inside one `jax.jit` per (model, config, shapes); the KV cache lives in the loop
state and is updated in place. Outputs have a fixed width of max_new_tokens, with the pad id after
a sequence's end (transformers trims the common padding; the tokens are the same).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

import vlrm_jax.generate.processors as proc
from vlrm_jax import ops
from vlrm_jax.generate import sampling
from vlrm_jax.generate.config import GenerationConfig
from vlrm_jax.generate.decode import beams_step, prefill, prompt_ids, prompt_length, step, unrolled_layers
from vlrm_jax.models.blip2 import Blip2Captioner
from vlrm_jax.models.opt import KVCache

SENTINEL = -1.0e9  # transformers' "impossible" score in beam search
# Beam search grows its cache every this many new tokens (`_phase_ends`): at 60 tokens and 5 beams
# its steps read a third fewer cache slots than with one full-size cache (prompt included), for 4
# compiled loop bodies instead of 1.
PHASE_TOKENS = 16


class Rollout(NamedTuple):
    """What `generate` returns. tokens (R, N) with R = B * num_return_sequences, N = max_new_tokens;
    mask (R, N): 1 for generated tokens up to and including EOS; logprobs (R, N): log-probability of
    each chosen token under the model's unprocessed distribution (0 where mask is 0);
    finished (R,): ended with EOS (False = hit the length limit); scores: beam scores (R,) or None;
    support (R, N, S) with GenerationConfig.support_size = S: the ids each step's top-k kept among
    its S best scores, -1 for the others and after the end, else None."""

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    finished: jax.Array
    scores: jax.Array | None = None
    support: jax.Array | None = None


@struct.dataclass
class SampleState:
    """The greedy / sampling loop's state: step k, the next token's logits, the KV cache, prompt
    ids then tokens so far (history), and per row finished, log-probabilities, mask and the
    sampling support (R, N, support_size)."""

    k: jax.Array
    logits: jax.Array
    cache: KVCache
    history: jax.Array
    finished: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    support: jax.Array


@struct.dataclass
class BeamState:
    """The beam loop's state, (batch, beams, ...) throughout: running beams with their scores and
    per-token log-probabilities, the finished hypotheses (sequences, beam_scores, seq_logp,
    finished), which batch rows are still open, whether the last step stopped every beam, and
    each running beam's lineage (batch, beams, max_new_tokens): the beam slot that holds the cache
    entry of its j-th token (`decode.beams_step`). The cache has one row per image."""

    cur: jax.Array
    logits: jax.Array
    cache: KVCache
    running: jax.Array
    running_scores: jax.Array
    running_logp: jax.Array
    sequences: jax.Array
    beam_scores: jax.Array
    seq_logp: jax.Array
    finished: jax.Array
    open_: jax.Array
    all_hit: jax.Array
    lineage: jax.Array


def _processed(cfg: GenerationConfig, scores, history, cur_len, step_index, eos: int):
    scores = proc.ban_repeated_ngrams(scores, history, cur_len, cfg.no_repeat_ngram_size)
    if eos < 0:  # ignore_eos: nothing to suppress
        return scores
    return proc.suppress_eos(scores, step_index, cfg.min_new_tokens, eos)


def _eos(model: Blip2Captioner, cfg: GenerationConfig) -> int:
    return -1 if cfg.ignore_eos else model.cfg.text.eos_token_id


def _greedy_or_sample(model: Blip2Captioner, cfg: GenerationConfig, soft_prompt, key):
    eos, pad = _eos(model, cfg), model.cfg.text.pad_token_id
    n = cfg.max_new_tokens
    if cfg.do_sample and cfg.num_return_sequences > 1:
        soft_prompt = jnp.repeat(soft_prompt, cfg.num_return_sequences, axis=0)
    rows = soft_prompt.shape[0]
    p = prompt_length(model)
    layers = unrolled_layers(model)
    logits, cache = prefill(model, soft_prompt, n, layers)
    history = jnp.concatenate([prompt_ids(model, rows), jnp.full((rows, n), pad, jnp.int32)], axis=1)
    init = SampleState(
        k=jnp.int32(0), logits=logits, cache=cache, history=history,
        finished=jnp.zeros((rows,), bool), logprobs=jnp.zeros((rows, n), jnp.float32),
        mask=jnp.zeros((rows, n), jnp.int32), support=jnp.full((rows, n, cfg.support_size), -1, jnp.int32),
    )

    def cond(s: SampleState):
        return (s.k < n) & ~jnp.all(s.finished)

    def body(s: SampleState) -> SampleState:
        k = s.k
        scores = _processed(cfg, s.logits, s.history, p + k, k, eos)
        live = ~s.finished
        support = s.support
        if cfg.do_sample:
            tempered = proc.temperature(scores, cfg.temperature)
            scores = proc.top_p(proc.top_k(tempered, cfg.top_k), cfg.top_p)
            token = sampling.categorical(jax.random.fold_in(key, k), scores)
            if cfg.support_size:
                best, ids = sampling.row_top_k(tempered, cfg.support_size)
                kept = (best >= sampling.kth_largest(tempered, cfg.top_k)) & live[:, None]
                support = support.at[:, k].set(jnp.where(kept, ids, -1))
        else:
            token = jnp.argmax(scores, axis=-1)
        token = jnp.where(live, token, pad).astype(jnp.int32)
        logp = ops.token_logprob(s.logits, token)
        logits, cache = step(model, s.cache, token, p + k, layers)
        return SampleState(
            k=k + 1, logits=logits, cache=cache,
            history=s.history.at[:, p + k].set(token),
            finished=s.finished | (token == eos),
            logprobs=s.logprobs.at[:, k].set(jnp.where(live, logp, 0.0)),
            mask=s.mask.at[:, k].set(live.astype(jnp.int32)), support=support,
        )

    s = jax.lax.while_loop(cond, body, init)
    return Rollout(s.history[:, p:], s.mask, s.logprobs, s.finished,
                   support=s.support if cfg.support_size else None)


def _penalty_table(cfg: GenerationConfig, longest: int) -> jnp.ndarray:
    """length ** length_penalty for every length, computed in float64 like Python does and then
    rounded to fp32, so normalised beam scores equal transformers' bit for bit."""
    lengths = np.arange(longest + 2, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return jnp.asarray((lengths ** cfg.length_penalty).astype(np.float32))


def _gather(x, idx):
    """x (B, K, ...) gathered along axis 1 by idx (B, J)."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _beam_search(model: Blip2Captioner, cfg: GenerationConfig, soft_prompt):
    """transformers' vectorised beam search (`GenerationMixin._beam_search`), step for step."""
    eos, pad = _eos(model, cfg), model.cfg.text.pad_token_id
    b, nb, n = soft_prompt.shape[0], cfg.num_beams, cfg.max_new_tokens
    keep = 2 * nb  # max(2, 1 + number of EOS ids) * num_beams, with one EOS id
    p = prompt_length(model)
    max_length = p + n
    penalty = _penalty_table(cfg, n)
    top_mask = jnp.arange(keep) < nb

    layers = unrolled_layers(model)
    # One cache row per image, not per beam: the prompt once, then room for every beam's tokens
    # (see `decode.beams_step`), so a beam taking another's history never copies a cache.
    ends = _phase_ends(n - 1)  # the cache holds the fed tokens, all but the last
    logits, cache = prefill(model, soft_prompt, ends[0] * nb, layers)
    logits = jnp.repeat(logits, nb, axis=0)  # every beam starts from the same prompt
    seq = jnp.concatenate([prompt_ids(model, b * nb), jnp.full((b * nb, n), pad, jnp.int32)], axis=1)
    seq = seq.reshape(b, nb, max_length)
    init = BeamState(
        cur=jnp.int32(p), logits=logits, cache=cache,
        running=seq, running_scores=jnp.zeros((b, nb), jnp.float32).at[:, 1:].set(SENTINEL),
        running_logp=jnp.zeros((b, nb, n), jnp.float32),
        sequences=seq, beam_scores=jnp.full((b, nb), SENTINEL, jnp.float32),
        seq_logp=jnp.zeros((b, nb, n), jnp.float32),
        finished=jnp.zeros((b, nb), bool), open_=jnp.ones((b, 1), bool),
        all_hit=jnp.bool_(False), lineage=jnp.zeros((b, nb, n), jnp.int32),
    )

    def cond(s: BeamState):
        open_beam = ~(jnp.all(s.finished) & (cfg.early_stopping is True))
        return jnp.any(s.open_) & open_beam & ~s.all_hit & (s.cur < max_length)

    def choose(s: BeamState) -> BeamState:
        """One step's choice of tokens from s.logits, transformers' bookkeeping included; the
        cache and logits are left as they are (see `body`)."""
        cur = s.cur
        k = cur - p
        # transformers takes the top 2 * num_beams of (log_softmax + processors + beam score) over
        # every beam's whole vocabulary. Within a beam that order is the order of its processed
        # logits (a shift by the beam's own constant), so each beam's best `keep` logits hold the
        # winners; only those are turned into log-probabilities, with log_softmax's own arithmetic
        # ((x - max) - log sum exp), and ranked across beams. Ties keep transformers' order
        # (beam, then token id), and no (rows, vocab) log-probability array is written.
        shift = jnp.max(s.logits, axis=-1, keepdims=True)
        lse = jnp.log(jnp.sum(jnp.exp(s.logits - shift), axis=-1, keepdims=True))
        processed = _processed(cfg, s.logits, s.running.reshape(b * nb, -1), cur, k, eos)
        row_best, row_ids = sampling.row_top_k(processed, keep)  # (B * nb, keep)
        row_logp = ((row_best - shift) - lse).reshape(b, nb, keep)
        row_raw = ((jnp.take_along_axis(s.logits, row_ids, axis=1) - shift) - lse).reshape(b, nb * keep)
        total = (row_logp + s.running_scores[:, :, None]).reshape(b, nb * keep)
        top_logp, top_idx = jax.lax.top_k(total, keep)
        parent = top_idx // keep
        token = jnp.take_along_axis(row_ids.reshape(b, nb * keep), top_idx, axis=1).astype(jnp.int32)
        token_raw = jnp.take_along_axis(row_raw, top_idx, axis=1)
        cand = _gather(s.running, parent).at[:, :, cur].set(token)
        cand_logp = _gather(s.running_logp, parent).at[:, :, k].set(token_raw)
        hits = (token == eos) | (cur + 1 >= max_length)

        # the best candidates that did not stop keep running
        run_scores = top_logp + hits.astype(jnp.float32) * SENTINEL
        nxt = jax.lax.top_k(run_scores, nb)[1]
        running, running_scores = _gather(cand, nxt), _gather(run_scores, nxt)
        running_logp, running_parent = _gather(cand_logp, nxt), _gather(parent, nxt)

        # candidates among the top num_beams that stopped compete for the finished slots
        just = hits & top_mask[None, :]
        norm = top_logp / penalty[k + 1]
        full = jnp.all(s.finished, axis=-1, keepdims=True) & (cfg.early_stopping is True)
        norm = norm + full.astype(jnp.float32) * SENTINEL
        norm = norm + (~s.open_).astype(jnp.float32) * SENTINEL
        norm = norm + (~just).astype(jnp.float32) * SENTINEL
        merged_scores = jnp.concatenate([s.beam_scores, norm], axis=1)
        best = jax.lax.top_k(merged_scores, nb)[1]
        sequences = _gather(jnp.concatenate([s.sequences, cand], axis=1), best)
        seq_logp = _gather(jnp.concatenate([s.seq_logp, cand_logp], axis=1), best)
        beam_scores = _gather(merged_scores, best)
        finished = _gather(jnp.concatenate([s.finished, just], axis=1), best)

        # each surviving beam inherits its parent's lineage; its new token goes to its own slot
        lineage = _gather(s.lineage, running_parent).at[:, :, k].set(jnp.arange(nb, dtype=jnp.int32))

        # early-stopping heuristic on the new length
        cur = cur + 1
        best_len = (max_length - p) if (cfg.early_stopping == "never" and cfg.length_penalty > 0) else cur - p
        best_running = running_scores[:, :1] / penalty[best_len]
        worst = jnp.where(finished, jnp.min(beam_scores, axis=1, keepdims=True), SENTINEL)
        open_ = s.open_ & jnp.any(best_running > worst, axis=-1, keepdims=True)
        return BeamState(cur=cur, logits=s.logits, cache=s.cache, running=running, running_scores=running_scores,
                         running_logp=running_logp, sequences=sequences, beam_scores=beam_scores,
                         seq_logp=seq_logp, finished=finished, open_=open_, all_hit=jnp.all(hits),
                         lineage=lineage)

    def body(s: BeamState) -> BeamState:
        """choose, then feed the chosen tokens for the next step's logits."""
        s = choose(s)
        k = s.cur - 1 - p
        logits, cache = beams_step(model, s.cache, s.running[:, :, s.cur - 1], k, s.lineage, layers)
        return s.replace(logits=logits, cache=cache)

    # The loop runs in phases whose caches end where the phase's tokens end: every step reads its
    # whole cache, so a cache sized for the last token from the start reads twice what it needs.
    # The last token is chosen without feeding it (its logits would never be read).
    s = init
    for end in ends:
        s = s.replace(cache=s.cache.grown(p + end * nb))
        s = jax.lax.while_loop(lambda s, end=end: cond(s) & (s.cur < p + end), body, s)
    cache = s.cache
    s = jax.lax.cond(cond(s), choose, lambda s: s, s.replace(cache=None)).replace(cache=cache)
    r = cfg.num_return_sequences
    tokens = s.sequences[:, :r, p:].reshape(b * r, n)
    mask = _valid_mask(tokens, eos)
    logprobs = jnp.where(mask > 0, s.seq_logp[:, :r].reshape(b * r, n), 0.0)
    ended = jnp.any((tokens == eos) & (mask > 0), axis=1)
    return Rollout(tokens, mask, logprobs, ended, s.beam_scores[:, :r].reshape(b * r))


def _phase_ends(n: int) -> list[int]:
    """Where the beam loop's cache phases end, in fed tokens: every PHASE_TOKENS, and at n."""
    return list(range(PHASE_TOKENS, n, PHASE_TOKENS)) + [n]


def _valid_mask(tokens, eos: int):
    """1 up to and including the first EOS, 0 after it."""
    is_eos = (tokens == eos).astype(jnp.int32)
    after = jnp.cumsum(is_eos, axis=1) - is_eos  # EOS seen strictly before this position
    return (after == 0).astype(jnp.int32)


def generate_from_vision_states(model: Blip2Captioner, cfg: GenerationConfig, vision_states, key=None) -> Rollout:
    """Decode from vision states (B, N, Dv), the ViT output after its final LayerNorm: a caller
    that already ran the ViT (or a trunk shared with the ITM, then `vision_model.head`) passes them."""
    soft_prompt = model.soft_prompt(vision_states)
    if cfg.num_beams > 1:
        return _beam_search(model, cfg, soft_prompt)
    if cfg.do_sample and key is None:
        raise ValueError("sampling needs a PRNG key")
    return _greedy_or_sample(model, cfg, soft_prompt, key)


@functools.partial(jax.jit, static_argnums=(0, 1))
def generate_jit(graphdef, cfg: GenerationConfig, state, pixel_values, key) -> Rollout:
    """The jitted entry point on a split module (graphdef static, state traced)."""
    model = nnx.merge(graphdef, state)
    return generate_from_vision_states(model, cfg, model.vision_model(pixel_values), key)


def generate(model: Blip2Captioner, pixel_values, cfg: GenerationConfig = GenerationConfig(), key=None) -> Rollout:
    """Captions for pixel_values (B, H, W, 3). Jitted once per (model structure, cfg, shapes);
    inputs sharded over a mesh stay sharded (the loop is batch-parallel)."""
    graphdef, state = nnx.split(model)
    if key is None:
        key = jax.random.key(0)
    return generate_jit(graphdef, cfg, state, pixel_values, key)
