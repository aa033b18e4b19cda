"""The critic of the A2C update: the captioner's frozen OPT with LoRA adapters, then a value head.

    V = head(OPT(soft prompt ; BOS ; caption tokens, adapters = lora)) -> one scalar per token

The module holds only what the value trains: the adapters (`nnx.LoRAParam`, so filters can pick
them) and the head. The OPT it adapts is passed in at call time, so one copy of the frozen
weights serves the rollout, the policy update, the value trunk and the reference LM, and
generation never sees the adapters.

The paper's head is "more complex" than a linear layer (a linear head collapsed) and has about
275M parameters at OPT-2.7B width. The default here: three pre-LN transformer blocks of the OPT's
own shape (causal, so V_k reads only the prefix) and an MLP of width 6 * hidden to one scalar:
3 x 78.7M + 39.3M = 275.4M at width 2560. `head="linear"` is the single linear layer.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vlrm_jax.models import common
from vlrm_jax.models.opt import LORA_TARGETS, LoRAWeights, OPTBlock, OPTConfig, OPTForCausalLM, causal_mask, position_ids

HEADS = ("transformer", "linear")


@dataclasses.dataclass(frozen=True)
class ValueConfig:
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    head: str = "transformer"
    head_layers: int = 3
    head_mlp_ratio: int = 6  # MLP width = ratio * hidden: 275M parameters at OPT-2.7B width

    def __post_init__(self):
        if self.lora_rank < 1:
            raise ValueError(f"value lora_rank={self.lora_rank}: must be >= 1")
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"value lora_targets {unknown}: expected names among {LORA_TARGETS}")
        if self.head not in HEADS:
            raise ValueError(f"value head={self.head!r}: expected one of {HEADS}")
        if self.head == "transformer" and self.head_layers < 1:
            raise ValueError(f"value head_layers={self.head_layers}: must be >= 1")

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank


def _target_shape(cfg: OPTConfig, name: str) -> tuple[int, int]:
    d, f = cfg.hidden_size, cfg.ffn_dim
    return {"fc1": (d, f), "fc2": (f, d)}.get(name, (d, d))


class LoRAStack(nnx.Module):
    """One (a, b) pair per target, stacked over the OPT's layers. b starts at zero, as in peft,
    so an untrained value trunk is the frozen OPT itself."""

    def __init__(self, cfg: ValueConfig, opt: OPTConfig, rngs: nnx.Rngs):
        self.scale = cfg.lora_scale
        self.targets = tuple(cfg.lora_targets)
        n, r = opt.num_hidden_layers, cfg.lora_rank
        init_a = nnx.initializers.he_uniform()  # peft's kaiming-uniform a
        for name in self.targets:
            fan_in, fan_out = _target_shape(opt, name)
            a = init_a(rngs.params(), (n, fan_in, r), jnp.float32)
            setattr(self, f"{name}_a", nnx.LoRAParam(a, logical_axes=("layers", "embed", None)))
            setattr(self, f"{name}_b", nnx.LoRAParam(jnp.zeros((n, r, fan_out)), logical_axes=("layers", None, "embed")))

    def weights(self) -> LoRAWeights:
        adapters = {name: (getattr(self, f"{name}_a")[...], getattr(self, f"{name}_b")[...]) for name in self.targets}
        return LoRAWeights(adapters, self.scale)


def head_block_config(opt: OPTConfig) -> OPTConfig:
    """The head's blocks: the OPT's block shape at the width the OPT outputs, in fp32 (trained)."""
    width = opt.word_embed_proj_dim
    return dataclasses.replace(opt, hidden_size=width, num_hidden_layers=1, dtype="float32", param_dtype="float32",
                               do_layer_norm_before=True)


class ValueHead(nnx.Module):
    def __init__(self, cfg: ValueConfig, opt: OPTConfig, rngs: nnx.Rngs):
        width = opt.word_embed_proj_dim
        self.kind = cfg.head
        if cfg.head == "linear":
            self.out = common.dense(width, 1, ("embed", None), rngs=rngs)
            return
        block_cfg = head_block_config(opt)
        self.blocks = common.make_stack(lambda r: OPTBlock(block_cfg, r), cfg.head_layers, rngs)
        self.norm = common.layer_norm(width, opt.layer_norm_eps, rngs=rngs)
        self.fc1 = common.dense(width, cfg.head_mlp_ratio * width, ("embed", "mlp"), rngs=rngs)
        self.out = common.dense(cfg.head_mlp_ratio * width, 1, ("mlp", None), rngs=rngs)

    def __call__(self, hidden, mask):
        """hidden (B, T, E) trunk output, mask (B, 1, T, T) -> (B, T) fp32 values."""
        x = hidden.astype(jnp.float32)
        if self.kind == "transformer":
            x, _ = common.scan_stack(self.blocks, lambda block, h, _: (block(h, mask)[0], None), x)
            x = jax.nn.relu(self.fc1(self.norm(x)))
        return self.out(x)[..., 0]


class ValueNetwork(nnx.Module):
    def __init__(self, cfg: ValueConfig, opt: OPTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.lora = LoRAStack(cfg, opt, rngs)
        self.head = ValueHead(cfg, opt, rngs)

    def __call__(self, lm: OPTForCausalLM, embeds, attention_mask, remat: bool = False):
        """embeds (B, T, E): [soft prompt ; BOS ; tokens] as the policy reads them; attention_mask
        (B, T). Returns fp32 values (B, T), one per input position."""
        mask = causal_mask(attention_mask)
        hidden, _ = lm.decode(embeds, position_ids(attention_mask), mask, lora=self.lora.weights(), remat=remat)
        return self.head(hidden, mask)
