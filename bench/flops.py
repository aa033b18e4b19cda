"""The analytic FLOPs of one caption's share of the A2C step (`caption_flops`, every formula here;
bench/scaling.py projects from it) and the peak FLOP/s of a large matmul measured in each
framework (`matmul_peak`), the two halves of bench/train_step.py's MFU."""
from __future__ import annotations

import time

import numpy as np

from bench.step_shapes import ITM_TEXT_LENGTH
from vlrm_jax.rl.rollout_settings import SUPPORT_SLACK


def _layer(tokens, ctx, d, f):
    """One transformer block: 4 d x d projections and a d -> f -> d MLP (2 FLOPs a multiply-add)
    per token, plus QK^T and AV over `ctx` keys."""
    return tokens * (2 * (4 * d * d + 2 * d * f) + 4 * ctx * d)


def caption_flops(cap_cfg, itm_cfg, value_cfg, new_tokens: int, variant: str, clip_cfg=None,
                  top_k: int = 6) -> dict:
    """Model FLOPs of one caption's share of the step, by stage (no rematerialisation counted).
    Backward through a frozen network: activation gradients only, 1x its forward; through a
    trained one: activation and weight gradients, 2x. Attention context = the mean prefix length.
    The policy pass needs the output projection only onto the rollout's top-k support (p_k under
    the sampling distribution; the rollout already projected onto the whole vocabulary)."""
    v, qf, t = cap_cfg.vision_config, cap_cfg.qformer_config, cap_cfg.text_config
    q, n_new = cap_cfg.num_query_tokens, new_tokens
    patches = (v.image_size // v.patch_size) ** 2
    vit = v.num_hidden_layers * _layer(patches + 1, patches + 1, v.hidden_size, v.intermediate_size) \
        + 2 * patches * 3 * v.patch_size ** 2 * v.hidden_size

    def qformer(cfg, text_len):
        d, f, total = cfg.hidden_size, cfg.intermediate_size, 0
        for i in range(cfg.num_hidden_layers):
            total += _layer(q + text_len, q + text_len, d, f)
            if i % cfg.cross_attention_frequency == 0:  # queries read the image: q, o on queries, k, v on patches
                total += 2 * q * 2 * d * d + 2 * (patches + 1) * 2 * cfg.encoder_hidden_size * d + 4 * q * (patches + 1) * d
        return total

    d, f, vocab, layers = t.hidden_size, t.ffn_dim, t.vocab_size, t.num_hidden_layers
    prompt = q + n_new  # [soft prompt; BOS; tokens[:-1]]: the rollout processes the same positions
    lm = layers * _layer(prompt, prompt / 2, d, f)
    lm_head = 2 * d * vocab * n_new
    soft = qformer(qf, 0) + 2 * q * qf.hidden_size * d
    head_width = t.word_embed_proj_dim
    head = 0
    if value_cfg.head == "transformer":
        head = value_cfg.head_layers * _layer(prompt, prompt / 2, head_width, f) \
            + 2 * prompt * 2 * head_width * value_cfg.head_mlp_ratio * head_width
    lora = layers * len(value_cfg.lora_targets) * prompt * 2 * 2 * value_cfg.lora_rank * max(d, f)
    stages = {
        "vit": vit,  # once: the ITM reads the captioner's trunk
        "rollout": soft + lm + lm_head,
        "itm": qformer(itm_cfg.qformer_config, ITM_TEXT_LENGTH),
        "reference_lm": layers * _layer(n_new + 1, (n_new + 1) / 2, d, f) + lm_head if variant == "vlrm" else 0,
        "value": 2 * lm + 3 * (head + lora),
        "policy": 2 * (lm + 2 * d * (SUPPORT_SLACK * top_k + 1) * n_new) + 3 * soft,
    }
    if variant == "vlrm_rs" and clip_cfg is not None:
        cv, ct = clip_cfg["vision_cfg"], clip_cfg["text_cfg"]
        cp = (cv["image_size"] // cv["patch_size"]) ** 2 + 1
        mlp = lambda cfg: int(cfg.get("mlp_ratio", 4.0) * cfg["width"])  # noqa: E731
        stages["clip"] = cv["layers"] * _layer(cp, cp, cv["width"], mlp(cv)) \
            + ct["layers"] * _layer(ct["context_length"], ct["context_length"], ct["width"], mlp(ct))
    stages["total"] = sum(stages.values())
    return stages


def matmul_peak(device: str, dtype: str) -> dict:
    """FLOP/s of the best of a few large square matmuls in each framework on this machine."""
    import jax
    import jax.numpy as jnp
    import torch

    from bench.jax_side import median_time

    n = 8192 if device == "cuda" else 2048
    jdt, tdt = (jnp.bfloat16, torch.bfloat16) if dtype == "bfloat16" else (jnp.float32, torch.float32)
    a = jnp.ones((n, n), jdt)
    f = jax.jit(lambda x: x @ x)
    jax_s = median_time(lambda: f(a), 5)
    x = torch.ones(n, n, dtype=tdt, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    x @ x
    sync()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        x @ x
        sync()
        times.append(time.perf_counter() - t)
    flops = 2 * n ** 3
    return dict(n=n, dtype=dtype, jax_flops_s=flops / jax_s, torch_flops_s=flops / float(np.median(times)),
                peak_flops_s=max(flops / jax_s, flops / float(np.median(times))))

