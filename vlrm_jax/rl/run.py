"""From a run config (configs/*.py) to the trainer, the data stream and the loop's hooks.

The config is validated first (`vlrm_jax/rl/spec.py`): a wrong type, an impossible value or a
missing folder raises `ConfigError` naming the key (main.py exits with status 2 on it), before
anything compiles. Models are read from converted folders (`model.source="folders"`) exactly as
`Captioner.load` & co. read them; `model.source="random"` first writes tiny random folders into
the workdir (configs/tiny.py). `train` is the whole run: build, record the config, train.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from ml_collections import ConfigDict

from vlrm_jax import sharding
from vlrm_jax.generate.config import GenerationConfig
from vlrm_jax.rl.loop import Hooks, LoopConfig
from vlrm_jax.rl.sections import ConfigError, EvalConfig, RewardConfig
from vlrm_jax.rl.spec import RULES_KEY, SECTIONS, RunSpec, distributed_config, validate

__all__ = ["ConfigError", "RULES_KEY", "SECTIONS", "Run", "RunSpec", "build", "distributed_config", "train",
           "validate"]


class Run(NamedTuple):
    """What `build` makes of a config: the trainer (an A2CStep), the data stream, the loop's
    config and hooks, and the captioner's folder (written first for model.source="random")."""

    trainer: Any
    stream: Any
    loop: LoopConfig
    hooks: Hooks
    captioner_dir: str


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


def _random_captioner_once(spec: RunSpec) -> str:
    """The tiny random captioner folder, written by process 0 first (orbax on its own, see
    model_dir); the others then find it on a shared disk or write the same folder themselves."""
    from vlrm_jax import distributed

    folder = Path(spec.loop.workdir) / "models" / "captioner"
    if distributed.is_main():
        write_random_captioner(spec.model, folder)
    distributed.barrier("random_captioner")
    return write_random_captioner(spec.model, folder)


def _rules(reward: RewardConfig):
    from vlrm_jax.rewards.penalties import PenaltyRules

    base = PenaltyRules.from_files(reward.bad_phrases or None, reward.exempt_words or None)
    return PenaltyRules(base.bad_phrases, base.exempt_words | frozenset(reward.extra_exempt_words),
                        base.penalise_years)


def _scorer(spec: RunSpec, captioner, clip):
    from transformers import AutoTokenizer

    from vlrm_jax.rl.assemble import reward_scorer

    text = captioner.module.cfg.text
    if spec.reward.kind == "token_count":  # no tokenizer to read
        return reward_scorer(spec, spec.rollout, text)
    return reward_scorer(spec, spec.rollout, text, captioner.tokenizer, AutoTokenizer.from_pretrained(spec.model.itm),
                         clip.tokenizer if clip is not None else None,
                         clip.context_length if clip is not None else 77, _rules(spec.reward))


def _evaluator(settings: EvalConfig, trainer, captioner_dir: str):
    """CLIP Recall of the current policy on the held-out source, captions by the paper's beam."""
    from vlrm_jax.api import Captioner
    from vlrm_jax.clip_api import ClipModel
    from vlrm_jax.eval.clip_eval import collect, recall_table
    from vlrm_jax.evaluate import open_source

    clip = ClipModel.load(settings.clip)
    generation = dataclasses.asdict(GenerationConfig.paper_inference(no_repeat_ngram_size=settings.no_repeat_ngram_size))

    def evaluate(state, done: int) -> dict:
        captioner = Captioner(trainer.policy_module(state), captioner_dir)
        data = collect(open_source(settings.source), clip, captioner, batch_size=settings.batch_size,
                       limit=settings.limit or None, progress=False, generation=generation)
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


def build(cfg: ConfigDict) -> Run:
    """The Run of a config (validated first)."""
    from vlrm_jax.api import Captioner, ItmScorer, ReferenceLM
    from vlrm_jax.clip_api import ClipModel
    from vlrm_jax.rl.assemble import Models, make_step
    from vlrm_jax.rl.data import ImageStream, RandomStream, open_training_source

    spec = validate(cfg)
    model, kind = spec.model, spec.reward.kind
    captioner_dir = _random_captioner_once(spec) if model.source == "random" else model.captioner
    dtype = model.dtype or None
    captioner = Captioner.load(captioner_dir, dtype=dtype, param_dtype=dtype)
    itm = ItmScorer.load(model.itm, dtype=dtype, param_dtype=dtype) if kind != "token_count" else None
    ref_lm = None
    if kind == "vlrm":  # "" -> the captioner's own OPT (shared, held once)
        ref_lm = ReferenceLM.load(model.ref_lm, dtype=dtype, param_dtype=dtype) if model.ref_lm else None
    clip = ClipModel.load(model.clip, dtype=dtype, param_dtype=dtype) if kind == "vlrm_rs" else None
    _check_vocabulary("model.captioner", captioner_dir, captioner.module.cfg.text.vocab_size)
    if itm is not None:
        _check_vocabulary("model.itm", model.itm, itm.module.cfg.qformer.vocab_size)
    scorer = _scorer(spec, captioner, clip)
    models = Models(captioner.module, itm.module if itm else None, ref_lm.module if ref_lm else None,
                    clip.module if clip else None)
    trainer = make_step(spec, models, scorer, jax.devices())
    batch = spec.batch_size
    rows = trainer.process_rows(batch)  # this process's share of every batch
    if (rows.stop - rows.start) * jax.process_count() != batch:
        raise ConfigError("mesh", f"{dict(zip(sharding.MESH_AXES, spec.mesh_shape))}: processes share rows of the "
                                  f"batch (this one holds {rows.start}..{rows.stop} of {batch}); put every "
                                  "process on its own rows (data x fsdp a multiple of the process count)")
    size = captioner.module.cfg.vision.image_size
    data = spec.data
    if data.source == "random":
        stream = RandomStream(spec.seed, batch, size, rows=rows)
    else:  # the source reads this process's part of the data (split by jax.process_index)
        source = open_training_source(data.source, spec.seed, data.workers, data.min_side)
        stream = ImageStream(source, rows.stop - rows.start, size, clip.preprocess_config if clip is not None else None)
    has_tokenizer = os.path.isfile(os.path.join(captioner_dir, "tokenizer_config.json"))
    hooks = Hooks(decode=captioner.decode if has_tokenizer else None,
                  evaluate=_evaluator(spec.eval, trainer, captioner_dir) if spec.eval.source else None)
    return Run(trainer, stream, spec.loop, hooks, captioner_dir)


def train(cfg: ConfigDict, resume=None, progress: bool = True):
    """The whole run of a config: build it, record the config in the workdir (and, for a resume
    under an allowed change, the change in its history), then train to total_steps or SIGTERM.
    resume: run_config.check_resume's verdict (None: not checked, a fresh or unchanged start).
    Returns the final TrainState."""
    from vlrm_jax import distributed
    from vlrm_jax.rl import loop, run_config
    from vlrm_jax.rl.checkpoint import checkpoint_location

    run = build(cfg)
    if resume is not None:
        run_config.append_history(cfg, resume)  # after build: a start that fails to build records nothing
    run_config.save_run_config(cfg, run.captioner_dir)
    if distributed.is_main() and resume is not None and resume.step is not None:
        print(f"main.py: resuming from step {resume.step} ({checkpoint_location(run.loop.workdir, run.loop.checkpoint_dir)})",
              flush=True)
    return loop.train(run.trainer, run.stream, dataclasses.replace(run.loop, progress=progress), run.hooks)
