"""The A2C training step: rollout -> reward -> value pass -> global advantage statistics -> policy
pass -> one optimizer step, as jitted functions of (TrainState, FrozenParams, batch).

    trainer = A2CStep(cfg, captioner, value_net, scorer, rollout_cfg, itm=..., ref_lm=..., mesh=...)
    state = trainer.init_state(seed)
    state, metrics, samples = trainer.step(state, trainer.frozen, batch)   # the whole step
    exp, metrics, samples = trainer.experience(state, trainer.frozen, batch)  # rollout and reward
    state, metrics = trainer.update(state, trainer.frozen, exp)        # the update on given returns
    grads_p, grads_v, metrics = trainer.gradients(state, trainer.frozen, exp)  # before clipping

`batch` is a dict of arrays with a leading batch axis: `pixels` (the captioner's, channels last),
optionally `itm_pixels` (when the ITM trunk is not shared) and `clip_pixels` (VLRM-RS). The
trainable state is donated; frozen weights are arguments, never constants of the program.
"""
from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from vlrm_jax import sharding as shd
from vlrm_jax import sharing
from vlrm_jax.generate.config import GenerationConfig
from vlrm_jax.generate.search import generate_from_vision_states
from vlrm_jax.models.blip2 import Blip2Captioner
from vlrm_jax.models.opt import causal_mask, position_ids
from vlrm_jax.models.value import ValueNetwork
from vlrm_jax.rewards.reward import RewardModels
from vlrm_jax.rl import estimators, losses, optim
from vlrm_jax.rl.config import A2CConfig
from vlrm_jax.rl.state import Experience, FrozenParams, TrainState
from vlrm_jax.rl.trainable import split_trainable, trainable_names


def caption_inputs(captioner: Blip2Captioner, soft_prompt, tokens, mask):
    """[soft prompt ; BOS ; tokens[:-1]] and its (R, Q + T) mask: position Q + k predicts token k,
    exactly as the rollout's decoder saw it (the policy's p_k and the value V_k of the state
    before token k both read that position)."""
    r = tokens.shape[0]
    bos = jnp.full((r, 1), captioner.cfg.text.bos_token_id, tokens.dtype)
    ids = jnp.concatenate([bos, tokens[:, :-1]], axis=1)
    text_mask = jnp.concatenate([jnp.ones((r, 1), jnp.int32), mask[:, :-1].astype(jnp.int32)], axis=1)
    return captioner.prompt_inputs(soft_prompt, ids, text_mask)


def _check_rollout(cfg: A2CConfig, rollout: GenerationConfig, scorer) -> None:
    if not rollout.do_sample or rollout.num_beams != 1 or rollout.num_return_sequences != 1:
        raise ValueError("rollout generation must sample one caption per row (do_sample=True, num_beams=1, "
                         "num_return_sequences=1; grouped estimators repeat the images themselves)")
    if cfg.prob == "sampled" and (rollout.no_repeat_ngram_size or rollout.min_new_tokens or rollout.top_p < 1):
        raise ValueError("a2c prob='sampled' takes p_k under temperature and top-k only; the rollout also uses "
                         "no_repeat_ngram_size / min_new_tokens / top_p, so p_k would not be the sampling "
                         "distribution: drop those or use prob='tempered'")
    limit = getattr(scorer, "max_new_tokens", rollout.max_new_tokens)
    if limit != rollout.max_new_tokens:
        raise ValueError(f"the reward's max_new_tokens ({limit}) differs from the rollout's ({rollout.max_new_tokens})")


# Support ids kept per step: top_k plus room for scores tied at the k-th (bf16 logits tie often).
SUPPORT_SLACK = 2


def uses_support(cfg: A2CConfig, rollout: GenerationConfig, vocab_size: int) -> bool:
    """Whether the policy pass scores p_k on the rollout's recorded top-k support."""
    return (cfg.support_only and cfg.prob == "sampled" and rollout.top_k is not None
            and rollout.top_k < vocab_size)


class A2CStep:
    def __init__(self, cfg: A2CConfig, captioner: Blip2Captioner, value_net: ValueNetwork, scorer,
                 rollout: GenerationConfig, *, itm=None, ref_lm=None, clip=None, mesh=None, rules=shd.DEFAULT_RULES,
                 share_trunk: bool | None = None, share_ref_lm: bool | None = None):
        """share_trunk / share_ref_lm: whether the ITM's ViT trunk is the captioner's and the
        reference LM the captioner's OPT; None compares the weights (concrete models only).
        Abstract models (`nnx.eval_shape`, ShapeDtypeStruct leaves) build a step that can be
        lowered and compiled (`abstract_inputs`) but not run; they need both decisions given."""
        _check_rollout(cfg, rollout, scorer)
        self.abstract = is_abstract(captioner)
        if uses_support(cfg, rollout, captioner.cfg.text.vocab_size):
            rollout = dataclasses.replace(rollout, support_size=SUPPORT_SLACK * rollout.top_k)
        needs = getattr(scorer, "needs", ())
        for name, model in (("itm", itm), ("ref_lm", ref_lm), ("clip", clip)):
            if name in needs and model is None:
                raise ValueError(f"the reward needs the {name} model, which was not given")
        self.cfg, self.rollout_cfg, self.scorer, self.mesh, self.rules = cfg, rollout, scorer, mesh, tuple(rules)
        self._pin_rules = self.rules
        # the batch's pixel arrays (as rl/data's streams make them) and their sides
        side = captioner.cfg.vision.image_size
        self.image_sizes = {"pixels": (side, side)}
        if clip is not None:
            self.image_sizes["clip_pixels"] = tuple(clip.cfg.vision.image_size)  # (height, width)
        for model in (captioner, value_net, itm, ref_lm, clip):  # on the devices once, not per call
            if model is not None:
                _place(model, mesh, rules)

        self.policy_graph, policy, policy_frozen = split_trainable(captioner, cfg.policy_trainable, "policy")
        self.value_graph, value, value_frozen = split_trainable(value_net, cfg.value_trainable, "value")
        self._initial = (policy, value)
        trains_lm = any(name.startswith("language_model/") for name in trainable_names(policy))

        # Frozen work done once: decided by comparing weights unless the caller says.
        self.vision_report = None if itm is None else _decide(
            share_trunk, lambda: sharing.vision_trunk_shared(captioner, itm), self.abstract, "share_trunk")
        self.vision_shared = bool(self.vision_report and self.vision_report.shared)
        self.ref_report = None if ref_lm is None else _decide(
            share_ref_lm, lambda: sharing.reference_lm_shared(captioner, ref_lm), self.abstract, "share_ref_lm")
        self.ref_shared = bool(self.ref_report and self.ref_report.shared) and not trains_lm
        if self.vision_shared and not self.abstract:  # the ITM's own trunk copy is freed
            _alias_trunk(itm, captioner)
        self.itm_graph, itm_state = nnx.split(itm) if itm is not None else (None, None)
        if self.vision_shared:  # the trunk is passed once, as the captioner's: the ITM keeps the rest
            itm_state = _without_trunk(itm_state)
        self.ref_graph, ref_state = nnx.split(ref_lm) if ref_lm is not None and not self.ref_shared else (None, None)
        self.clip_graph, clip_state = nnx.split(clip) if clip is not None else (None, None)
        self.frozen = FrozenParams(policy_frozen, value_frozen, itm_state, ref_state, clip_state)

        self.tx = optim.adam(cfg)
        self.layout = self._state_layout()
        self.step = jax.jit(self._step, donate_argnums=0)
        self.experience = jax.jit(self._experience)
        self.update = jax.jit(self._update, donate_argnums=0)
        self.gradients = jax.jit(self._gradients)
        self.values = jax.jit(lambda state, frozen, exp: self._value_pass(state, frozen, exp)[2])

    # ------------------------------------------------------------------------------------------
    def _fresh_state(self, initial, seed) -> TrainState:
        policy, value = jax.tree.map(jnp.copy, initial)
        return TrainState(
            step=jnp.int32(0), key=jax.random.PRNGKey(seed), policy=policy, value=value,
            policy_opt=self.tx.init(policy), value_opt=self.tx.init(value),
            skipped=jnp.int32(0), skipped_in_row=jnp.int32(0),
        )

    def init_state(self, seed: int) -> TrainState:
        state = self._fresh_state(self._initial, seed)
        if self.mesh is None:
            # committed to the device, as the step's outputs are: an uncommitted input is another
            # cache key, and the second step would compile the whole program again
            return jax.device_put(state, jax.devices()[0])
        # a checkpoint restored onto this template lands as the rules lay out this mesh
        return jax.tree.map(shd.put, state, self.layout)

    def abstract_inputs(self, rows: int) -> tuple[TrainState, FrozenParams, dict]:
        """(state, frozen, batch) as ShapeDtypeStructs with their shardings, for
        `self.step.lower(...)`: the state laid out as `init_state` lays it, a batch of `rows`
        images split over the batch axes as `shard_batch` splits it."""
        if self.mesh is None:
            raise ValueError("abstract inputs need the step's mesh")
        shapes = jax.eval_shape(self._fresh_state, self._initial, 0)
        state = jax.tree.map(lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
                             shapes, self.layout)
        batch = {name: jax.ShapeDtypeStruct((rows, *size, 3), jnp.float32,
                                            sharding=shd.batch_sharding(self.mesh, 4))
                 for name, size in self.image_sizes.items()}
        return state, self.frozen, batch  # frozen: placed on the mesh as shapes already

    def _state_layout(self) -> TrainState | None:
        """Where every leaf of the training state lives on the mesh: parameters and their Adam
        moments as the rules place the parameters, counters and the key replicated. The update
        pins its output to it; left to itself XLA may hand back a parameter split differently
        (a LayerNorm scale over fsdp, say), and the layout would drift from step to step."""
        if self.mesh is None:
            return None
        replicated = NamedSharding(self.mesh, P())

        def params_and_moments(params):
            where = jax.tree.map(lambda x: x.sharding, params)
            moments = optax.tree_map_params(self.tx, lambda _, s: s, jax.eval_shape(self.tx.init, params), where,
                                            transform_non_params=lambda _: replicated)
            return where, moments

        (policy, policy_opt), (value, value_opt) = map(params_and_moments, self._initial)
        return TrainState(step=replicated, key=replicated, policy=policy, value=value, policy_opt=policy_opt,
                          value_opt=value_opt, skipped=replicated, skipped_in_row=replicated)

    def policy_module(self, state: TrainState) -> Blip2Captioner:
        """The captioner with the state's policy parameters (for evaluation and export)."""
        return nnx.merge(self.policy_graph, state.policy, self.frozen.policy)

    def shard_batch(self, batch: dict, global_rows: int | None = None) -> dict:
        """Put a host batch on the mesh's batch axes (or on the one device). With several
        processes, each passes its own rows (`process_rows`) and the global row count."""
        if self.mesh is None:
            return {k: jax.device_put(v, jax.devices()[0]) for k, v in batch.items()}
        return {k: shd.shard_batch(v, self.mesh, global_rows) for k, v in batch.items()}

    def process_rows(self, global_rows: int) -> slice:
        """The rows of a global batch this process feeds (all of them with one process)."""
        if self.mesh is None:
            return slice(0, global_rows)
        return shd.process_rows(self.mesh, global_rows)

    def _pin(self, x, *axes):
        """Pin a main activation's layout (batch axes first) by the logical rules."""
        return shd.constrain(x, axes + (None,) * (x.ndim - len(axes)), self.mesh, self._pin_rules)

    @contextlib.contextmanager
    def _inside_group(self):
        """While tracing one data-parallel group's rows (`_scan_gradients`): the group axis holds
        `data`, so the rows within a group split over `fsdp` alone."""
        outer = self._pin_rules
        self._pin_rules = (("batch", "fsdp"),) + self.rules
        try:
            yield
        finally:
            self._pin_rules = outer

    # ------------------------------------------------------------------------------------------
    def _captioner(self, policy, frozen: FrozenParams) -> Blip2Captioner:
        return nnx.merge(self.policy_graph, policy, frozen.policy)

    def _reward_models(self, captioner, frozen: FrozenParams) -> RewardModels:
        ref = captioner.language_model if self.ref_shared else (
            nnx.merge(self.ref_graph, frozen.ref_lm) if frozen.ref_lm is not None else None)
        itm = None
        if frozen.itm is not None:
            trunk = (_trunk_only(frozen.policy),) if self.vision_shared else ()
            itm = nnx.merge(self.itm_graph, frozen.itm, *trunk)
        clip = nnx.merge(self.clip_graph, frozen.clip) if frozen.clip is not None else None
        return RewardModels(itm=itm, ref_lm=ref, clip=clip)

    def _vision(self, captioner, models: RewardModels, batch):
        pixels = batch["pixels"]
        if self.vision_shared:
            trunk = captioner.vision_model.trunk(pixels)
            states = captioner.vision_model.post_layernorm(trunk)
            itm_states = models.itm.vision_model.post_layernorm(trunk)
        else:
            states = captioner.vision_model(pixels)
            itm_states = models.itm.vision_model(batch.get("itm_pixels", pixels)) if models.itm is not None else None
        states = self._pin(states, "batch", "length", "act_embed")
        itm_states = None if itm_states is None else self._pin(itm_states, "batch", "length", "act_embed")
        return jax.lax.stop_gradient(states), jax.lax.stop_gradient(itm_states)

    def _experience(self, state: TrainState, frozen: FrozenParams, batch: dict):
        """Rollout and reward (no gradients): an `Experience`, the reward's metrics and per-caption
        samples (tokens, whole reward, each reward part per caption) for the loop's tables."""
        cap = self._captioner(state.policy, frozen)
        models = self._reward_models(cap, frozen)
        states, itm_states = self._vision(cap, models, batch)
        k = self.cfg.samples_per_image
        if k > 1:  # grouped estimators: k captions of every image, rows i*k .. i*k+k-1 for image i
            repeat = lambda x: None if x is None else jnp.repeat(x, k, axis=0)  # noqa: E731
            states, itm_states = repeat(states), repeat(itm_states)
            batch = {name: repeat(v) for name, v in batch.items()}
        key = jax.random.fold_in(state.key, state.step)
        rollout = generate_from_vision_states(cap, self.rollout_cfg, states, key)
        rollout = rollout._replace(tokens=self._pin(rollout.tokens, "batch", "length"),
                                   mask=self._pin(rollout.mask, "batch", "length"))
        out = self.scorer(models, rollout.tokens, itm_states, batch, self.mesh)
        returns = jnp.asarray(out.returns, jnp.float32)
        metrics = {f"reward/{name}": v for name, v in out.stats.items()}
        metrics["reward/mean"] = jnp.mean(returns[:, 0])  # a caption's whole reward is R at its first token
        baseline, scale, kind = None, None, self.cfg.kind
        if kind.baseline is not None:
            greedy = None
            if kind.greedy_rollout:
                greedy_cfg = dataclasses.replace(self.rollout_cfg, do_sample=False, temperature=1.0, top_k=None,
                                                 support_size=0)
                tokens = generate_from_vision_states(cap, greedy_cfg, states).tokens
                greedy = jnp.asarray(self.scorer(models, tokens, itm_states, batch, self.mesh).returns[:, 0], jnp.float32)
            baseline, scale = kind.baseline(returns[:, 0], k, greedy, self.cfg.advantage_eps)
            metrics["baseline/mean"] = jnp.mean(baseline)
        valid = rollout.mask.astype(jnp.float32)
        metrics["caption/length"] = jnp.mean(jnp.sum(valid, axis=1))
        metrics["caption/eos_rate"] = jnp.mean(rollout.finished.astype(jnp.float32))
        support = None if rollout.support is None else self._pin(rollout.support, "batch", "length")
        exp = Experience(states, jax.lax.stop_gradient(cap.soft_prompt(states)), rollout.tokens,
                         rollout.mask.astype(jnp.int32), returns, baseline, support, scale)
        samples = {"tokens": rollout.tokens, "reward": returns[:, 0]}
        for name, part in out.parts.items():  # per caption: scalars as they are, token parts summed
            if name != "mask":
                samples[name] = part if part.ndim == 1 else jnp.sum(part, axis=1)
        return exp, metrics, samples

    # ------------------------------------------------------------------------------------------
    def _micro(self, x):
        """(R, ...) -> (M, R / M, ...): micro-batch j holds rows j, j + M, ..., so every device's
        shard of the batch contributes to every micro-batch (no device idles in a scan step)."""
        m = self.cfg.micro_batches
        if x.shape[0] % m:
            raise ValueError(f"{x.shape[0]} rollout rows do not split into {m} micro-batches")
        y = x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
        if self.mesh is not None:
            n = shd.batch_devices(self.mesh)
            if y.shape[1] % n:
                raise ValueError(f"a micro-batch of {y.shape[1]} rows does not divide over {n} devices on the "
                                 f"batch axes {shd.batch_axes(self.mesh)}")
            y = self._pin(y, None, "batch")
        return y

    def _unmicro(self, y):
        return y.swapaxes(0, 1).reshape(-1, *y.shape[2:])

    def _groups(self) -> int:
        """Data-parallel groups whose gradients are summed apart until the end of the scan (1:
        XLA reduces over the devices wherever the gradient arises)."""
        if self.mesh is None or self.cfg.grad_reduce != "step":
            return 1
        return self.mesh.shape.get("data", 1)

    def _scan_gradients(self, grad_fn, params, layout, xs, extra, fold):
        """Sums over the micro-batches `xs` ((M, R/M, ...) each) of `grad_fn(params, *mb) ->
        ((loss, aux), grads)`; `fold(extra, loss, aux) -> (extra, output per micro-batch)`.

        With grad_reduce="step" on a mesh with a `data` axis, the rows of each `data` index form
        a group: grad_fn is vmapped over the groups (the group axis on `data`), so each group
        adds up its own rows' gradients over all micro-batches (laid out as the parameters are,
        over fsdp and tensor), and the groups' sums meet once, after the scan. Otherwise XLA
        all-reduces each micro-batch's gradient over `data` where it arises (inside the layer
        loop, for the LoRA adapters). The same sums either way, added in another order."""
        g = self._groups()
        if g == 1:
            def body(carry, mb):
                (loss, aux), grads = grad_fn(params, *mb)
                extra, out = fold(carry[1], loss, aux)
                return (jax.tree.map(jnp.add, carry[0], grads), extra), out

            (grads, extra), outs = jax.lax.scan(body, (jax.tree.map(jnp.zeros_like, params), extra), xs)
            return grads, extra, outs
        grouped = jax.vmap(grad_fn, in_axes=(None,) + (0,) * len(xs), spmd_axis_name="data")

        def split(x):  # (M, R/M, ...) -> (M, G, R/M/G, ...): group j is what data index j holds
            y = x.reshape(x.shape[0], g, x.shape[1] // g, *x.shape[2:])
            rows = "fsdp" if "fsdp" in self.mesh.shape else None
            return jax.lax.with_sharding_constraint(y, NamedSharding(self.mesh, P(None, "data", rows)))

        def merge(x):  # a group's per-row output back into rows; its scalars summed
            return jnp.sum(x, axis=0) if x.ndim == 1 else x.reshape(-1, *x.shape[2:])

        def body(carry, mb):
            with self._inside_group():
                (loss, aux), grads = grouped(params, *mb)
            extra, out = fold(carry[1], jnp.sum(loss), jax.tree.map(merge, aux))
            return (jax.tree.map(jnp.add, carry[0], grads), extra), out

        def zeros(p, where):
            return jax.lax.with_sharding_constraint(jnp.zeros((g, *p.shape), p.dtype),
                                                    NamedSharding(self.mesh, P("data", *where.spec)))

        start = (jax.tree.map(zeros, params, layout), extra)
        (grads, extra), outs = jax.lax.scan(body, start, tuple(split(x) for x in xs))
        return jax.tree.map(lambda x: jnp.sum(x, axis=0), grads), extra, outs

    def _values(self, value, frozen: FrozenParams, lm, soft_prompt, tokens, mask, captioner):
        net = nnx.merge(self.value_graph, value, frozen.value)
        embeds, full_mask = caption_inputs(captioner, soft_prompt, tokens, mask)
        values = net(lm, self._pin(embeds, "batch", "length", "act_embed"), full_mask, remat=self.cfg.remat)
        return values[:, soft_prompt.shape[1]:]

    def _value_pass(self, state: TrainState, frozen: FrozenParams, exp: Experience):
        """Gradient sums of sum_k (R - V)^2 over micro-batches, and V for every row."""
        cap = self._captioner(state.policy, frozen)

        def loss(value, soft, tokens, mask, returns):
            v = self._values(value, frozen, cap.language_model, soft, tokens, mask, cap)
            return losses.value_loss_sum(returns, v, mask), v

        grad_fn = jax.value_and_grad(loss, has_aux=True)
        xs = tuple(self._micro(x) for x in (exp.soft_prompt, exp.tokens, exp.mask, exp.returns))
        layout = self.layout.value if self.layout is not None else None
        grads, loss_sum, values = self._scan_gradients(grad_fn, state.value, layout, xs, jnp.float32(0),
                                                       lambda total, l, v: (total + l, v))
        return grads, loss_sum, jax.lax.stop_gradient(self._unmicro(values))

    def _policy_pass(self, state: TrainState, frozen: FrozenParams, exp: Experience, normalised):
        """Gradient sums of -sum_k p_k M_k over micro-batches, with sums of p_k and entropy."""
        r = self.rollout_cfg

        def loss(policy, states, tokens, mask, m_k, support=None):
            cap = self._captioner(policy, frozen)
            soft = cap.soft_prompt(states)
            embeds, full_mask = caption_inputs(cap, soft, tokens, mask)
            lm = cap.language_model
            embeds = self._pin(embeds, "batch", "length", "act_embed")
            hidden, _ = lm.decode(embeds, position_ids(full_mask), causal_mask(full_mask), remat=self.cfg.remat)
            hidden = self._pin(hidden, "batch", "length", "act_embed")[:, soft.shape[1]:]
            if support is not None:
                logp, entropy = losses.support_token_stats(hidden, tokens, support, lm.lm_logits_at, r.temperature)
            else:
                logp, entropy = losses.token_stats(hidden, tokens, lm.lm_head, self.cfg.prob, r.temperature,
                                                   r.top_k, self.cfg.logit_chunk)
            p = jnp.exp(logp)
            valid = mask.astype(jnp.float32)
            total = losses.policy_loss_sum(p, logp, m_k, mask, self.cfg.objective)
            return total, (jnp.sum(p * valid), jnp.sum(entropy * valid))

        grad_fn = jax.value_and_grad(loss, has_aux=True)
        inputs = (exp.vision_states, exp.tokens, exp.mask, normalised)
        if exp.support is not None:
            inputs += (exp.support,)
        xs = tuple(self._micro(x) for x in inputs)
        layout = self.layout.policy if self.layout is not None else None
        grads, sums, _ = self._scan_gradients(grad_fn, state.policy, layout, xs, jnp.zeros(3, jnp.float32),
                                              lambda total, l, aux: (total + jnp.stack([l, *aux]), None))
        return grads, sums

    def _gradients(self, state: TrainState, frozen: FrozenParams, exp: Experience):
        """Value pass, advantage statistics over the whole batch, policy pass: the gradients of
        L_p and L_v (each a sum over micro-batches divided by the global token count) and the
        update's metrics."""
        mask = exp.mask
        count = jnp.sum(mask.astype(jnp.float32))
        n = jnp.maximum(count, 1.0)
        metrics = {}
        if self.cfg.uses_value:
            value_grads, value_sum, values = self._value_pass(state, frozen, exp)
            value_grads = jax.tree.map(lambda g: g / n, value_grads)
            value_loss = value_sum / n
            advantages = estimators.advantages(exp.returns, values)
            metrics["value/explained_variance"] = losses.explained_variance(exp.returns, values, mask)
            metrics["value/mean"] = jnp.sum(values * mask) / n
        else:
            value_grads = jax.tree.map(jnp.zeros_like, state.value)
            value_loss = jnp.float32(0)
            advantages = estimators.advantages(exp.returns, offset=exp.baseline, scale=exp.scale)
        stats = losses.advantage_stats(advantages, mask)
        weights = losses.normalise(advantages, stats, self.cfg.advantage_eps) if self.cfg.kind.whiten else advantages
        normalised = weights * mask
        policy_grads, sums = self._policy_pass(state, frozen, exp, normalised)
        policy_grads = jax.tree.map(lambda g: g / n, policy_grads)
        metrics.update({
            "loss/value": value_loss, "loss/policy": sums[0] / n,
            "return/mean": jnp.sum(exp.returns * mask) / n,
            "advantage/mean": stats.mean, "advantage/std": stats.std, "tokens": count,
            "policy/p_mean": sums[1] / n, "policy/entropy": sums[2] / n,
            "grad_norm/policy": optax.global_norm(policy_grads), "grad_norm/value": optax.global_norm(value_grads),
        })
        return policy_grads, value_grads, metrics

    def _update(self, state: TrainState, frozen: FrozenParams, exp: Experience):
        """The gradients, clipped, then one Adam step of each network; a non-finite loss or
        gradient keeps every parameter and optimizer buffer as it was and counts a skip."""
        policy_grads, value_grads, metrics = self._gradients(state, frozen, exp)
        policy_norm, value_norm = metrics["grad_norm/policy"], metrics["grad_norm/value"]
        scale_p, scale_v = optim.clip_factors(self.cfg, policy_norm, value_norm)
        new_policy, new_popt = optim.apply(self.tx, state.policy, state.policy_opt, policy_grads, scale_p)
        if self.cfg.uses_value:
            new_value, new_vopt = optim.apply(self.tx, state.value, state.value_opt, value_grads, scale_v)
        else:
            new_value, new_vopt = state.value, state.value_opt
        ok = optim.all_finite(metrics["loss/policy"], metrics["loss/value"], policy_norm, value_norm, exp.returns)
        policy_new, value_new, popt_new, vopt_new = optim.keep_if(
            ok, (new_policy, new_value, new_popt, new_vopt), (state.policy, state.value, state.policy_opt, state.value_opt))
        skip = 1 - ok.astype(jnp.int32)
        new_state = TrainState(
            step=state.step + 1, key=state.key, policy=policy_new, value=value_new,
            policy_opt=popt_new, value_opt=vopt_new,
            skipped=state.skipped + skip, skipped_in_row=jnp.where(ok, 0, state.skipped_in_row + 1),
        )
        if self.layout is not None:
            new_state = jax.lax.with_sharding_constraint(new_state, self.layout)
        metrics.update({
            "lr": optim.learning_rate(self.cfg)(optim.updates_done(state.policy_opt)),
            "skipped": new_state.skipped, "skipped_in_row": new_state.skipped_in_row, "update_ok": ok,
        })
        return new_state, metrics

    def _step(self, state: TrainState, frozen: FrozenParams, batch: dict):
        exp, reward_metrics, samples = self._experience(state, frozen, batch)
        state, update_metrics = self._update(state, frozen, exp)
        return state, {**reward_metrics, **update_metrics}, samples


def _place(module: nnx.Module, mesh, rules) -> None:
    if mesh is None and is_abstract(module):
        raise ValueError("an abstract step needs a mesh over the target's devices")
    if mesh is not None:
        shd.shard_module(module, mesh, rules)
        return
    device = jax.devices()[0]
    for _, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        var.set_value(jax.device_put(var.get_value(), device))


def _alias_trunk(itm, captioner) -> None:
    """Point every ITM ViT parameter but its final LayerNorm at the captioner's (equal) array."""
    source = dict(nnx.to_flat_state(nnx.state(captioner, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(itm, nnx.Param)):
        if _is_trunk(path):
            var.set_value(source[path].get_value())


def is_abstract(module: nnx.Module) -> bool:
    """Whether the module's parameters are shapes only (built with `nnx.eval_shape`)."""
    leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
    return bool(leaves) and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def _decide(given: bool | None, compare, abstract: bool, what: str) -> sharing.SharingReport:
    if given is not None:
        return sharing.SharingReport(bool(given), f"{what}={bool(given)} given")
    if abstract:
        raise ValueError(f"{what}: abstract models have no weights to compare; give True or False")
    return compare()


def _is_trunk(path: tuple) -> bool:
    return path[0] == "vision_model" and not any(name in path for name in sharing.TRUNK_EXCLUDED)


def _without_trunk(state):
    """A model state without the ViT trunk's entries (the ITM's, when it is the captioner's)."""
    return nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(state) if not _is_trunk(p)])


def _trunk_only(state):
    """The captioner's ViT trunk entries of a state, which the ITM merges in as its own."""
    return nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(state) if _is_trunk(p)])


def device_bytes(*trees) -> tuple[int, int]:
    """(bytes of all array leaves, bytes of the distinct device buffers among them), over every
    addressable shard: an array passed twice costs its bytes once."""
    total, seen = 0, {}
    for leaf in jax.tree.leaves(trees):
        if isinstance(leaf, jax.Array):
            for shard in leaf.addressable_shards:
                total += shard.data.nbytes
                seen[shard.data.unsafe_buffer_pointer()] = shard.data.nbytes
    return total, int(np.sum(list(seen.values()))) if seen else 0
