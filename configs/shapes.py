"""The shapes world and the supervised pre-training of its four tiny models (CPU, minutes).

    python -m vlrm_jax.world.demo --workdir runs/shapes --config configs/shapes.py [--smoke]

`get_config()` is the demo; `get_config("smoke")` is a seconds-long variant for tests. Model
fields are named as the model dataclasses name them (VisionConfig, QFormerConfig, OPTConfig,
ItmConfig, ClipConfig), so each block goes into its dataclass unchanged.

How the models hang together: docs/shapes_world.md ("Its models"); why each value is what it is:
configs/shapes_world_log.md (dated measurements).
"""
from __future__ import annotations

import ml_collections


def _optimizer(lr: float, warmup: int, weight_decay: float = 0.01) -> dict:
    return dict(learning_rate=lr, warmup_steps=warmup, end_lr_fraction=0.05,
                weight_decay=weight_decay, b1=0.9, b2=0.98, grad_clip_norm=1.0)


def _open_clip_model(embed_dim: int, image_size: int, patch_size: int, vision: tuple, text: tuple,
                     context: int) -> dict:
    """vision = (layers, width, head_width), text = (layers, width, heads)."""
    return dict(
        embed_dim=embed_dim,
        vision_cfg=dict(image_size=image_size, patch_size=patch_size, layers=vision[0], width=vision[1],
                        head_width=vision[2]),
        # 49408: open_clip's SimpleTokenizer, which the world's CLIP uses unchanged.
        text_cfg=dict(context_length=context, vocab_size=49408, layers=text[0], width=text[1],
                      heads=text[2]),
    )


def _vision_pretrain() -> dict:
    # Own 40000 scenes and a cell-index head: configs/shapes_world_log.md, 2026-12-04 (3), (4).
    return dict(n_scenes=40000, steps=4000, batch_size=64, cell_positions=True, optimizer=_optimizer(2e-3, 100))


def _demo() -> dict:
    # One patch per grid cell (63 = 3 x 21): configs/shapes_world_log.md, undated (A).
    image_size, patch_size, vit_width = 63, 21, 64
    # Sizes set by the CPU budget (about 60 GFLOP/s on 2 cores): configs/shapes_world_log.md, 2026-12-04 (7).
    vision = dict(hidden_size=vit_width, intermediate_size=256, num_hidden_layers=3,
                  num_attention_heads=4, image_size=image_size, patch_size=patch_size)
    text = dict(hidden_size=96, ffn_dim=384, num_hidden_layers=3, num_attention_heads=4,
                max_position_embeddings=128, word_embed_proj_dim=96)
    qformer = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, cross_attention_frequency=1,
                   encoder_hidden_size=vit_width)
    return dict(
        seed=0,
        # Scenes are cheap (about 0.4 ms each); more of them only costs memory.
        world=dict(seed=0, n_train=6000, n_test=500, image_size=image_size, supersample=4),
        reference_lm=dict(
            seed=1, model=text, steps=400, batch_size=64,
            optimizer=_optimizer(2e-3, 50)),
        itm=dict(
            seed=2, vision=vision,
            qformer=dict(qformer, use_qformer_text_input=True, max_position_embeddings=64),
            # Its ViT first learns to read out every cell (shape, colour, size) and the
            # background, then is frozen while the Q-Former learns matching.
            vision_pretrain=_vision_pretrain(),
            num_query_tokens=8, image_text_hidden_size=64,
            steps=2400, batch_size=32, max_length=48,
            # Match targets: a full correct description 1; a correct but partial one
            # partial_floor + (1 - partial_floor) * (facts stated / facts in the scene); anything
            # with a wrong detail 0. See pretrain.itm_texts.
            partial_floor=0.1,
            # Wrong texts 1/4 misplaced, half the rest mispaired: configs/shapes_world_log.md, 2026-12-04 (4).
            misplaced=0.25, mispaired=0.5,
            # Pulls logit_0 + logit_1 towards 0 so the match logit alone (the reward) carries the
            # score, not only the difference the cross-entropy sees.
            logit_centering=1e-2,
            # Weight of the term that ranks each correct text above its one-wrong-detail twin.
            ranking=1.0,
            # BLIP2's image-text contrastive term on the full captions (0 turns it off).
            itc_weight=1.0, itc_temperature=0.1,
            optimizer=_optimizer(1e-3, 50)),
        captioner=dict(
            seed=3, qformer=qformer, num_query_tokens=8,
            # 3000 steps, not 1500: configs/shapes_world_log.md, 2026-12-04 (3).
            steps=3000, batch_size=64,
            # Its own scenes beside the 6000 training scenes: configs/shapes_world_log.md, 2026-12-04 (5).
            extra_scenes=34000,
            # "sized" ("a large red circle"), not "terse" ("a red circle"): configs/shapes_world_log.md, undated (A).
            caption_style="sized",
            # Share of full captions among the targets (0: none): configs/shapes_world_log.md, undated (C).
            full_caption_fraction=0.3,
            # Its OPT trains too, with the reference LM's loss: configs/shapes_world_log.md, undated (A).
            train_language_model=True, lm_loss_weight=1.0, lm_batch_size=32,
            optimizer=_optimizer(1e-3, 50)),
        clip=dict(
            seed=4,
            # open_clip's own model-config format (model_configs/*.json): it is written as is
            # into the folder's open_clip_config.json. 64 tokens fit every full caption (<= 45).
            model=_open_clip_model(64, image_size, patch_size, vision=(3, 64, 16), text=(2, 64, 4), context=64),
            vision_pretrain=_vision_pretrain(),
            steps=800, batch_size=64,
            optimizer=_optimizer(1e-3, 50, weight_decay=0.1)),
        # No bigram ban (0); other beam settings the paper's: configs/shapes_world_log.md, undated (A).
        eval=dict(caption_batch_size=125, n_example_images=8, no_repeat_ngram_size=0),
    )


def _smoke() -> dict:
    cfg = _demo()
    image_size, patch_size = 30, 10
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    qformer = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=2, cross_attention_frequency=1, encoder_hidden_size=32)
    cfg["world"].update(n_train=48, n_test=12, image_size=image_size, supersample=1)
    cfg["reference_lm"].update(
        model=dict(hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                   max_position_embeddings=128, word_embed_proj_dim=32),
        steps=4, batch_size=8)
    cfg["itm"].update(vision=vision, qformer=dict(qformer, use_qformer_text_input=True,
                                                  max_position_embeddings=64),
                      num_query_tokens=4, image_text_hidden_size=16, steps=4, batch_size=4)
    cfg["itm"]["vision_pretrain"].update(n_scenes=16, steps=4, batch_size=8)
    cfg["captioner"].update(qformer=qformer, num_query_tokens=4, steps=4, batch_size=8, extra_scenes=8)
    cfg["clip"].update(model=_open_clip_model(16, image_size, patch_size, vision=(1, 32, 16),
                                              text=(1, 32, 2), context=64),
                       steps=4, batch_size=8)
    cfg["clip"]["vision_pretrain"].update(n_scenes=16, steps=4, batch_size=8)
    cfg["eval"].update(caption_batch_size=12, n_example_images=4)
    return cfg


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    variants = {"": _demo, "demo": _demo, "smoke": _smoke}
    if variant not in variants:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(variants)}")
    return ml_collections.ConfigDict(variants[variant]())
