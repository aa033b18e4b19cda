"""Name tables for the PyTorch -> Flax mapping of each model part.

Each function returns the rules of one part, with the PyTorch and Flax prefixes under which that
part sits (BLIP2's ViT sits under `vision_model.` in both the captioner and BLIP2-ITM; the OPT
decoder under `language_model.model.decoder.` in BLIP2 and `model.decoder.` alone).
Layer sets: `vision`, `qformer`, `qformer_cross`, `qformer_text`, `opt`; flags gate optional parts.
"""
from __future__ import annotations

import numpy as np

from convert.sources import TensorSource
from convert.table import CONV, IDENTITY, LINEAR, Rule


def _linear(src: str, dst: str, layers: str | None, bias: bool = True) -> list[Rule]:
    rules = [Rule(f"{src}.weight", f"{dst}.kernel", LINEAR, layers)]
    if bias:
        rules.append(Rule(f"{src}.bias", f"{dst}.bias", IDENTITY, layers))
    return rules


def _norm(src: str, dst: str, layers: str | None) -> list[Rule]:
    return [Rule(f"{src}.weight", f"{dst}.scale", IDENTITY, layers), Rule(f"{src}.bias", f"{dst}.bias", IDENTITY, layers)]


def vision_rules(src: str = "vision_model.", dst: str = "vision_model.", post_norm: bool = True) -> list[Rule]:
    lay, to = f"{src}encoder.layers.{{i}}.", f"{dst}layers."
    rules = [
        Rule(f"{src}embeddings.class_embedding", f"{dst}class_embedding"),
        Rule(f"{src}embeddings.position_embedding", f"{dst}position_embedding"),
        Rule(f"{src}embeddings.patch_embedding.weight", f"{dst}patch_embedding.kernel", CONV),
        Rule(f"{src}embeddings.patch_embedding.bias", f"{dst}patch_embedding.bias"),
        *_linear(f"{lay}self_attn.qkv", f"{to}qkv", "vision"),
        *_linear(f"{lay}self_attn.projection", f"{to}projection", "vision"),
        *_norm(f"{lay}layer_norm1", f"{to}layer_norm1", "vision"),
        *_linear(f"{lay}mlp.fc1", f"{to}fc1", "vision"),
        *_linear(f"{lay}mlp.fc2", f"{to}fc2", "vision"),
        *_norm(f"{lay}layer_norm2", f"{to}layer_norm2", "vision"),
    ]
    if post_norm:
        rules += _norm(f"{src}post_layernorm", f"{dst}post_layernorm", None)
    return rules


def _qformer_attention(src: str, dst: str, layers: str) -> list[Rule]:
    return [
        *_linear(f"{src}.attention.query", f"{dst}.query", layers),
        *_linear(f"{src}.attention.key", f"{dst}.key", layers),
        *_linear(f"{src}.attention.value", f"{dst}.value", layers),
        *_linear(f"{src}.output.dense", f"{dst}.dense", layers),
        *_norm(f"{src}.output.LayerNorm", f"{dst}.norm", layers),
    ]


def _qformer_ffn(intermediate: str, output: str, dst: str, layers: str) -> list[Rule]:
    return [
        *_linear(f"{intermediate}.dense", f"{dst}.intermediate", layers),
        *_linear(f"{output}.dense", f"{dst}.output", layers),
        *_norm(f"{output}.LayerNorm", f"{dst}.norm", layers),
    ]


def qformer_rules(src: str = "qformer.", dst: str = "qformer.") -> list[Rule]:
    lay, to = f"{src}encoder.layer.{{i}}.", f"{dst}layers.{{i}}."
    return [
        *_norm(f"{src}layernorm", f"{dst}layernorm", None),
        *_qformer_attention(f"{lay}attention", f"{to}self_attention", "qformer"),
        *_qformer_attention(f"{lay}crossattention", f"{to}cross_attention", "qformer_cross"),
        *_qformer_ffn(f"{lay}intermediate_query", f"{lay}output_query", f"{to}ffn_query", "qformer"),
        *_qformer_ffn(f"{lay}intermediate", f"{lay}output", f"{to}ffn_text", "qformer_text"),
    ]


def opt_rules(src: str, dst: str, *, project: bool, final_norm: bool) -> list[Rule]:
    lay, to = f"{src}layers.{{i}}.", f"{dst}layers."
    rules = [
        Rule(f"{src}embed_tokens.weight", f"{dst}embed_tokens.embedding"),
        Rule(f"{src}embed_positions.weight", f"{dst}embed_positions.embedding"),
        *[r for name in ("q_proj", "k_proj", "v_proj", "out_proj") for r in _linear(f"{lay}self_attn.{name}", f"{to}{name}", "opt")],
        *_norm(f"{lay}self_attn_layer_norm", f"{to}self_attn_layer_norm", "opt"),
        *_linear(f"{lay}fc1", f"{to}fc1", "opt"),
        *_linear(f"{lay}fc2", f"{to}fc2", "opt"),
        *_norm(f"{lay}final_layer_norm", f"{to}final_layer_norm", "opt"),
    ]
    if project:
        rules += _linear(f"{src}project_in", f"{dst}project_in", None, bias=False)
        rules += _linear(f"{src}project_out", f"{dst}project_out", None, bias=False)
    if final_norm:
        rules += _norm(f"{src}final_layer_norm", f"{dst}final_layer_norm", None)
    return rules


def qformer_layer_sets(cfg) -> dict[str, list[int]]:
    n = cfg.num_hidden_layers
    return {
        "qformer": list(range(n)),
        "qformer_cross": [i for i in range(n) if i % cfg.cross_attention_frequency == 0],
        "qformer_text": list(range(n)) if cfg.use_qformer_text_input else [],
    }


def adapt_legacy_qkv_bias(source: TensorSource, prefix: str, num_layers: int) -> TensorSource:
    """Older BLIP2 checkpoints store the ViT attention bias as q_bias and v_bias; transformers 5
    stores one qkv.bias = (q_bias, 0, v_bias). Present the legacy layout as the new one."""
    original, legacy = source, []
    for i in range(num_layers):
        base = f"{prefix}encoder.layers.{i}.self_attn."
        if f"{base}q_bias" in source and f"{base}qkv.bias" not in source:
            q, v = f"{base}q_bias", f"{base}v_bias"
            shape = (3 * original.shape(q)[0],)

            def load(q=q, v=v):
                qb, vb = original.load(q), original.load(v)
                return np.concatenate([qb, np.zeros_like(qb), vb])

            source = source.with_extra(f"{base}qkv.bias", shape, load)
            legacy += [q, v]
    return source.without(legacy)
