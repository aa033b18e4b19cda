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
from vlrm_jax.rewards.returns import suffix_sum
from vlrm_jax.rl import accumulate, estimators, losses, optim, placement, ppo, rollout_settings
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


class A2CStep:
    def __init__(self, cfg: A2CConfig, captioner: Blip2Captioner, value_net: ValueNetwork, scorer,
                 rollout: GenerationConfig, *, itm=None, ref_lm=None, clip=None, mesh=None, rules=shd.DEFAULT_RULES,
                 share_trunk: bool | None = None, share_ref_lm: bool | None = None):
        """share_trunk / share_ref_lm: whether the ITM's ViT trunk is the captioner's and the
        reference LM the captioner's OPT; None compares the weights (concrete models only).
        Abstract models (`nnx.eval_shape`, ShapeDtypeStruct leaves) build a step that can be
        lowered and compiled (`abstract_inputs`) but not run; they need both decisions given."""
        rollout_settings.check(cfg, rollout, scorer)
        self.abstract = placement.is_abstract(captioner)
        if rollout_settings.uses_support(cfg, rollout, captioner.cfg.text.vocab_size):
            rollout = dataclasses.replace(rollout, support_size=rollout_settings.SUPPORT_SLACK * rollout.top_k)
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
                placement.place(model, mesh, rules)

        self.policy_graph, policy, policy_frozen = split_trainable(captioner, cfg.policy_trainable, "policy")
        self.value_graph, value, value_frozen = split_trainable(value_net, cfg.value_trainable, "value")
        self._initial = (policy, value)
        trains_lm = any(name.startswith("language_model/") for name in trainable_names(policy))

        # Frozen work done once: decided by comparing weights unless the caller says.
        self.vision_report = None if itm is None else placement.decide(
            share_trunk, lambda: sharing.vision_trunk_shared(captioner, itm), self.abstract, "share_trunk")
        self.vision_shared = bool(self.vision_report and self.vision_report.shared)
        self.ref_report = None if ref_lm is None else placement.decide(
            share_ref_lm, lambda: sharing.reference_lm_shared(captioner, ref_lm), self.abstract, "share_ref_lm")
        self.ref_shared = bool(self.ref_report and self.ref_report.shared) and not trains_lm
        if self.vision_shared and not self.abstract:  # the ITM's own trunk copy is freed
            placement.alias_trunk(itm, captioner)
        self.itm_graph, itm_state = nnx.split(itm) if itm is not None else (None, None)
        if self.vision_shared:  # the trunk is passed once, as the captioner's: the ITM keeps the rest
            itm_state = placement.without_trunk(itm_state)
        self.ref_graph, ref_state = nnx.split(ref_lm) if ref_lm is not None and not self.ref_shared else (None, None)
        self.clip_graph, clip_state = nnx.split(clip) if clip is not None else (None, None)
        self.frozen = FrozenParams(policy_frozen, value_frozen, itm_state, ref_state, clip_state)

        self.tx = optim.adam(cfg)
        self.layout = self._state_layout()
        self.step = jax.jit(self._step, donate_argnums=0)
        self.experience = jax.jit(self._experience)
        self.update = jax.jit(self.update_step, donate_argnums=0)
        self.gradients = jax.jit(self._gradients)
        self.values = jax.jit(self._value_forward)

    # ------------------------------------------------------------------------------------------
    def _fresh_state(self, initial, seed) -> TrainState:
        policy, value = jax.tree.map(jnp.copy, initial)
        return TrainState(
            step=jnp.int32(0), key=jax.random.PRNGKey(seed), policy=policy, value=value,
            policy_opt=self.tx.init(policy), value_opt=self.tx.init(value),
            skipped=jnp.int32(0), skipped_in_row=jnp.int32(0),
            initial_policy=jax.tree.map(jnp.copy, policy) if self.cfg.keeps_initial_policy else None,
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
                          value_opt=value_opt, skipped=replicated, skipped_in_row=replicated,
                          initial_policy=policy if self.cfg.keeps_initial_policy else None)

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
            trunk = (placement.trunk_only(frozen.policy),) if self.vision_shared else ()
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
        cfg, kind = self.cfg, self.cfg.kind
        cap = self._captioner(state.policy, frozen)
        models = self._reward_models(cap, frozen)
        states, itm_states = self._vision(cap, models, batch)
        k = cfg.samples_per_image
        if k > 1:  # grouped estimators: k captions of every image, rows i*k .. i*k+k-1 for image i
            repeat = lambda x: None if x is None else jnp.repeat(x, k, axis=0)  # noqa: E731
            states, itm_states = repeat(states), repeat(itm_states)
            batch = {name: repeat(v) for name, v in batch.items()}
        key = jax.random.fold_in(state.key, state.step)
        rollout = generate_from_vision_states(cap, self.rollout_cfg, states, key)
        rollout = rollout._replace(tokens=self._pin(rollout.tokens, "batch", "length"),
                                   mask=self._pin(rollout.mask, "batch", "length"))
        out = self.scorer(models, rollout.tokens, itm_states, batch, self.mesh)
        reward = jnp.asarray(out.returns, jnp.float32)
        metrics = {f"reward/{name}": v for name, v in out.stats.items()}
        metrics["reward/mean"] = jnp.mean(reward[:, 0])  # a caption's whole reward is R at its first token
        returns, term_stats = reward, None
        if cfg.component_norm:
            terms = estimators.reward_terms(out, reward)
            term_stats = estimators.term_statistics(terms, k)
            returns = estimators.normalise_components(terms, term_stats, rollout.mask, cfg.group_eps)
        support = None if rollout.support is None else self._pin(rollout.support, "batch", "length")
        exp = Experience(states, jax.lax.stop_gradient(cap.soft_prompt(states)), rollout.tokens,
                         rollout.mask.astype(jnp.int32), returns, support=support)
        if cfg.kl_coef and cfg.kl_in == "reward":
            exp, metrics["kl/mean"] = self._kl_in_returns(state, frozen, exp)
        if kind.baseline is not None:
            greedy = None
            if kind.greedy_rollout:
                greedy_cfg = dataclasses.replace(self.rollout_cfg, do_sample=False, temperature=1.0, top_k=None,
                                                 support_size=0)
                g = generate_from_vision_states(cap, greedy_cfg, states)
                g_out = self.scorer(models, g.tokens, itm_states, batch, self.mesh)
                greedy = jnp.asarray(g_out.returns, jnp.float32)
                if term_stats is not None:  # on the sampled captions' scale
                    greedy = estimators.normalise_components(estimators.reward_terms(g_out, greedy), term_stats,
                                                             g.mask, cfg.group_eps)
                greedy = greedy[:, 0]
            baseline, scale = kind.baseline(exp.returns[:, 0], k, greedy, cfg.group_eps)
            exp = dataclasses.replace(exp, baseline=baseline, scale=scale)
            metrics["baseline/mean"] = jnp.mean(baseline)
        valid = rollout.mask.astype(jnp.float32)
        metrics["caption/length"] = jnp.mean(jnp.sum(valid, axis=1))
        metrics["caption/eos_rate"] = jnp.mean(rollout.finished.astype(jnp.float32))
        samples = {"tokens": rollout.tokens, "reward": reward[:, 0]}
        for name, part in out.parts.items():  # per caption: scalars as they are, token parts summed
            if name != "mask":
                samples[name] = part if part.ndim == 1 else jnp.sum(part, axis=1)
        return exp, metrics, samples

    def _kl_in_returns(self, state: TrainState, frozen: FrozenParams, exp: Experience):
        """a2c.kl_in="reward": the KL estimate to the initial policy as a per-token penalty of
        weight kl_coef, reaching its token and every one before it as the reward's penalties do.
        Returns the Experience with those returns and the KL's mean per valid token."""
        valid = exp.mask.astype(jnp.float32)
        logp = self._forward_logp(state.policy, frozen, exp)
        kl = losses.kl_to_reference(logp, self._forward_logp(state.initial_policy, frozen, exp),
                                    self.cfg.kl_estimator) * valid
        returns = exp.returns - self.cfg.kl_coef * suffix_sum(kl) * valid
        # the same pass is PPO's log p_old (the rollout policy on the same rows): kept, not redone
        exp = dataclasses.replace(exp, returns=returns, old_logp=logp if self.cfg.reuses_rollout else None)
        return exp, jnp.sum(kl) / jnp.maximum(jnp.sum(valid), 1.0)

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

    def _micro_tree(self, tree):
        return jax.tree.map(self._micro, tree)

    def _scan_gradients(self, grad_fn, params, layout, inputs: dict, extra, fold):
        """accumulate.scan_gradients over the micro-batches of `inputs` (a dict of (R, ...) arrays)."""
        # grad_reduce="step": each `data` index sums its rows' gradients apart until the scan ends
        groups = 1 if self.mesh is None or self.cfg.grad_reduce != "step" else self.mesh.shape.get("data", 1)
        return accumulate.scan_gradients(grad_fn, params, layout, (self._micro_tree(inputs),), extra, fold,
                                         mesh=self.mesh, groups=groups, inside_group=self._inside_group)

    def _values(self, value, frozen: FrozenParams, lm, soft_prompt, tokens, mask, captioner):
        net = nnx.merge(self.value_graph, value, frozen.value)
        embeds, full_mask = caption_inputs(captioner, soft_prompt, tokens, mask)
        values = net(lm, self._pin(embeds, "batch", "length", "act_embed"), full_mask, remat=self.cfg.remat)
        return values[:, soft_prompt.shape[1]:]

    def value_pass(self, state: TrainState, frozen: FrozenParams, exp: Experience):
        """Gradient sums of sum_k (R - V)^2 (clipped around exp.old_values with a2c.value_clip)
        over micro-batches, and V for every row."""
        cap = self._captioner(state.policy, frozen)

        def loss(value, mb):
            v = self._values(value, frozen, cap.language_model, mb["soft"], mb["tokens"], mb["mask"], cap)
            return losses.value_loss_sum(mb["returns"], v, mb["mask"], mb.get("old_values"), self.cfg.value_clip), v

        inputs = dict(soft=exp.soft_prompt, tokens=exp.tokens, mask=exp.mask, returns=exp.returns)
        if exp.old_values is not None:
            inputs["old_values"] = exp.old_values
        layout = self.layout.value if self.layout is not None else None
        grads, loss_sum, values = self._scan_gradients(jax.value_and_grad(loss, has_aux=True), state.value, layout,
                                                       inputs, jnp.float32(0), lambda total, l, v: (total + l, v))
        return grads, loss_sum, jax.lax.stop_gradient(self._unmicro(values))

    def _value_forward(self, state: TrainState, frozen: FrozenParams, exp: Experience):
        """V of every row under the state's value network, without gradients."""
        cap = self._captioner(state.policy, frozen)

        return self._forward_rows(lambda soft, tokens, mask: self._values(state.value, frozen, cap.language_model,
                                                                          soft, tokens, mask, cap),
                                  (exp.soft_prompt, exp.tokens, exp.mask))

    def _forward_rows(self, fn, inputs):
        """fn(*micro-batch) for every micro-batch of `inputs`, back in rows, without gradients."""
        _, out = jax.lax.scan(lambda _, mb: (None, fn(*mb)), None, self._micro_tree(inputs))
        return jax.lax.stop_gradient(self._unmicro(out))

    def _policy_inputs(self, exp: Experience) -> dict:
        inputs = dict(states=exp.vision_states, tokens=exp.tokens, mask=exp.mask)
        if exp.support is not None:
            inputs["support"] = exp.support
        return inputs

    def _token_stats(self, policy, frozen: FrozenParams, mb: dict):
        """(log p_k, entropy) (R, T) of the sampled tokens under the policy `policy`, in the
        distribution a2c.prob names."""
        r = self.rollout_cfg
        cap = self._captioner(policy, frozen)
        soft = cap.soft_prompt(mb["states"])
        embeds, full_mask = caption_inputs(cap, soft, mb["tokens"], mb["mask"])
        lm = cap.language_model
        embeds = self._pin(embeds, "batch", "length", "act_embed")
        hidden, _ = lm.decode(embeds, position_ids(full_mask), causal_mask(full_mask), remat=self.cfg.remat)
        hidden = self._pin(hidden, "batch", "length", "act_embed")[:, soft.shape[1]:]
        if "support" in mb:
            return losses.support_token_stats(hidden, mb["tokens"], mb["support"], lm.lm_logits_at, r.temperature)
        return losses.token_stats(hidden, mb["tokens"], lm.lm_head, self.cfg.prob, r.temperature, r.top_k,
                                  self.cfg.logit_chunk)

    def _forward_logp(self, policy, frozen: FrozenParams, exp: Experience):
        """log p_k (R, T) of every row's sampled tokens under `policy`, without gradients."""
        return self._forward_rows(lambda mb: self._token_stats(policy, frozen, mb)[0], (self._policy_inputs(exp),))

    def policy_pass(self, state: TrainState, frozen: FrozenParams, exp: Experience, weights):
        """Gradient sums of the policy loss over micro-batches: -sum_k p_k M_k (PPO's clipped
        ratio when exp.old_logp is there), plus kl_coef * KL to the initial policy (exp.ref_logp)
        and minus entropy_coef * entropy; with sums of p_k, entropy, KL and clipped tokens."""
        c = self.cfg

        def loss(policy, mb):
            logp, entropy = self._token_stats(policy, frozen, mb)
            p = jnp.exp(logp)
            valid = mb["mask"].astype(jnp.float32)
            if "old_logp" in mb:
                total, clipped = losses.clipped_policy_loss_sum(logp, mb["old_logp"], mb["weights"], mb["mask"],
                                                                c.objective, c.clip_eps)
            else:
                total, clipped = losses.policy_loss_sum(p, logp, mb["weights"], mb["mask"], c.objective), jnp.float32(0)
            kl = jnp.float32(0)
            if "ref_logp" in mb:
                kl = jnp.sum(losses.kl_to_reference(logp, mb["ref_logp"], c.kl_estimator) * valid)
                total = total + c.kl_coef * kl
            spread = jnp.sum(entropy * valid)
            if c.entropy_coef:
                total = total - c.entropy_coef * spread
            return total, (jnp.sum(p * valid), spread, kl, clipped)

        inputs = dict(self._policy_inputs(exp), weights=weights)
        if exp.old_logp is not None:
            inputs["old_logp"] = exp.old_logp
        if exp.ref_logp is not None:
            inputs["ref_logp"] = exp.ref_logp
        layout = self.layout.policy if self.layout is not None else None
        grads, sums, _ = self._scan_gradients(jax.value_and_grad(loss, has_aux=True), state.policy, layout, inputs,
                                              jnp.zeros(5, jnp.float32),
                                              lambda total, l, aux: (total + jnp.stack([l, *aux]), None))
        return grads, sums

    def _weights(self, exp: Experience, values):
        """M_k: the advantages (from V, or the estimator's baseline) whitened over every valid
        token of the batch where the estimator does, zero outside the mask; and their stats."""
        if values is not None:
            adv = estimators.advantages(exp.returns, values)
        else:
            adv = estimators.advantages(exp.returns, offset=exp.baseline, scale=exp.scale)
        stats = losses.advantage_stats(adv, exp.mask)
        weights = losses.normalise(adv, stats, self.cfg.advantage_eps) if self.cfg.kind.whiten else adv
        return weights * exp.mask, stats

    def _gradients(self, state: TrainState, frozen: FrozenParams, exp: Experience, weights=None):
        """Value pass, advantage statistics over the whole batch (unless `weights` are given: the
        PPO path computes them once per rollout), policy pass: the gradients of L_p and L_v (each
        a sum over micro-batches divided by the global token count) and the update's metrics."""
        c, mask = self.cfg, exp.mask
        count = jnp.sum(mask.astype(jnp.float32))
        n = jnp.maximum(count, 1.0)
        metrics, values = {}, None
        if c.uses_value:
            value_grads, value_sum, values = self.value_pass(state, frozen, exp)
            value_grads = jax.tree.map(lambda g: g / n, value_grads)
            value_loss = value_sum / n
            metrics["value/explained_variance"] = losses.explained_variance(exp.returns, values, mask)
            metrics["value/mean"] = jnp.sum(values * mask) / n
        else:
            value_grads = jax.tree.map(jnp.zeros_like, state.value)
            value_loss = jnp.float32(0)
        if weights is None:
            weights, stats = self._weights(exp, values)
            metrics.update({"advantage/mean": stats.mean, "advantage/std": stats.std})
        if c.kl_coef and c.kl_in == "loss" and exp.ref_logp is None:
            exp = dataclasses.replace(exp, ref_logp=self._forward_logp(state.initial_policy, frozen, exp))
        policy_grads, sums = self.policy_pass(state, frozen, exp, weights)
        policy_grads = jax.tree.map(lambda g: g / n, policy_grads)
        metrics.update({
            "loss/value": value_loss, "loss/policy": sums[0] / n,
            "return/mean": jnp.sum(exp.returns * mask) / n, "tokens": count,
            "policy/p_mean": sums[1] / n, "policy/entropy": sums[2] / n,
            "grad_norm/policy": optax.global_norm(policy_grads), "grad_norm/value": optax.global_norm(value_grads),
        })
        if exp.ref_logp is not None:
            metrics["kl/mean"] = sums[3] / n
        if exp.old_logp is not None:
            metrics["policy/clip_fraction"] = sums[4] / n
        return policy_grads, value_grads, metrics

    def _apply(self, state: TrainState, policy_grads, value_grads, metrics, returns):
        """The gradients, clipped, then one Adam step of each network; a non-finite loss or
        gradient keeps every parameter and optimizer buffer as it was and counts a skip."""
        policy_norm, value_norm = metrics["grad_norm/policy"], metrics["grad_norm/value"]
        scale_p, scale_v = optim.clip_factors(self.cfg, policy_norm, value_norm)
        new_policy, new_popt = optim.apply(self.tx, state.policy, state.policy_opt, policy_grads, scale_p)
        if self.cfg.uses_value:
            new_value, new_vopt = optim.apply(self.tx, state.value, state.value_opt, value_grads, scale_v)
        else:
            new_value, new_vopt = state.value, state.value_opt
        ok = optim.all_finite(metrics["loss/policy"], metrics["loss/value"], policy_norm, value_norm, returns)
        policy_new, value_new, popt_new, vopt_new = optim.keep_if(
            ok, (new_policy, new_value, new_popt, new_vopt), (state.policy, state.value, state.policy_opt, state.value_opt))
        new_state = dataclasses.replace(
            state, policy=policy_new, value=value_new, policy_opt=popt_new, value_opt=vopt_new,
            skipped=state.skipped + 1 - ok.astype(jnp.int32), skipped_in_row=jnp.where(ok, 0, state.skipped_in_row + 1))
        if self.layout is not None:
            new_state = jax.lax.with_sharding_constraint(new_state, self.layout)
        metrics = dict(metrics, lr=optim.learning_rate(self.cfg)(optim.updates_done(state.policy_opt)),
                       skipped=new_state.skipped, skipped_in_row=new_state.skipped_in_row, update_ok=ok)
        return new_state, metrics

    def _reuse_rollout(self, state: TrainState, frozen: FrozenParams, exp: Experience):
        """PPO's updates on one rollout: V_old, the whitened advantages and log p_old once (and the
        initial policy's log p for a KL loss), then `epochs` passes over the rows in `minibatches`
        shuffled minibatches, one optimizer step each (metrics: means over the updates)."""
        c = self.cfg
        values = self._value_forward(state, frozen, exp) if c.uses_value else None
        weights, stats = self._weights(exp, values)
        old_logp = exp.old_logp if exp.old_logp is not None else self._forward_logp(state.policy, frozen, exp)
        exp = dataclasses.replace(exp, old_logp=old_logp, old_values=values)
        if c.kl_coef and c.kl_in == "loss":
            exp = dataclasses.replace(exp, ref_logp=self._forward_logp(state.initial_policy, frozen, exp))
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), ppo.SHUFFLE_STREAM)
        plan = ppo.minibatch_plan(key, exp.rows, c.epochs, c.minibatches)

        def body(carry, slots):
            sub, sub_weights = ppo.take_rows((exp, weights), slots, c.minibatches)
            return self._apply(carry, *self._gradients(carry, frozen, sub, sub_weights), sub.returns)

        state, per_update = jax.lax.scan(body, state, plan)
        return state, dict(ppo.summarise(per_update), **{"advantage/mean": stats.mean, "advantage/std": stats.std})

    def update_step(self, state: TrainState, frozen: FrozenParams, exp: Experience):
        """One update on a rollout (several, with a2c.epochs / minibatches / clipping); the step
        counts rollouts. Not jitted: `self.update` is this jitted with the state donated."""
        if self.cfg.reuses_rollout:
            state, metrics = self._reuse_rollout(state, frozen, exp)
        else:
            state, metrics = self._apply(state, *self._gradients(state, frozen, exp), exp.returns)
        return dataclasses.replace(state, step=state.step + 1), metrics

    def _step(self, state: TrainState, frozen: FrozenParams, batch: dict):
        exp, reward_metrics, samples = self._experience(state, frozen, batch)
        state, update_metrics = self.update_step(state, frozen, exp)
        return state, {**reward_metrics, **update_metrics}, samples
