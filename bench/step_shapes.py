"""The shapes of bench/train_step.py's runs and the models both sides are built from: one random
transformers BLIP2 captioner + ITM (+ open_clip for VLRM-RS), the same weights converted to Flax
by the converters' own tables in memory, the tokenizers, and the `Setup` that carries them."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile

import numpy as np

from vlrm_jax.testing.hf_weights import source_from_state_dict

ITM_TEXT_LENGTH = 64

# Shapes of each run. medium: the shapes of bench/generate_vs_hf.py (3-layer ViT at 224 px,
# 8-layer OPT of width 512, the real 50272-token vocabulary). released: BLIP2-OPT-2.7B + ITM ViT-g.
SHAPES = {
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    image_size=28, patch_size=14),
        qformer=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     encoder_hidden_size=32, cross_attention_frequency=1),
        text=dict(vocab_size=512, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                  word_embed_proj_dim=32, max_position_embeddings=64),
        queries=4, itm_vocab=300, itm_hidden=16, batch=4, micro_batches=2, new_tokens=6, dtype="float32",
        remat=False, check_tolerance=1e-3,
        value=dict(lora_rank=2, lora_alpha=4.0, head_layers=1, head_mlp_ratio=2),
        clip=dict(embed_dim=16, vision_cfg=dict(image_size=28, layers=1, width=32, head_width=16, patch_size=14),
                  text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))),
    "medium": dict(
        vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=4,
                    image_size=224, patch_size=14),
        qformer=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                     encoder_hidden_size=256, cross_attention_frequency=1),
        text=dict(vocab_size=50272, hidden_size=512, ffn_dim=2048, num_hidden_layers=8, num_attention_heads=8,
                  word_embed_proj_dim=512, max_position_embeddings=256),
        queries=32, itm_vocab=30523, itm_hidden=256, batch=16, micro_batches=2, new_tokens=60, dtype="float32",
        # fp32 differences between XLA's and torch's summation orders, through 11 layers of width
        # 512 at init std 0.2 (measured: value losses 8e-4 and 2e-3 apart, rewards 4e-5)
        remat=False, check_tolerance=5e-3,
        value=dict(lora_rank=16, lora_alpha=32.0, head_layers=3, head_mlp_ratio=6),
        clip=dict(embed_dim=256, vision_cfg=dict(image_size=224, layers=3, width=256, head_width=64, patch_size=14),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=3))),
    "released": dict(released=True, queries=32, itm_vocab=30523, batch=64, micro_batches=4, new_tokens=60,
                     dtype="bfloat16", value={}, remat=True, check_tolerance=5e-2,
                     clip=dict(embed_dim=1280, vision_cfg=dict(image_size=224, layers=48, width=1664, head_width=104,
                                                               mlp_ratio=4.9231, patch_size=14),
                               text_cfg=dict(context_length=77, vocab_size=49408, width=1280, heads=20, layers=32))),
}
CLIP_NAME = "vlrm-bench-clip"


# ---------------------------------------------------------------------------------------------
# Models: one random transformers BLIP2 + ITM (+ open_clip), the same weights in both frameworks
def hf_configs(shape: dict):
    """(Blip2Config of the captioner, Blip2Config of the ITM). The ITM's ViT has the captioner's shape."""
    from transformers import Blip2Config

    if shape.get("released"):
        from convert import released_shapes

        return released_shapes.blip2_opt_2_7b(), released_shapes.blip2_itm_vit_g()
    init = dict(initializer_range=0.2)
    text = dict(model_type="opt", bos_token_id=2, eos_token_id=2, pad_token_id=1, init_std=0.2, **shape["text"])
    vocab = shape["text"]["vocab_size"]
    cap = Blip2Config(vision_config=dict(shape["vision"], **init), qformer_config=dict(shape["qformer"], **init),
                      text_config=text, num_query_tokens=shape["queries"], image_token_index=vocab - 7, **init)
    itm_qformer = dict(shape["qformer"], use_qformer_text_input=True, vocab_size=shape["itm_vocab"], **init)
    itm = Blip2Config(vision_config=dict(shape["vision"], **init), qformer_config=itm_qformer,
                      num_query_tokens=shape["queries"], image_text_hidden_size=shape["itm_hidden"],
                      image_token_index=None, architectures=["Blip2ForImageTextRetrieval"], **init)
    return cap, itm


def hf_models(shape: dict, device: str, seed: int = 0):
    """Random transformers captioner and ITM whose ViT trunks are equal (as in the released
    checkpoints: only the final LayerNorm differs). bf16 shapes keep the Q-Former in fp32, as
    transformers does."""
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

    cap_cfg, itm_cfg = hf_configs(shape)
    torch.manual_seed(seed)
    with torch.device(device):
        cap = Blip2ForConditionalGeneration(cap_cfg).eval()
        itm = Blip2ForImageTextRetrieval(itm_cfg).eval()
    trunk = {k: v for k, v in cap.vision_model.state_dict().items() if not k.startswith("post_layernorm")}
    itm.vision_model.load_state_dict(trunk, strict=False)
    if shape["dtype"] == "bfloat16":
        for model in (cap, itm):
            model.to(torch.bfloat16)
            model.qformer.float()
            model.query_tokens.data = model.query_tokens.data.float()
    for model in (cap, itm):
        model.requires_grad_(False)
    return cap, itm


def tokenizers(vocab: int, itm_vocab: int):
    """(captioner tokenizer, ITM tokenizer), built offline: word-level ones over the models' whole
    vocabularies ("w17" is id 17 in both where it exists; the ITM maps the rest to [UNK]), so a
    caption of 60 ids decodes to 60 words and becomes about 62 ITM tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from vlrm_jax.testing.tiny import save_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        cap = save_tiny_tokenizer(tmp, vocab)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = {name: i for i, name in enumerate(specials)}
    words.update({f"w{i}": i for i in range(len(specials), itm_vocab)})
    backend = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    itm = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    return cap, itm


def clip_model(shape: dict, device: str, seed: int = 0):
    """(open_clip CLIP, its tokenizer): a random model of the shape's CLIP config."""
    import open_clip
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{CLIP_NAME}.json")
        with open(path, "w") as f:
            json.dump(shape["clip"], f)
        open_clip.add_model_config(path)
    torch.manual_seed(seed)
    model = open_clip.create_model(CLIP_NAME, device=device).eval()
    if shape["dtype"] == "bfloat16":
        model.to(torch.bfloat16)
    model.requires_grad_(False)
    return model, open_clip.get_tokenizer(CLIP_NAME)


def _convert(conv, hf, cfg, ctor, ignore=()):
    from convert.rules import adapt_legacy_qkv_bias
    from convert.table import expand, torch_to_flax
    from vlrm_jax.models import build

    source = adapt_legacy_qkv_bias(source_from_state_dict(hf.state_dict()), "vision_model.", cfg.vision.num_hidden_layers)
    params = torch_to_flax(source, expand(conv.table(cfg), conv.layer_sets(cfg)), build.flat_params(build.abstract(ctor)),
                           ignore=ignore, progress=False)
    return build.from_params(ctor, params)


def jax_models(hf_cap, hf_itm, dtype: str):
    """The converters' own tables applied in memory (no folder round trip)."""
    from flax import nnx

    from convert import blip2 as cap_conv
    from convert import blip2_itm as itm_conv
    from vlrm_jax.loading import override_precision
    from vlrm_jax.models.blip2 import Blip2Captioner
    from vlrm_jax.models.itm import Blip2Itm

    cap_cfg = cap_conv.config_from_hf_config(hf_cap.config)
    itm_cfg = itm_conv.config_from_hf_config(hf_itm.config)
    if dtype != "float32":
        cap_cfg = override_precision(cap_cfg, dtype, dtype, ("vision", "text"))
        itm_cfg = override_precision(itm_cfg, dtype, dtype, ("vision",))
    cap = _convert(cap_conv, hf_cap, cap_cfg, lambda: Blip2Captioner(cap_cfg, rngs=nnx.Rngs(0)), ignore=cap_conv.TIED_KEYS)
    itm = _convert(itm_conv, hf_itm, itm_cfg, lambda: Blip2Itm(itm_cfg, rngs=nnx.Rngs(0)))
    return cap, itm


def jax_clip(oc_model, shape: dict):
    from flax import nnx

    from convert import open_clip as clip_conv
    from vlrm_jax.models import build
    from vlrm_jax.models.clip import ClipConfig, ClipModel

    cfg = ClipConfig.from_open_clip(shape["clip"])
    if shape["dtype"] != "float32":
        from vlrm_jax.loading import override_precision

        cfg = override_precision(cfg, shape["dtype"], shape["dtype"], ("vision", "text"))
    params = dict(clip_conv.convert_source(source_from_state_dict(oc_model.state_dict()), cfg, progress=False))
    return build.from_params(lambda: ClipModel(cfg, rngs=nnx.Rngs(0)), params)


@dataclasses.dataclass
class Setup:
    """Everything both sides are built from."""

    shape: dict
    variant: str
    device: str
    hf_cap: object
    hf_itm: object
    cap_tok: object
    itm_tok: object
    value_cfg: object
    flat_value: dict  # the value network's initial parameters, {JAX path: array}
    clip: object = None
    clip_tok: object = None

    @property
    def rollout(self):
        from vlrm_jax.generate.config import GenerationConfig

        return GenerationConfig.paper_rollout(max_new_tokens=self.shape["new_tokens"])

    @property
    def a2c(self):
        from vlrm_jax.rl.config import A2CConfig

        # remat as the shape says: the composite keeps every activation, as JAX does without remat;
        # at the released shapes the update needs it (a 2.7B OPT over micro-batches of 16 captions)
        return A2CConfig(micro_batches=self.shape["micro_batches"], remat=self.shape["remat"])

    @property
    def reward_cfg(self):
        from vlrm_jax.rewards.reward import RewardConfig

        return RewardConfig.vlrm_rs() if self.variant == "vlrm_rs" else RewardConfig.vlrm()

    def retokenizer(self):
        from vlrm_jax.rewards.retokenize import Retokenizer

        clip_len = self.clip.context_length if self.clip is not None else 77
        return Retokenizer(self.cap_tok, self.shape["new_tokens"], itm_tokenizer=self.itm_tok,
                           itm_max_length=ITM_TEXT_LENGTH, clip_tokenizer=self.clip_tok, clip_context_length=clip_len,
                           eos_token_id=self.hf_cap.config.text_config.eos_token_id)


def make_setup(shape: dict, variant: str, device: str) -> Setup:
    from flax import nnx

    from convert import blip2 as cap_conv
    from vlrm_jax.models import build
    from vlrm_jax.models.value import ValueConfig, ValueNetwork

    hf_cap, hf_itm = hf_models(shape, device)
    cap_tok, itm_tok = tokenizers(hf_cap.config.text_config.vocab_size, hf_itm.config.qformer_config.vocab_size)
    value_cfg = ValueConfig(**shape["value"])
    text_cfg = cap_conv.config_from_hf_config(hf_cap.config).text
    value = ValueNetwork(value_cfg, text_cfg, rngs=nnx.Rngs(1))
    flat_value = {p: np.asarray(v, np.float32) for p, v in build.flat_params(value).items()}
    clip = clip_tok = None
    if variant == "vlrm_rs":
        clip, clip_tok = clip_model(shape, device)
    return Setup(shape, variant, device, hf_cap, hf_itm, cap_tok, itm_tok, value_cfg, flat_value, clip, clip_tok)


def shape_of(args) -> dict:
    """SHAPES[args.shapes] with the command line's batch / micro-batch / token / remat overrides."""
    shape = copy.deepcopy(SHAPES[args.shapes])
    for key in ("batch", "micro_batches", "new_tokens"):
        if getattr(args, key, None):
            shape[key] = getattr(args, key)
    if getattr(args, "remat", "auto") != "auto":
        shape["remat"] = args.remat == "on"
    return shape


def bench_pixels(shape: dict) -> np.ndarray:
    """The benchmark's images: (batch, size, size, 3) float32, seed 0."""
    size = 224 if shape.get("released") else shape["vision"]["image_size"]
    return np.random.default_rng(0).normal(size=(shape["batch"], size, size, 3)).astype(np.float32)

