"""The A2C step written in PyTorch from transformers' own modules: the judge of the JAX step
(tests/rl/test_torch_reference.py) and the PyTorch side of bench/train_step.py.

Policy: `Blip2ForConditionalGeneration` itself (image placeholders then BOS then the caption, as
transformers lays BLIP2 input out), p_k through transformers' temperature and top-k warpers.
Value: a copy of its OPT with peft LoRA adapters, then a head of transformers `OPTDecoderLayer`s,
a LayerNorm and an MLP. Losses as the paper states them (vlrm_jax.rl.losses), gradients by
autograd, over the same micro-batches as the JAX step (`value_pass`, `policy_pass`); the VLRM
reward's per-token returns and its two model terms (reference LM, retrieval specificity).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
NORMS = ("self_attn_layer_norm", "final_layer_norm")
ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


def _linear_name(name: str) -> str:
    return f"self_attn.{name}" if name in ATTN else name


class TorchValueHead(nn.Module):
    def __init__(self, opt_config, layers: int, mlp_ratio: int):
        from transformers.models.opt.modeling_opt import OPTDecoderLayer

        super().__init__()
        cfg = copy.deepcopy(opt_config)
        cfg._attn_implementation = "eager"
        width = cfg.word_embed_proj_dim
        self.blocks = nn.ModuleList(OPTDecoderLayer(cfg, i) for i in range(layers))
        self.norm = nn.LayerNorm(width, eps=1e-5)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.out = nn.Linear(mlp_ratio * width, 1)

    def forward(self, hidden, attention_mask):
        t = hidden.shape[1]
        allowed = torch.tril(torch.ones(t, t, dtype=torch.bool, device=hidden.device))[None] & attention_mask.bool()[:, None, :]
        additive = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]
        for block in self.blocks:
            hidden = block(hidden, attention_mask=additive)
        return self.out(torch.relu(self.fc1(self.norm(hidden))))[..., 0]


def _t(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x, dtype=np.float32))


def value_network(hf, value_cfg, flat_value: dict):
    """(peft-wrapped OPT copy, TorchValueHead) carrying the JAX value network's weights.
    flat_value: {path tuple: array} of the JAX ValueNetwork's parameters."""
    from peft import LoraConfig, get_peft_model

    lm = copy.deepcopy(hf.language_model)
    lora = LoraConfig(r=value_cfg.lora_rank, lora_alpha=value_cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=list(value_cfg.lora_targets), bias="none")
    trunk = get_peft_model(lm, lora)
    layers = trunk.base_model.model.model.decoder.layers
    with torch.no_grad():
        for name in value_cfg.lora_targets:
            a, b = flat_value[("lora", f"{name}_a")], flat_value[("lora", f"{name}_b")]
            for i, layer in enumerate(layers):
                module = layer.get_submodule(_linear_name(name))
                module.lora_A["default"].weight.copy_(_t(a[i]).T)
                module.lora_B["default"].weight.copy_(_t(b[i]).T)
    head = TorchValueHead(hf.config.text_config, value_cfg.head_layers, value_cfg.head_mlp_ratio)
    with torch.no_grad():
        for i, block in enumerate(head.blocks):
            for name in LINEARS:
                module = block.get_submodule(_linear_name(name))
                module.weight.copy_(_t(flat_value[("head", "blocks", name, "kernel")][i]).T)
                module.bias.copy_(_t(flat_value[("head", "blocks", name, "bias")][i]))
            for name in NORMS:
                module = block.get_submodule(name)
                module.weight.copy_(_t(flat_value[("head", "blocks", name, "scale")][i]))
                module.bias.copy_(_t(flat_value[("head", "blocks", name, "bias")][i]))
        head.norm.weight.copy_(_t(flat_value[("head", "norm", "scale")]))
        head.norm.bias.copy_(_t(flat_value[("head", "norm", "bias")]))
        for name in ("fc1", "out"):
            getattr(head, name).weight.copy_(_t(flat_value[("head", name, "kernel")]).T)
            getattr(head, name).bias.copy_(_t(flat_value[("head", name, "bias")]))
    return trunk, head


def value_gradients_to_jax_paths(trunk, head, value_cfg) -> dict[tuple, np.ndarray]:
    """The torch value gradients laid out as the JAX ValueNetwork's parameters."""
    layers = trunk.base_model.model.model.decoder.layers
    out = {}
    for name in value_cfg.lora_targets:
        mods = [layer.get_submodule(_linear_name(name)) for layer in layers]
        out[("lora", f"{name}_a")] = np.stack([m.lora_A["default"].weight.grad.numpy().T for m in mods])
        out[("lora", f"{name}_b")] = np.stack([m.lora_B["default"].weight.grad.numpy().T for m in mods])
    for name in LINEARS:
        mods = [block.get_submodule(_linear_name(name)) for block in head.blocks]
        out[("head", "blocks", name, "kernel")] = np.stack([m.weight.grad.numpy().T for m in mods])
        out[("head", "blocks", name, "bias")] = np.stack([m.bias.grad.numpy() for m in mods])
    for name in NORMS:
        mods = [block.get_submodule(name) for block in head.blocks]
        out[("head", "blocks", name, "scale")] = np.stack([m.weight.grad.numpy() for m in mods])
        out[("head", "blocks", name, "bias")] = np.stack([m.bias.grad.numpy() for m in mods])
    out[("head", "norm", "scale")] = head.norm.weight.grad.numpy()
    out[("head", "norm", "bias")] = head.norm.bias.grad.numpy()
    for name in ("fc1", "out"):
        out[("head", name, "kernel")] = getattr(head, name).weight.grad.numpy().T
        out[("head", name, "bias")] = getattr(head, name).bias.grad.numpy()
    return out


def log_distribution(logits, prob: str, temperature: float, top_k: int):
    """(B, T, V) log-probabilities of the distribution p_k is taken under, through transformers'
    own temperature and top-k warpers."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

    b, t, v = logits.shape
    flat = logits.reshape(b * t, v)
    if prob != "raw":
        flat = TemperatureLogitsWarper(temperature)(None, flat)
    if prob == "sampled":
        flat = TopKLogitsWarper(top_k)(None, flat)
    return torch.log_softmax(flat, dim=-1).reshape(b, t, v)


def token_logprob(logits, tokens, prob: str, temperature: float, top_k: int):
    logp = log_distribution(logits, prob, temperature, top_k)
    return torch.gather(logp, 2, tokens[..., None])[..., 0]


def token_entropy(logits, prob: str, temperature: float, top_k: int):
    """Entropy of the distribution p_k is taken under, per position."""
    logp = log_distribution(logits, prob, temperature, top_k)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


def ppo_policy_terms(logp, old_logp, m_k, *, objective: str, clip_eps: float):
    """Schulman et al. 2017, eq. 7: min(r A, clip(r, 1 - eps, 1 + eps) A) per token, r = p / p_old,
    scaled by p_old for the paper's probability objective (then unclipped it is p A)."""
    old = torch.tensor(np.asarray(old_logp), dtype=torch.float32)
    ratio = torch.exp(logp - old)
    surrogate = torch.minimum(ratio * m_k, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * m_k)
    return old.exp() * surrogate if objective == "prob" else surrogate


def kl_terms(logp, ref_logp, estimator: str):
    """Schulman, "Approximating KL divergence" (2020): k1 = log(p / p_ref), k3 = (r - 1) - log r
    with r = p_ref / p, on tokens sampled from p."""
    ref = torch.tensor(np.asarray(ref_logp), dtype=torch.float32)
    if estimator == "k1":
        return logp - ref
    r = torch.exp(ref - logp)
    return (r - 1) - torch.log(r)


# ---------------------------------------------------------------------------------------------
# The losses (vlrm_jax.rl.losses), as sums over valid tokens: divided by the batch's n by callers
def whiten(advantages, mask, eps: float):
    """M_k = (A_k - mean A) / (std A + eps) over the valid tokens of the whole batch
    (losses.advantage_stats then losses.normalise; population std)."""
    n = mask.sum().clamp(min=1.0)
    mean = (advantages * mask).sum() / n
    std = torch.sqrt((((advantages - mean) ** 2) * mask).sum() / n)
    return (advantages - mean) / (std + eps)


def value_loss_sum(returns, values, mask, old_values=None, value_clip: float = 0.0):
    """sum_k (R_k - V_k)^2 over valid tokens; with old_values PPO's clipped value loss."""
    terms = (returns - values) ** 2
    if old_values is not None:
        old_v = torch.tensor(np.asarray(old_values), dtype=torch.float32)
        clipped_v = old_v + torch.clamp(values - old_v, -value_clip, value_clip)
        terms = torch.maximum(terms, (returns - clipped_v) ** 2)
    return (terms * mask).sum()


def policy_loss_sum(logp, m_k, mask, *, objective: str, old_logp=None, clip_eps: float = 0.0, ref_logp=None,
                    kl_coef: float = 0.0, kl_estimator: str = "k3", entropy=None, entropy_coef: float = 0.0):
    """-sum_k p_k M_k (log p_k for objective="logprob"; PPO's clipped ratio against old_logp)
    over valid tokens, plus kl_coef * KL to ref_logp, minus entropy_coef * entropy."""
    # past EOS the pad token may lie outside the top-k (log p = -inf): those terms are masked
    logp = torch.where(mask > 0, logp, torch.zeros_like(logp))
    if old_logp is not None:
        objective_terms = ppo_policy_terms(logp, old_logp, m_k, objective=objective, clip_eps=clip_eps)
    else:
        objective_terms = (logp.exp() if objective == "prob" else logp) * m_k
    terms = -objective_terms
    if ref_logp is not None:
        terms = terms + kl_coef * kl_terms(logp, ref_logp, kl_estimator)
    if entropy_coef:
        terms = terms - entropy_coef * entropy
    return (terms * mask).sum()


def caption_inputs(tokens, mask, bos: int, queries: int):
    """([BOS; tokens[:-1]] ids, the attention mask of [soft prompt; those ids]): the positions that
    predict each caption token, as the JAX step's caption_inputs lays them out."""
    b, device = tokens.shape[0], tokens.device
    text_ids = torch.cat([torch.full((b, 1), bos, device=device), tokens[:, :-1]], dim=1)
    text_mask = torch.cat([torch.ones(b, 1, device=device), mask[:, :-1]], dim=1)
    attention = torch.cat([torch.ones(b, queries, device=device), text_mask], dim=1).long()
    return text_ids, attention


def value_forward(trunk, head, embeds, attention, queries: int):
    """V (B, T) at the caption positions: the LoRA trunk over [soft prompt; caption], then the head."""
    hidden = trunk.base_model.model.model(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
    return head(hidden.float(), attention)[:, queries:]


# ---------------------------------------------------------------------------------------------
# Micro-batches: rows j, j + M, j + 2M, ... as the JAX step splits them; backward() on each
def micro_rows(micro_batches: int) -> list[slice]:
    return [slice(j, None, micro_batches) for j in range(micro_batches)]


def value_pass(values_of, returns, mask, micro_batches: int):
    """L_v's share of each micro-batch, backward() on each (gradients accumulate in .grad).
    values_of(rows) -> V of those rows. Returns (V of every row, detached; L_v as a float)."""
    n = mask.sum()
    values, total = torch.zeros_like(returns), 0.0
    for rows in micro_rows(micro_batches):
        v = values_of(rows)
        loss = value_loss_sum(returns[rows], v, mask[rows]) / n
        loss.backward()
        values[rows] = v.detach()
        total += loss.item()
    return values, total


def policy_pass(logp_of, m_k, mask, micro_batches: int, objective: str) -> float:
    """L_p's share of each micro-batch, backward() on each; logp_of(rows) -> log p_k of those
    rows. Returns L_p as a float."""
    n, total = mask.sum(), 0.0
    for rows in micro_rows(micro_batches):
        loss = policy_loss_sum(logp_of(rows), m_k[rows], mask[rows], objective=objective) / n
        loss.backward()
        total += loss.item()
    return total


# ---------------------------------------------------------------------------------------------
# The VLRM reward's torch parts (vlrm_jax.rewards, vlrm_jax.rl.scoring)
def vlrm_returns(weights, rs_weight: float, sim, ref, phi, noeos, bad, repeat, mask):
    """Per-token returns: each caption's w_sim (sim + rs_weight phi) + w_ref ref - w_noeos noeos,
    minus the bad-word and repeat penalties still to come; 0 past the caption."""
    per_caption = weights.sim * (sim + rs_weight * phi) + weights.ref * ref - weights.noeos * noeos
    penalty = weights.bad * bad * mask + weights.repeat * repeat * mask
    to_go = torch.flip(torch.cumsum(torch.flip(penalty, [1]), 1), [1])
    return torch.where(mask > 0, per_caption[:, None] - to_go, 0.0)


def reference_logprob(lm, tokens, mask, bos: int):
    """The reference LM's mean log p of each caption's valid tokens, after BOS alone."""
    b = tokens.shape[0]
    ids = torch.cat([torch.full((b, 1), bos, device=tokens.device), tokens], 1)
    attention = torch.cat([torch.ones(b, 1, device=tokens.device), mask], 1).long()
    logits = lm(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    logp = torch.gather(torch.log_softmax(logits, -1), 2, tokens[..., None])[..., 0]
    return (logp * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def retrieval_specificity(image_features, text_features):
    """VLRM-RS's phi: the diagonal of softmax over images x softmax over texts of the cosine
    similarities, standardised over the batch (0 where all are equal)."""
    image = torch.nn.functional.normalize(image_features.float(), dim=-1)
    text = torch.nn.functional.normalize(text_features.float(), dim=-1)
    s = image @ text.T
    d = torch.diagonal(torch.softmax(s, 0) * torch.softmax(s, 1))
    std = d.std(unbiased=False)
    return torch.where(std > 0, (d - d.mean()) / torch.where(std > 0, std, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------
def a2c_losses(hf, trunk, head, pixels, tokens, mask, returns, *, prob: str, objective: str, temperature: float,
               top_k: int, eps: float, old_logp=None, clip_eps: float = 0.0, old_values=None, value_clip: float = 0.0,
               ref_logp=None, kl_coef: float = 0.0, kl_estimator: str = "k3", entropy_coef: float = 0.0):
    """(L_p, L_v) of one rollout batch, as one micro-batch; backward() fills the gradients of the
    policy's query tokens / Q-Former / projection and of the value's LoRA / head. old_logp:
    PPO's clipped objective against it; old_values: PPO's clipped value loss; ref_logp: a KL term
    to it; entropy_coef: an entropy bonus."""
    q = hf.config.num_query_tokens
    b = tokens.shape[0]
    tokens_t = torch.tensor(np.asarray(tokens), dtype=torch.long)
    mask_t = torch.tensor(np.asarray(mask), dtype=torch.float32)
    returns_t = torch.tensor(np.asarray(returns), dtype=torch.float32)
    pixels_t = torch.tensor(np.asarray(pixels)).permute(0, 3, 1, 2)
    text_ids, attention = caption_inputs(tokens_t, mask_t, hf.config.text_config.bos_token_id, q)
    ids = torch.cat([torch.full((b, q), hf.config.image_token_index), text_ids], dim=1)

    # policy: the real BLIP2 forward
    logits = hf(pixel_values=pixels_t, input_ids=ids, attention_mask=attention).logits[:, q:]
    logp = token_logprob(logits.float(), tokens_t, prob, temperature, top_k)

    # value: the same soft prompt (no gradient) into the LoRA trunk, then the head
    with torch.no_grad():
        soft = hf.get_image_features(pixels_t, return_dict=True).pooler_output
        text_embeds = hf.language_model.get_input_embeddings()(text_ids)
    values = value_forward(trunk, head, torch.cat([soft, text_embeds], dim=1), attention, q)

    n = mask_t.sum()
    value_loss = value_loss_sum(returns_t, values, mask_t, old_values, value_clip) / n
    m_k = whiten(returns_t - values.detach(), mask_t, eps)
    entropy = token_entropy(logits.float(), prob, temperature, top_k) if entropy_coef else None
    policy_loss = policy_loss_sum(logp, m_k, mask_t, objective=objective, old_logp=old_logp, clip_eps=clip_eps,
                                  ref_logp=ref_logp, kl_coef=kl_coef, kl_estimator=kl_estimator, entropy=entropy,
                                  entropy_coef=entropy_coef) / n
    return policy_loss, value_loss
