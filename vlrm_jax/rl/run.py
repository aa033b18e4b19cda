"""From a run config (configs/*.py) to the step, the data stream and the loop's hooks.

Everything is checked before anything compiles: a wrong type, an impossible value or a missing
folder raises `ConfigError` naming the key (main.py exits with status 2 on it). Models are read
from converted folders (`model.source="folders"`) exactly as `Captioner.load` & co. read them;
`model.source="random"` first writes tiny random folders into the workdir (configs/tiny.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import jax
import numpy as np

from vlrm_jax import sharding
from vlrm_jax.generate.config import GenerationConfig
from vlrm_jax.models.value import ValueConfig
from vlrm_jax.rl.assemble import SHARE_CHOICES
from vlrm_jax.rl.checkpoint import is_url
from vlrm_jax.rl.config import A2CConfig
from vlrm_jax.rl.loop import Hooks, LoopConfig

POSITIVE = ("total_steps", "checkpoint_every", "keep_checkpoints", "log_every", "batch_size", "max_skips_in_row")
NON_NEGATIVE = ("seed", "eval_every", "samples_every")
REWARDS = ("vlrm", "vlrm_rs", "token_count")
MODEL_SOURCES = ("folders", "random")
CHECKPOINT_URLS = ("gs://",)  # what orbax's path layer (etils.epath) writes to besides local folders


class ConfigError(ValueError):
    def __init__(self, key: str, why: str):
        super().__init__(f"config key {key}: {why}")
        self.key = key


def _int(cfg, key: str, minimum: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value}")
    return value


def _dataclass(cls, fields: dict, prefix: str):
    known = {f.name for f in dataclasses.fields(cls)}
    for name in fields:
        if name not in known:
            raise ConfigError(f"{prefix}.{name}", f"unknown; expected one of {sorted(known)}")
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        # the field the message names as a word (estimator is not kl_estimator)
        name = next((n for n in fields if re.search(rf"\b{n}\b", str(e))), "")
        raise ConfigError(f"{prefix}.{name}" if name else prefix, str(e)) from None


def _folder(cfg, key: str, kind: str | None = None) -> str:
    path = cfg.model[key]
    if not path:
        raise ConfigError(f"model.{key}", "no folder given")
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise ConfigError(f"model.{key}", f"{path!r} is not a model folder (no config.json)")
    if kind is not None:
        found = json.loads(Path(config).read_text()).get("kind")
        if found != kind:
            raise ConfigError(f"model.{key}", f"{path!r} holds a {found!r} model, expected {kind!r}")
    return path


def validate(cfg, device_count: int | None = None, process_count: int | None = None,
             check_paths: bool = True) -> dict:
    """The typed parts of a run config; raises ConfigError naming the first bad key. The mesh is
    checked against this machine's devices and processes unless others are given (a compile
    target's); check_paths=False leaves folders and data sources unread (a step built from
    shapes alone)."""
    from vlrm_jax.checkpoint import kinds

    for key in POSITIVE:
        _int(cfg, key, 1)
    for key in NON_NEGATIVE:
        _int(cfg, key, 0)
    a2c = _dataclass(A2CConfig, dict(cfg.a2c), "a2c")
    value = _dataclass(ValueConfig, dict(cfg.value), "value")
    rollout = _dataclass(GenerationConfig, {**dict(cfg.rollout), "do_sample": True}, "rollout")
    if cfg.batch_size % a2c.micro_batches:
        raise ConfigError("batch_size", f"{cfg.batch_size} does not split into a2c.micro_batches={a2c.micro_batches}")
    shape = _mesh(cfg, jax.device_count() if device_count is None else device_count,
                  jax.process_count() if process_count is None else process_count)
    rules = _rules_table(cfg)
    split = shape[0] * shape[1]  # data x fsdp: the batch axes
    if cfg.batch_size % split:
        raise ConfigError("batch_size", f"{cfg.batch_size} images do not divide over data x fsdp = {split} devices")
    captions = cfg.batch_size * a2c.samples_per_image
    if captions % (a2c.minibatches * a2c.micro_batches):
        raise ConfigError("batch_size", f"{captions} captions per rollout do not split into a2c.minibatches="
                                        f"{a2c.minibatches} x a2c.micro_batches={a2c.micro_batches}")
    rows = captions // (a2c.minibatches * a2c.micro_batches)
    if rows % split:
        raise ConfigError("batch_size", f"a micro-batch of {rows} captions does not divide over data x fsdp = "
                                        f"{split} devices (mesh {dict(zip(sharding.MESH_AXES, shape))})")
    if is_url(cfg.workdir):
        raise ConfigError("workdir", f"{cfg.workdir!r}: metrics, samples and TensorBoard are written through local "
                                     "paths; use a local or mounted (NFS, gcsfuse) folder, and "
                                     "checkpoint_dir=gs://... for the checkpoints")
    if is_url(cfg.checkpoint_dir) and not cfg.checkpoint_dir.startswith(CHECKPOINT_URLS):
        raise ConfigError("checkpoint_dir", f"{cfg.checkpoint_dir!r}: expected a folder or a URL starting with "
                                            f"one of {CHECKPOINT_URLS}")
    if cfg.reward.kind not in REWARDS:
        raise ConfigError("reward.kind", f"{cfg.reward.kind!r}: expected one of {REWARDS}")
    for key in ("sim", "rs"):
        weight = cfg.reward.weights[key]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"reward.weights.{key}", f"expected a number >= 0, got {weight!r}")
    if cfg.model.source not in MODEL_SOURCES:
        raise ConfigError("model.source", f"{cfg.model.source!r}: expected one of {MODEL_SOURCES}")
    for key in ("share_trunk", "share_ref_lm"):
        if cfg.model[key] not in SHARE_CHOICES:
            raise ConfigError(f"model.{key}", f"{cfg.model[key]!r}: expected one of {SHARE_CHOICES}")
    if not check_paths:
        return dict(a2c=a2c, value=value, rollout=rollout, mesh_shape=shape, rules=rules)
    if cfg.model.source == "folders":
        _folder(cfg, "captioner", kinds.BLIP2_OPT)
        if cfg.reward.kind != "token_count":
            _folder(cfg, "itm", kinds.BLIP2_ITM)
        if cfg.model.ref_lm:
            _folder(cfg, "ref_lm")
        if cfg.reward.kind == "vlrm_rs":
            _folder(cfg, "clip", kinds.OPEN_CLIP)
    if isinstance(cfg.eval.no_repeat_ngram_size, bool) or not isinstance(cfg.eval.no_repeat_ngram_size, int) \
            or cfg.eval.no_repeat_ngram_size < 0:
        raise ConfigError("eval.no_repeat_ngram_size", f"expected an integer >= 0, got {cfg.eval.no_repeat_ngram_size!r}")
    if cfg.eval.source:
        if not cfg.eval.clip:
            raise ConfigError("eval.clip", "evaluation needs the OpenCLIP folder that ranks the captions")
        if not cfg.eval.source.startswith("tfds:") and not os.path.isdir(cfg.eval.source):
            raise ConfigError("eval.source", f"{cfg.eval.source!r} is no folder")
    if cfg.data.source != "random" and not cfg.data.source.startswith("tfds:") and "*" not in cfg.data.source \
            and not os.path.exists(cfg.data.source):
        raise ConfigError("data.source", f"{cfg.data.source!r} does not exist")
    return dict(a2c=a2c, value=value, rollout=rollout, mesh_shape=shape, rules=rules)


def _mesh(cfg, present: int, processes: int) -> tuple[int, ...]:
    """(data, fsdp, tensor) sizes. One process may use fewer devices than it has (the first
    ones); several processes must use every device, since each must hold part of the mesh."""
    sizes = dict(cfg.mesh)
    for name in sizes:
        if name not in sharding.MESH_AXES:
            raise ConfigError(f"mesh.{name}", f"unknown mesh axis; expected {sharding.MESH_AXES}")
    for name in sharding.MESH_AXES:
        value = sizes.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value >= 1):
            raise ConfigError(f"mesh.{name}", f"expected an integer >= 1 or -1 (the rest of the devices), got {value!r}")
    if list(sizes.values()).count(-1) > 1:
        raise ConfigError("mesh", f"{sizes}: at most one size may be -1")
    fixed = int(np.prod([v for v in sizes.values() if v != -1]))
    total = present if -1 in sizes.values() else fixed
    if total > present or (processes > 1 and total != present):
        raise ConfigError("mesh", f"{sizes} needs {total} devices; {present} are present"
                                  + (f" over {processes} processes, and all must be used" if processes > 1 else ""))
    try:
        return sharding.mesh_shape(sizes, total)
    except ValueError as e:
        raise ConfigError("mesh", str(e)) from None


def _rules_table(cfg) -> tuple:
    rules = tuple(tuple(r) if isinstance(r, (list, tuple)) else r for r in cfg.mesh_rules)
    try:
        sharding.check_rules(rules)
    except ValueError as e:
        raise ConfigError("mesh_rules", str(e)) from None
    return tuple((name, tuple(t) if isinstance(t, list) else t) for name, t in rules)


def check_distributed(cfg) -> None:
    """The `distributed` keys, checked before jax is initialised (so before `validate`)."""
    d = cfg.distributed
    known = {"enabled", "coordinator_address", "num_processes", "process_id", "cpu_collectives", "timeout_s"}
    for name in d:
        if name not in known:
            raise ConfigError(f"distributed.{name}", f"unknown; expected one of {sorted(known)}")
    if not isinstance(d.enabled, bool):
        raise ConfigError("distributed.enabled", f"expected True or False, got {d.enabled!r}")
    for name, minimum in (("num_processes", 0), ("process_id", -1), ("timeout_s", 1)):
        value = d[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"distributed.{name}", f"expected an integer >= {minimum}, got {value!r}")
    explicit = [bool(d.coordinator_address), d.num_processes > 0, d.process_id >= 0]
    if any(explicit) and not all(explicit):
        raise ConfigError("distributed", "give coordinator_address, num_processes and process_id together, "
                                         "or none of them (jax then detects the cluster)")
    if all(explicit) and d.process_id >= d.num_processes:
        raise ConfigError("distributed.process_id", f"{d.process_id} not below num_processes={d.num_processes}")
    if d.cpu_collectives not in ("gloo", "mpi", "none"):
        raise ConfigError("distributed.cpu_collectives", f"{d.cpu_collectives!r}: expected gloo, mpi or none")


# ----------------------------------------------------------------------------------------------
def write_random_captioner(m, folder: Path) -> str:
    """A BLIP2 of the configured tiny sizes, every weight normal(0, init_std) and norms around 1,
    written as a model folder with what a converter would have written beside the parameters:
    a tokenizer of the model's vocabulary (`random_captioner_tokenizer`), Blip2Processor's files
    and the transformers config."""
    from flax import nnx

    from vlrm_jax.checkpoint import kinds
    from vlrm_jax.checkpoint import transformers_files
    from vlrm_jax.checkpoint.model_dir import write_model_dir
    from vlrm_jax.models.blip2 import Blip2Captioner, Blip2Config
    from vlrm_jax.models.build import flat_params
    from vlrm_jax.models.opt import OPTConfig
    from vlrm_jax.models.qformer import QFormerConfig
    from vlrm_jax.models.vit import VisionConfig

    if (folder / "config.json").is_file():
        return str(folder)
    w = m.width
    cfg = Blip2Config(
        vision=VisionConfig(hidden_size=w, intermediate_size=3 * w // 2, num_hidden_layers=m.vision_layers,
                            num_attention_heads=2, image_size=m.image_size, patch_size=m.patch_size),
        qformer=QFormerConfig(hidden_size=w, intermediate_size=3 * w // 2, num_hidden_layers=m.qformer_layers,
                              num_attention_heads=2, encoder_hidden_size=w, vocab_size=m.vocab_size,
                              max_position_embeddings=32),
        text=OPTConfig(vocab_size=m.vocab_size, hidden_size=w, ffn_dim=3 * w // 2, num_hidden_layers=m.opt_layers,
                       num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=w),
        num_query_tokens=m.num_query_tokens, image_token_index=m.vocab_size - 1)  # as transformers lays BLIP2 input out
    model = Blip2Captioner(cfg, rngs=nnx.Rngs(m.seed))
    rng = np.random.default_rng(m.seed)
    params = {}
    for path, value in flat_params(model).items():
        base = 1.0 if "scale" in path else 0.0
        params[path] = np.asarray(base + m.init_std * rng.normal(size=value.shape), np.float32)
    with transformers_files.staging_folder() as side:
        random_captioner_tokenizer(m.vocab_size).save_pretrained(side)
        model_cfg, hf_config = transformers_files.complete_captioner_files(side, cfg.to_dict(), None)
        write_model_dir(str(folder), kinds.BLIP2_OPT, model_cfg, params, hf_config=hf_config,
                        extra_files=transformers_files.side_files(side, set()))
    return str(folder)


def random_captioner_tokenizer(vocab_size: int):
    """The random captioner's tokenizer: the shapes world's words, one id each, `<image>` last
    (its image_token_index), exactly `vocab_size` ids."""
    from vlrm_jax.world.tokenizers import word_level_tokenizer, world_words

    return word_level_tokenizer(world_words(), vocab_size)


def _random_captioner_once(cfg) -> str:
    """The tiny random captioner folder, written by process 0 first (orbax on its own, see
    model_dir); the others then find it on a shared disk or write the same folder themselves."""
    from vlrm_jax import distributed

    folder = Path(cfg.workdir) / "models" / "captioner"
    if distributed.is_main():
        write_random_captioner(cfg.model, folder)
    distributed.barrier("random_captioner")
    return write_random_captioner(cfg.model, folder)


def _rules(reward):
    from vlrm_jax.rewards.penalties import PenaltyRules

    base = PenaltyRules.from_files(reward.bad_phrases or None, reward.exempt_words or None)
    return PenaltyRules(base.bad_phrases, base.exempt_words | frozenset(reward.extra_exempt_words),
                        base.penalise_years)


def _scorer(cfg, rollout, captioner, clip):
    from transformers import AutoTokenizer

    from vlrm_jax.rl.assemble import reward_scorer

    text = captioner.module.cfg.text
    if cfg.reward.kind == "token_count":  # no tokenizer to read
        return reward_scorer(cfg, rollout, text)
    return reward_scorer(cfg, rollout, text, captioner.tokenizer, AutoTokenizer.from_pretrained(cfg.model.itm),
                         clip.tokenizer if clip is not None else None,
                         clip.context_length if clip is not None else 77, _rules(cfg.reward))


def _evaluator(cfg, step, captioner_dir: str):
    """CLIP Recall of the current policy on the held-out source, captions by the paper's beam."""
    from vlrm_jax.api import Captioner
    from vlrm_jax.clip_api import ClipModel
    from vlrm_jax.eval.clip_eval import collect, recall_table
    from vlrm_jax.evaluate import open_source

    clip = ClipModel.load(cfg.eval.clip)
    generation = dataclasses.asdict(GenerationConfig.paper_inference(no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size))

    def evaluate(state, done: int) -> dict:
        captioner = Captioner(step.policy_module(state), captioner_dir)
        data = collect(open_source(cfg.eval.source), clip, captioner, batch_size=cfg.eval.batch_size,
                       limit=cfg.eval.limit or None, progress=False, generation=generation)
        return recall_table(clip, data, name="policy")["policy"]

    return evaluate


def _check_vocabulary(key: str, folder: str, vocab_size: int) -> None:
    """A folder's tokenizer must not make ids the model cannot embed (a tokenizer of another
    model copied in): caught here, before anything compiles, with the file named."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        return
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(folder))
    if n > vocab_size:
        raise ConfigError(key, f"{path} has {n} tokens, more than the model's vocabulary of {vocab_size}")


def build(cfg):
    """(A2CStep, data stream, LoopConfig, Hooks) of a validated config."""
    from vlrm_jax.api import Captioner, ItmScorer, ReferenceLM
    from vlrm_jax.clip_api import ClipModel
    from vlrm_jax.rl.assemble import Models, make_step
    from vlrm_jax.rl.data import ImageStream, RandomStream, open_training_source

    parts = validate(cfg)
    captioner_dir = cfg.model.captioner
    if cfg.model.source == "random":
        captioner_dir = _random_captioner_once(cfg)
    dtype = cfg.model.dtype or None
    captioner = Captioner.load(captioner_dir, dtype=dtype, param_dtype=dtype)
    itm = ItmScorer.load(cfg.model.itm, dtype=dtype, param_dtype=dtype) if cfg.reward.kind != "token_count" else None
    ref_lm = None
    if cfg.reward.kind == "vlrm":  # "" -> the captioner's own OPT (shared, held once)
        ref_lm = ReferenceLM.load(cfg.model.ref_lm, dtype=dtype, param_dtype=dtype) if cfg.model.ref_lm else None
    clip = ClipModel.load(cfg.model.clip, dtype=dtype, param_dtype=dtype) if cfg.reward.kind == "vlrm_rs" else None
    _check_vocabulary("model.captioner", captioner_dir, captioner.module.cfg.text.vocab_size)
    if itm is not None:
        _check_vocabulary("model.itm", cfg.model.itm, itm.module.cfg.qformer.vocab_size)
    scorer = _scorer(cfg, parts["rollout"], captioner, clip)
    # no separate reference LM: the captioner's own OPT, held once
    models = Models(captioner.module, itm.module if itm else None, ref_lm.module if ref_lm else None,
                    clip.module if clip else None)
    step = make_step(cfg, parts, models, scorer, jax.devices())
    shape = parts["mesh_shape"]
    rows = step.process_rows(cfg.batch_size)  # this process's share of every batch
    if (rows.stop - rows.start) * jax.process_count() != cfg.batch_size:
        raise ConfigError("mesh", f"{dict(zip(sharding.MESH_AXES, shape))}: processes share rows of the batch "
                                  f"(this one holds {rows.start}..{rows.stop} of {cfg.batch_size}); put every "
                                  "process on its own rows (data x fsdp a multiple of the process count)")
    size = captioner.module.cfg.vision.image_size
    if cfg.data.source == "random":
        stream = RandomStream(cfg.seed, cfg.batch_size, size, rows=rows)
    else:  # the source reads this process's part of the data (split by jax.process_index)
        source = open_training_source(cfg.data.source, cfg.seed, cfg.data.workers, cfg.data.min_side)
        stream = ImageStream(source, rows.stop - rows.start, size, clip.preprocess_config if clip is not None else None)
    loop = LoopConfig(workdir=cfg.workdir, checkpoint_dir=cfg.checkpoint_dir, total_steps=cfg.total_steps,
                      checkpoint_every=cfg.checkpoint_every,
                      log_every=cfg.log_every, keep_checkpoints=cfg.keep_checkpoints,
                      max_skips_in_row=cfg.max_skips_in_row, samples_every=cfg.samples_every,
                      eval_every=cfg.eval_every)
    has_tokenizer = os.path.isfile(os.path.join(captioner_dir, "tokenizer_config.json"))
    hooks = Hooks(decode=captioner.decode if has_tokenizer else None,
                  evaluate=_evaluator(cfg, step, captioner_dir) if cfg.eval.source else None)
    return step, stream, loop, hooks, captioner_dir
