"""The PyTorch side of bench/train_step.py: what a competent transformers user writes for the same
step, from transformers / peft / open_clip modules and autograd. The losses, the advantages'
whitening, the micro-batches, the value network and the reward's arithmetic are those of the
shared PyTorch reference of the step (vlrm_jax/testing/torch_step.py); this file adds the
rollout (`language_model.generate`), the models' forwards on precomputed vision states, timing
and torch Adam with the joint norm clip."""
from __future__ import annotations

import time

import numpy as np
import torch

from bench.step_shapes import Setup
from vlrm_jax.testing import torch_step as ref


class TorchSide:
    """The same step on the setup's transformers models: rollout, reward, value pass, policy pass,
    optimizer, each timed into `self.times`."""

    def __init__(self, setup: Setup):
        self.s, self.hf, self.itm = setup, setup.hf_cap, setup.hf_itm
        self.cfg, self.rollout_cfg, self.weights = setup.a2c, setup.rollout, setup.reward_cfg.weights
        self.retok = setup.retokenizer()
        self.device = setup.device
        self.sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        self.q = self.hf.config.num_query_tokens
        text = self.hf.config.text_config
        self.bos, self.pad = text.bos_token_id, text.pad_token_id
        trunk, head = ref.value_network(self.hf, setup.value_cfg, setup.flat_value)
        self.trunk, self.head = trunk.to(self.device), head.to(self.device)
        policy = [self.hf.query_tokens, *self.hf.qformer.parameters(), *self.hf.language_projection.parameters()]
        for p in policy:
            p.requires_grad_(True)
        value = [p for p in self.trunk.parameters() if p.requires_grad] + list(self.head.parameters())
        self.policy_params, self.value_params = policy, value
        adam = dict(lr=self.cfg.learning_rate, betas=(self.cfg.b1, self.cfg.b2), eps=self.cfg.eps)
        self.opt_p, self.opt_v = torch.optim.Adam(policy, **adam), torch.optim.Adam(value, **adam)
        self.updates = 0
        self.times = {}

    def batch(self, pixels: np.ndarray):
        dtype = torch.bfloat16 if self.s.shape["dtype"] == "bfloat16" else torch.float32
        return torch.tensor(pixels, device=self.device).permute(0, 3, 1, 2).contiguous().to(dtype)

    def _timed(self, name, fn):
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t
        return out

    # -- the three stages ----------------------------------------------------------------------
    def _soft_prompt(self, vision):
        queries = self.hf.query_tokens.expand(vision.shape[0], -1, -1)
        out = self.hf.qformer(query_embeds=queries, encoder_hidden_states=vision).last_hidden_state
        return self.hf.language_projection(out.to(vision.dtype))

    def rollout(self, pixels):
        """(vision states, soft prompt, new tokens (B, T) padded with the pad id)."""
        with torch.no_grad():
            vision = self.hf.vision_model(pixels).last_hidden_state
            soft = self._soft_prompt(vision)
            b = pixels.shape[0]
            bos = self.hf.language_model.get_input_embeddings()(torch.full((b, 1), self.bos, device=self.device))
            embeds = torch.cat([soft, bos.to(soft.dtype)], dim=1)
            r = self.rollout_cfg
            out = self.hf.language_model.generate(
                inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
                do_sample=True, top_k=r.top_k, temperature=r.temperature, max_new_tokens=r.max_new_tokens,
                pad_token_id=self.pad)
        tokens = torch.full((b, r.max_new_tokens), self.pad, dtype=torch.long, device=self.device)
        tokens[:, :out.shape[1]] = out
        return vision, soft, tokens

    def reward(self, pixels, tokens):
        """Per-token returns (B, T) fp32, the caption mask and each caption's parts."""
        host = self.retok(tokens.cpu().numpy())
        dev = lambda x, dtype=torch.float32: torch.tensor(np.asarray(x), device=self.device, dtype=dtype)  # noqa: E731
        mask = dev(host.mask)
        rs_weight = self.s.reward_cfg.rs_weight
        with torch.no_grad():
            itm = self.itm(pixel_values=pixels, input_ids=dev(host.itm_input_ids, torch.long),
                           attention_mask=dev(host.itm_attention_mask, torch.long), use_image_text_matching_head=True)
            sim = itm.logits_per_image[:, 1].float()
            ref_lp = torch.zeros_like(sim)
            if self.weights.ref != 0.0:
                ref_lp = ref.reference_logprob(self.hf.language_model, tokens, mask, self.bos)
            phi = torch.zeros_like(sim)
            if rs_weight != 0.0:
                clip = self.s.clip
                phi = ref.retrieval_specificity(clip.encode_image(pixels),
                                                clip.encode_text(dev(host.clip_input_ids, torch.long)))
        returns = ref.vlrm_returns(self.weights, rs_weight, sim, ref_lp, phi, dev(host.noeos), dev(host.bad),
                                   dev(host.repeat), mask)
        return returns, mask, dict(sim=sim, ref=ref_lp, phi=phi)

    def _caption_embeds(self, soft, tokens, mask):
        text_ids, attention = ref.caption_inputs(tokens, mask, self.bos, self.q)
        with torch.no_grad():
            text = self.hf.language_model.get_input_embeddings()(text_ids)
        return torch.cat([soft, text.to(soft.dtype)], 1), attention

    def losses(self, vision, soft, tokens, mask, returns):
        """Value pass then policy pass over the micro-batches (rows j, j + M, ... as the JAX step
        splits them), gradients accumulated in .grad; (L_p, L_v) as floats."""
        m, r = self.cfg.micro_batches, self.rollout_cfg

        def values_of(rows):
            embeds, attention = self._caption_embeds(soft[rows], tokens[rows], mask[rows])
            return ref.value_forward(self.trunk, self.head, embeds, attention, self.q)

        def logp_of(rows):
            embeds, attention = self._caption_embeds(self._soft_prompt(vision[rows]), tokens[rows], mask[rows])
            logits = self.hf.language_model(inputs_embeds=embeds, attention_mask=attention,
                                            logits_to_keep=tokens.shape[1]).logits
            return ref.token_logprob(logits.float(), tokens[rows], self.cfg.prob, r.temperature, r.top_k)

        values, value_loss = self._timed("value_pass", lambda: ref.value_pass(values_of, returns, mask, m))
        m_k = ref.whiten(returns - values, mask, self.cfg.advantage_eps)
        policy_loss = self._timed("policy_pass", lambda: ref.policy_pass(logp_of, m_k, mask, m, self.cfg.objective))
        return policy_loss, value_loss

    def zero_grad(self):
        for p in self.policy_params + self.value_params:
            p.grad = None

    def optimizer_step(self):
        lr = self.cfg.learning_rate * min(1.0, (self.updates + 1) / max(self.cfg.warmup_steps, 1))
        for opt in (self.opt_p, self.opt_v):
            for group in opt.param_groups:
                group["lr"] = lr
        torch.nn.utils.clip_grad_norm_(self.policy_params + self.value_params, self.cfg.clip_norm)
        self.opt_p.step()
        self.opt_v.step()
        self.updates += 1

    def step(self, pixels):
        self.zero_grad()
        vision, soft, tokens = self._timed("rollout", lambda: self.rollout(pixels))
        returns, mask, _ = self._timed("reward", lambda: self.reward(pixels, tokens))
        losses = self.losses(vision, soft, tokens, mask, returns)
        self._timed("optimizer", self.optimizer_step)
        return losses, float(mask.sum(1).mean())
