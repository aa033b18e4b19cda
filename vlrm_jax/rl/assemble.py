"""The training step of a run config, built one way from either of two kinds of model:

- loaded: converted folders read into arrays (what main.py trains with, `run.build`);
- abstract: the same modules with shapes in place of arrays (`nnx.eval_shape`), from the folders'
  config.json or, where a folder does not exist, from the released checkpoints' shapes
  (`vlrm_jax.models.released`). An abstract step lowers and compiles for any device list, a TPU
  topology on a CPU machine included (`vlrm_jax.aot`), and cannot run.

Both go through `make_step`: the value network, the mesh and the sharing of frozen work are
decided here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from flax import nnx

from vlrm_jax import sharding

# model.share_trunk / model.share_ref_lm: "auto" compares loaded weights (an abstract build takes
# the released checkpoints' facts: the ITM's ViT trunk is the captioner's, the reference LM is the
# captioner's OPT); "yes" / "no" decide without looking (a "yes" on unequal weights is the user's call).


@dataclasses.dataclass
class Models:
    """The modules a step reads (concrete or abstract), None where the reward needs none."""

    captioner: Any
    itm: Any = None
    ref_lm: Any = None  # None: the captioner's own OPT (vlrm) or no reference term (vlrm_rs)
    clip: Any = None


def share_flag(model, key: str, abstract: bool) -> bool | None:
    value = getattr(model, key)
    if value == "auto":
        return True if abstract else None
    return value == "yes"


def make_step(spec, models: Models, scorer, devices):
    """The A2CStep of a validated config (`spec.validate`'s RunSpec) on `devices` (the first
    data x fsdp x tensor of them; one device and concrete models: no mesh)."""
    from vlrm_jax.models.value import ValueNetwork
    from vlrm_jax.rl.placement import is_abstract
    from vlrm_jax.rl.step import A2CStep

    abstract = is_abstract(models.captioner)
    text_cfg = models.captioner.cfg.text
    make_value = lambda: ValueNetwork(spec.value, text_cfg, rngs=nnx.Rngs(spec.seed + 1))  # noqa: E731
    value_net = nnx.eval_shape(make_value) if abstract else make_value()
    shape = spec.mesh_shape
    count = int(np.prod(shape))
    mesh = sharding.make_mesh(shape, devices=list(devices)[:count]) if count > 1 or abstract else None
    lm = models.ref_lm if models.ref_lm is not None else (
        models.captioner.language_model if spec.reward.kind == "vlrm" else None)
    share_ref = True if models.ref_lm is None else share_flag(spec.model, "share_ref_lm", abstract)
    return A2CStep(spec.a2c, models.captioner, value_net, scorer, spec.rollout, itm=models.itm,
                   ref_lm=lm, clip=models.clip, mesh=mesh, rules=spec.rules,
                   share_trunk=share_flag(spec.model, "share_trunk", abstract), share_ref_lm=share_ref)


# ----------------------------------------------------------------------------------------------
# Abstract models: shapes from config.json or the released checkpoints.
def _folder_config(path: str, kind: str) -> dict | None:
    """A converted folder's model config, or None when no folder is there (released shapes)."""
    from vlrm_jax.checkpoint import model_dir as md

    if not path or not os.path.isfile(os.path.join(path, md.CONFIG_FILE)):
        return None
    return md.check_kind(path, kind)["model"]


def _cut(cfg, layers: int | None, *towers: str):
    """The config with every named tower cut to `layers` layers (widths unchanged)."""
    if layers is None:
        return cfg
    changes = {}
    for name in towers:
        sub = getattr(cfg, name)
        field = "layers" if hasattr(sub, "layers") else "num_hidden_layers"
        changes[name] = dataclasses.replace(sub, **{field: layers})
    return dataclasses.replace(cfg, **changes)


def model_configs(cfg, layers: int | None = None) -> dict[str, Any]:
    """{captioner, itm, ref_lm, clip} configs of the run (None where the reward reads no such
    model), each from its folder's config.json or the released shapes, in the run's dtype,
    cut to `layers` layers per tower if given."""
    from vlrm_jax.checkpoint import kinds
    from vlrm_jax.loading import override_precision
    from vlrm_jax.models import released
    from vlrm_jax.models.blip2 import Blip2Config
    from vlrm_jax.models.clip import ClipConfig
    from vlrm_jax.models.itm import ItmConfig
    from vlrm_jax.models.opt import OPTConfig

    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
        raise ValueError(f"layers must be an integer >= 1, got {layers!r}")
    dtype = cfg.model.dtype or None
    found = _folder_config(cfg.model.captioner, kinds.BLIP2_OPT)
    captioner = Blip2Config.from_dict(found) if found else released.captioner()
    out = {"captioner": _cut(override_precision(captioner, dtype, dtype, ("vision", "text")), layers,
                             "vision", "qformer", "text"),
           "itm": None, "ref_lm": None, "clip": None}
    if cfg.reward.kind != "token_count":
        found = _folder_config(cfg.model.itm, kinds.BLIP2_ITM)
        itm = ItmConfig.from_dict(found) if found else released.itm()
        out["itm"] = _cut(override_precision(itm, dtype, dtype, ("vision",)), layers, "vision", "qformer")
    if cfg.reward.kind == "vlrm" and cfg.model.ref_lm:
        found = _folder_config(cfg.model.ref_lm, kinds.OPT)
        ref = OPTConfig(**found) if found else released.captioner().text
        ref = override_precision(ref, dtype, dtype, ("",))
        out["ref_lm"] = ref if layers is None else dataclasses.replace(ref, num_hidden_layers=layers)
    if cfg.reward.kind == "vlrm_rs":
        found = _folder_config(cfg.model.clip, kinds.OPEN_CLIP)
        clip = ClipConfig.from_dict(found) if found else released.clip("ViT-bigG-14")
        out["clip"] = _cut(override_precision(clip, dtype, dtype, ("vision", "text")), layers, "vision", "text")
    return out


def abstract_models(configs: dict[str, Any]) -> Models:
    """The modules of `model_configs` with shapes in place of arrays (no memory, no init)."""
    from vlrm_jax.models import build
    from vlrm_jax.models.blip2 import Blip2Captioner
    from vlrm_jax.models.clip import ClipModel
    from vlrm_jax.models.itm import Blip2Itm
    from vlrm_jax.models.opt import OPTForCausalLM

    classes = {"captioner": Blip2Captioner, "itm": Blip2Itm, "ref_lm": OPTForCausalLM, "clip": ClipModel}
    return Models(**{name: None if c is None else build.abstract(lambda cls=classes[name], c=c: cls(c, rngs=nnx.Rngs(0)))
                     for name, c in configs.items()})


def reward_scorer(cfg, rollout, text, captioner_tokenizer=None, itm_tokenizer=None, clip_tokenizer=None,
                  clip_context_length: int = 77, rules=None):
    """The run's scorer: TokenCountScorer for reward.kind="token_count" (no tokenizer read), else
    the VLRM / VLRM-RS reward retokenising with the given tokenizers; text: the captioner's
    OPTConfig; rules: the penalty rules (None: the shipped lists)."""
    from vlrm_jax.rewards.penalties import PenaltyRules
    from vlrm_jax.rewards.reward import RewardConfig
    from vlrm_jax.rewards.retokenize import Retokenizer
    from vlrm_jax.rl.scoring import TokenCountScorer, VlrmScorer

    if cfg.reward.kind == "token_count":
        return TokenCountScorer(cfg.reward.target, text.eos_token_id)
    weights = cfg.reward.weights
    reward = RewardConfig.vlrm(weights.sim) if cfg.reward.kind == "vlrm" else RewardConfig.vlrm_rs(weights.sim, weights.rs)
    retok = Retokenizer(captioner_tokenizer, rollout.max_new_tokens,
                        rules=PenaltyRules.default() if rules is None else rules,
                        itm_tokenizer=itm_tokenizer, itm_max_length=cfg.reward.itm_max_length,
                        clip_tokenizer=clip_tokenizer, clip_context_length=clip_context_length,
                        eos_token_id=text.eos_token_id)
    return VlrmScorer(reward, retok, bos_token_id=text.bos_token_id)


def shapes_only_scorer(cfg, rollout, models: Models):
    """The run's scorer for an abstract step: the same reward, with tokenizers that only give the
    retokenisation's output shapes (the program is compiled, never run)."""
    from vlrm_jax.rewards.retokenize import SHAPES_ONLY

    clip = models.clip
    return reward_scorer(cfg, rollout, models.captioner.cfg.text, SHAPES_ONLY, SHAPES_ONLY,
                         SHAPES_ONLY if clip is not None else None,
                         clip.cfg.text.context_length if clip is not None else 77)


def abstract_step(cfg, devices, layers: int | None = None):
    """The config's A2CStep over `devices` (e.g. a TPU topology's), from shapes alone: the same
    checks as main.py (`spec.validate`, the device count from `devices`), no folder or tokenizer
    read beyond the config.json of the folders that exist."""
    from vlrm_jax.rl.spec import validate

    devices = list(devices)
    processes = len({d.process_index for d in devices})
    spec = validate(cfg, device_count=len(devices), process_count=processes, check_paths=False)
    models = abstract_models(model_configs(spec, layers))
    scorer = shapes_only_scorer(spec, spec.rollout, models)
    return make_step(spec, models, scorer, devices), spec
