"""Supervised pre-training of the shapes world's four models, each saved as a model folder.

The folders load exactly as converted real models do (`Captioner.load`, `ReferenceLM.load`,
`ItmScorer.load`, `ClipModel.load`), so every later consumer runs unchanged on them. The stages
mirror how the real BLIP2 stack was built (configs/shapes.py explains the choice):

    reference_lm   OPT on every caption style (full, paraphrases, terse, partial descriptions)
    itm            BLIP2-ITM: its ViT first learns to read out the scene (phase itm_vision), then
                   is frozen while the Q-Former learns graded match targets (+ ranking, ITC)
    captioner      BLIP2: ViT = the ITM's ViT (frozen, so the RL run can share the trunk), OPT
                   started from the reference LM; query tokens, Q-Former, projection and OPT learn
                   the short captions while OPT keeps the reference LM's loss on every style
    clip           OpenCLIP: its own image tower pre-trained the same way from its own seed
                   (phase clip_vision), then symmetric InfoNCE on the full captions

Dense kernels outside the pre-trained towers are redrawn with a fan-in scale (fan_in_init): the
models' own 0.02 init suits width 768, not 64, and left the Q-Formers on long plateaus.

Each stage is deterministic in its seed (batch i is drawn from its own numpy stream), logs its
loss to TensorBoard (`<workdir>/tb/<stage>`) and a PNG (`<workdir>/plots/<stage>_loss.png`), and
is skipped when its folder holds a `pretrain.json` with the same stage hash (the stage's config,
the world's config, the hashes of the stages it builds on and PRETRAIN_VERSION).

Modules: `record` (work folder, stage results, the cache), `loop` (the shared fit loop),
`inputs` (token ids, pixels, frozen vision states), `encoder` (scene-parsing pre-training of the
image towers), one module per stage (`reference_lm`, `itm`, `captioner`, `clip`) and `run`. The
caption language they train on is vlrm_jax.world.language.
"""
from vlrm_jax.world.pretrain.record import (PRETRAIN_VERSION, STAGES, StageContext, StageResult, Workdir,
                                            cached_result, stage_hash)
from vlrm_jax.world.pretrain.run import run_all, run_stage

__all__ = ["PRETRAIN_VERSION", "STAGES", "StageContext", "StageResult", "Workdir", "cached_result", "run_all",
           "run_stage", "stage_hash"]
