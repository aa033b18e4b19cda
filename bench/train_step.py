"""The whole A2C step (rollout, reward, value and policy updates) beside a PyTorch composite of
the same step, on the same random weights, in one run.

    python bench/train_step.py [--shapes tiny|medium|released] [--variants vlrm,vlrm_rs] [--reps 3]
                               [--json FILE] [--no-memory] [--no-stages]

JAX: `vlrm_jax.rl.step.A2CStep.step` exactly as training calls it (VlrmScorer reward inside the
jitted program, ViT trunk shared with the ITM, the captioner's OPT as reference LM).
PyTorch: what a competent transformers user writes for the same step: the soft prompt once
under no_grad, `language_model.generate` (top-k 6, temperature 2, do_sample), the host penalties
and retokenisation of the same `Retokenizer`, `Blip2ForImageTextRetrieval(...,
use_image_text_matching_head=True)`, the captioner's own OPT as reference LM, the value network of
tests/rl/torch_reference.py (peft LoRA on a copy of the OPT, a head of transformers
`OPTDecoderLayer`s), the policy through Q-Former / query tokens / projection and the frozen OPT
with autograd, both over the same micro-batches, then torch Adam with the joint norm clip.
VLRM-RS adds open_clip's image and text towers to both sides (and drops the reference LM).
The two differ in one way of computing: JAX's policy pass takes p_k from the logits of the
rollout's recorded top-k support only (`A2CConfig.support_only`), the composite from the whole
vocabulary's; the check below finds the same losses.

Before any timing the composite scores the JAX step's first rollout and computes its losses on
it: returns and both losses must equal the JAX step's (that is what makes the comparison fair).
Timing: JAX and PyTorch steps alternate (J T J T ...), medians are reported; JAX compile time =
first call minus the median. Peak memory: on CPU each side runs alone in a subprocess, its peak
resident set (Linux VmHWM, reset through /proc/self/clear_refs after the models are built) during
two steps; on a GPU the frameworks' own peak counters. MFU: the analytic FLOPs of one caption
(`caption_flops`, every formula there) x captions/s / the peak FLOP/s of a large matmul measured
in the same run (`matmul_peak`). `os.getloadavg()` before and after goes into the JSON.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the card
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vlrm_jax.rl.rollout_settings import SUPPORT_SLACK  # noqa: E402

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

    from tests.factories import save_tiny_tokenizer

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
    from tests.helpers import source_from_state_dict
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
    from tests.helpers import source_from_state_dict
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


# ---------------------------------------------------------------------------------------------
# The JAX side: the project's step
class JaxSide:
    def __init__(self, setup: Setup):
        from flax import nnx

        from vlrm_jax.models import build
        from vlrm_jax.models.value import ValueNetwork
        from vlrm_jax.rl.scoring import VlrmScorer
        from vlrm_jax.rl.step import A2CStep

        cap, itm = jax_models(setup.hf_cap, setup.hf_itm, setup.shape["dtype"])
        value = build.from_params(lambda: ValueNetwork(setup.value_cfg, cap.cfg.text, rngs=nnx.Rngs(1)),
                                  {p: jnp.asarray(v) for p, v in setup.flat_value.items()})
        clip = jax_clip(setup.clip, setup.shape) if setup.clip is not None else None
        scorer = VlrmScorer(setup.reward_cfg, setup.retokenizer(), bos_token_id=cap.cfg.text.bos_token_id)
        ref_lm = cap.language_model if setup.variant == "vlrm" else None
        self.trainer = A2CStep(setup.a2c, cap, value, scorer, setup.rollout, itm=itm, ref_lm=ref_lm, clip=clip)
        self.state = self.trainer.init_state(0)
        self.rollout_cfg = setup.rollout

    def batch(self, pixels: np.ndarray) -> dict:
        batch = {"pixels": pixels}
        if self.trainer.frozen.clip is not None:
            batch["clip_pixels"] = pixels
        return self.trainer.shard_batch(batch)

    def step(self, batch):
        self.state, metrics, samples = self.trainer.step(self.state, self.trainer.frozen, batch)
        jax.block_until_ready((self.state, metrics))
        return metrics, samples

    def stage_times(self, batch, reps: int) -> dict:
        """Seconds of each stage on its own (each jitted apart, so the sum exceeds a whole step
        by what fusing them saves): rollout (ViT + generate), reward (experience minus rollout),
        value pass, policy pass, optimizer (update minus both passes)."""
        from flax import nnx

        from vlrm_jax.generate.search import generate_jit
        from vlrm_jax.rl import losses

        t, frozen, state = self.trainer, self.trainer.frozen, self.state
        graph, cap_state = nnx.split(t.policy_module(state))
        key = jax.random.key(0)
        exp, _, _ = t.experience(state, frozen, batch)
        value_pass = jax.jit(t._value_pass)
        _, _, values = value_pass(state, frozen, exp)
        stats = losses.advantage_stats(exp.returns - values, exp.mask)
        normalised = losses.normalise(exp.returns - values, stats, t.cfg.advantage_eps) * exp.mask
        policy_pass = jax.jit(t._policy_pass)
        update = jax.jit(t._update)  # not donating: the same state is timed again
        calls = {
            "rollout": lambda: generate_jit(graph, self.rollout_cfg, cap_state, batch["pixels"], key),
            "experience": lambda: t.experience(state, frozen, batch),
            "value_pass": lambda: value_pass(state, frozen, exp),
            "policy_pass": lambda: policy_pass(state, frozen, exp, normalised),
            "update": lambda: update(state, frozen, exp),
        }
        out = {name: median_time(fn, reps) for name, fn in calls.items()}
        return {"rollout": out["rollout"], "reward": out["experience"] - out["rollout"],
                "value_pass": out["value_pass"], "policy_pass": out["policy_pass"],
                "optimizer": out["update"] - out["value_pass"] - out["policy_pass"]}


def median_time(fn, reps: int) -> float:
    jax.block_until_ready(fn())  # compile / warm
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------
# The PyTorch side: the same step from transformers / peft / open_clip modules and autograd
class TorchSide:
    def __init__(self, setup: Setup):
        from tests.rl import torch_reference

        self.s, self.hf, self.itm = setup, setup.hf_cap, setup.hf_itm
        self.cfg, self.rollout_cfg, self.weights = setup.a2c, setup.rollout, setup.reward_cfg.weights
        self.retok = setup.retokenizer()
        self.device = setup.device
        self.sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        self.q = self.hf.config.num_query_tokens
        text = self.hf.config.text_config
        self.bos, self.pad = text.bos_token_id, text.pad_token_id
        trunk, head = torch_reference.value_network(self.hf, setup.value_cfg, setup.flat_value)
        self.trunk, self.head = trunk.to(self.device), head.to(self.device)
        self.token_logprob = torch_reference.token_logprob
        policy = [self.hf.query_tokens, *self.hf.qformer.parameters(), *self.hf.language_projection.parameters()]
        for p in policy:
            p.requires_grad_(True)
        value = [p for p in self.trunk.parameters() if p.requires_grad] + list(self.head.parameters())
        self.policy_params, self.value_params = policy, value
        adam = dict(lr=self.cfg.learning_rate, betas=(self.cfg.b1, self.cfg.b2), eps=self.cfg.eps)
        self.opt_p, self.opt_v = torch.optim.Adam(policy, **adam), torch.optim.Adam(value, **adam)
        self.updates = 0
        self.times = {}

    def batch(self, pixels: np.ndarray):
        dtype = torch.bfloat16 if self.s.shape["dtype"] == "bfloat16" else torch.float32
        return torch.tensor(pixels, device=self.device).permute(0, 3, 1, 2).contiguous().to(dtype)

    def _timed(self, name, fn):
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t
        return out

    # -- the three stages ----------------------------------------------------------------------
    def _soft_prompt(self, vision):
        queries = self.hf.query_tokens.expand(vision.shape[0], -1, -1)
        out = self.hf.qformer(query_embeds=queries, encoder_hidden_states=vision).last_hidden_state
        return self.hf.language_projection(out.to(vision.dtype))

    def rollout(self, pixels):
        """(vision states, soft prompt, new tokens (B, T) padded with the pad id)."""
        with torch.no_grad():
            vision = self.hf.vision_model(pixels).last_hidden_state
            soft = self._soft_prompt(vision)
            b = pixels.shape[0]
            bos = self.hf.language_model.get_input_embeddings()(torch.full((b, 1), self.bos, device=self.device))
            embeds = torch.cat([soft, bos.to(soft.dtype)], dim=1)
            r = self.rollout_cfg
            out = self.hf.language_model.generate(
                inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
                do_sample=True, top_k=r.top_k, temperature=r.temperature, max_new_tokens=r.max_new_tokens,
                pad_token_id=self.pad)
        tokens = torch.full((b, r.max_new_tokens), self.pad, dtype=torch.long, device=self.device)
        tokens[:, :out.shape[1]] = out
        return vision, soft, tokens

    def reward(self, pixels, tokens):
        """Per-token returns (B, T) fp32, the caption mask and each caption's parts."""
        host = self.retok(tokens.cpu().numpy())
        dev = lambda x, dtype=torch.float32: torch.tensor(np.asarray(x), device=self.device, dtype=dtype)  # noqa: E731
        mask = dev(host.mask)
        with torch.no_grad():
            itm = self.itm(pixel_values=pixels, input_ids=dev(host.itm_input_ids, torch.long),
                           attention_mask=dev(host.itm_attention_mask, torch.long), use_image_text_matching_head=True)
            sim = itm.logits_per_image[:, 1].float()
            ref = torch.zeros_like(sim)
            if self.weights.ref != 0.0:
                ref = self._reference_logprob(tokens, mask)
            phi = torch.zeros_like(sim)
            if self.s.reward_cfg.rs_weight != 0.0:
                phi = self._retrieval_specificity(pixels, dev(host.clip_input_ids, torch.long))
        w = self.weights
        per_caption = w.sim * (sim + self.s.reward_cfg.rs_weight * phi) + w.ref * ref - w.noeos * dev(host.noeos)
        penalty = w.bad * dev(host.bad) * mask + w.repeat * dev(host.repeat) * mask
        to_go = torch.flip(torch.cumsum(torch.flip(penalty, [1]), 1), [1])
        returns = torch.where(mask > 0, per_caption[:, None] - to_go, 0.0)
        return returns, mask, dict(sim=sim, ref=ref, phi=phi)

    def _reference_logprob(self, tokens, mask):
        b = tokens.shape[0]
        ids = torch.cat([torch.full((b, 1), self.bos, device=self.device), tokens], 1)
        attention = torch.cat([torch.ones(b, 1, device=self.device), mask], 1).long()
        logits = self.hf.language_model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        logp = torch.gather(torch.log_softmax(logits, -1), 2, tokens[..., None])[..., 0]
        return (logp * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def _retrieval_specificity(self, pixels, clip_ids):
        image = torch.nn.functional.normalize(self.s.clip.encode_image(pixels).float(), dim=-1)
        text = torch.nn.functional.normalize(self.s.clip.encode_text(clip_ids).float(), dim=-1)
        s = image @ text.T
        d = torch.diagonal(torch.softmax(s, 0) * torch.softmax(s, 1))
        std = d.std(unbiased=False)
        return torch.where(std > 0, (d - d.mean()) / torch.where(std > 0, std, 1.0), 0.0)

    def _caption_embeds(self, soft, tokens, mask):
        b = tokens.shape[0]
        text_ids = torch.cat([torch.full((b, 1), self.bos, device=self.device), tokens[:, :-1]], 1)
        text_mask = torch.cat([torch.ones(b, 1, device=self.device), mask[:, :-1]], 1)
        with torch.no_grad():
            text = self.hf.language_model.get_input_embeddings()(text_ids)
        attention = torch.cat([torch.ones(b, self.q, device=self.device), text_mask], 1).long()
        return torch.cat([soft, text.to(soft.dtype)], 1), attention

    def losses(self, vision, soft, tokens, mask, returns):
        """Value pass then policy pass over the micro-batches (rows j, j + M, ... as the JAX step
        splits them), gradients accumulated in .grad; (L_p, L_v) as floats."""
        m, n = self.cfg.micro_batches, mask.sum()
        values = torch.zeros_like(returns)
        value_loss = 0.0

        def value_pass():
            nonlocal value_loss
            for j in range(m):
                rows = slice(j, None, m)
                embeds, attention = self._caption_embeds(soft[rows], tokens[rows], mask[rows])
                hidden = self.trunk.base_model.model.model(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
                v = self.head(hidden.float(), attention)[:, self.q:]
                loss = ((returns[rows] - v) ** 2 * mask[rows]).sum() / n
                loss.backward()
                values[rows] = v.detach()
                value_loss += loss.item()

        self._timed("value_pass", value_pass)
        adv = returns - values
        mean = (adv * mask).sum() / n
        std = torch.sqrt((((adv - mean) ** 2) * mask).sum() / n)
        m_k = (adv - mean) / (std + self.cfg.advantage_eps)
        policy_loss = 0.0
        r = self.rollout_cfg

        def policy_pass():
            nonlocal policy_loss
            t = tokens.shape[1]
            for j in range(m):
                rows = slice(j, None, m)
                embeds, attention = self._caption_embeds(self._soft_prompt(vision[rows]), tokens[rows], mask[rows])
                logits = self.hf.language_model(inputs_embeds=embeds, attention_mask=attention, logits_to_keep=t).logits
                logp = self.token_logprob(logits.float(), tokens[rows], self.cfg.prob, r.temperature, r.top_k)
                weight = logp.exp() if self.cfg.objective == "prob" else logp
                loss = -(weight * m_k[rows] * mask[rows]).sum() / n
                loss.backward()
                policy_loss += loss.item()

        self._timed("policy_pass", policy_pass)
        return policy_loss, value_loss

    def zero_grad(self):
        for p in self.policy_params + self.value_params:
            p.grad = None

    def optimizer_step(self):
        lr = self.cfg.learning_rate * min(1.0, (self.updates + 1) / max(self.cfg.warmup_steps, 1))
        for opt in (self.opt_p, self.opt_v):
            for group in opt.param_groups:
                group["lr"] = lr
        torch.nn.utils.clip_grad_norm_(self.policy_params + self.value_params, self.cfg.clip_norm)
        self.opt_p.step()
        self.opt_v.step()
        self.updates += 1

    def step(self, pixels):
        self.zero_grad()
        vision, soft, tokens = self._timed("rollout", lambda: self.rollout(pixels))
        returns, mask, _ = self._timed("reward", lambda: self.reward(pixels, tokens))
        losses = self.losses(vision, soft, tokens, mask, returns)
        self._timed("optimizer", self.optimizer_step)
        return losses, float(mask.sum(1).mean())


# ---------------------------------------------------------------------------------------------
def check_same_step(jax_side: JaxSide, torch_side: TorchSide, pixels: np.ndarray) -> dict:
    """The composite scores the JAX step's first rollout and takes its losses on it, before
    either side has updated: returns and losses must be the JAX step's."""
    metrics, samples = jax_side.step(jax_side.batch(pixels))
    px = torch_side.batch(pixels)
    tokens = torch.tensor(np.asarray(samples["tokens"]), dtype=torch.long, device=torch_side.device)
    with torch.no_grad():
        vision = torch_side.hf.vision_model(px).last_hidden_state
        soft = torch_side._soft_prompt(vision)
    returns, mask, parts = torch_side.reward(px, tokens)
    torch_side.zero_grad()
    lp, lv = torch_side.losses(vision, soft, tokens, mask, returns)
    torch_side.zero_grad()
    torch_side.times.clear()
    reward_jax, reward_torch = np.asarray(samples["reward"], np.float64), returns[:, 0].double().cpu().numpy()
    # the policy loss is a mean of centred advantages times token probabilities, which cancel to
    # near 0 (2e-4 to 6e-4 measured) while each term is up to an advantage in size: its difference
    # is taken relative to the advantages' scale, sqrt(value loss), when that is larger
    rel = lambda a, b, floor=1e-2: abs(a - b) / max(abs(b), floor)  # noqa: E731
    advantage_scale = float(np.sqrt(max(lv, 0.0)))
    out = dict(
        reward_max_abs_diff=float(np.max(np.abs(reward_jax - reward_torch))),
        reward_scale=float(np.max(np.abs(reward_torch))),
        loss_policy_jax=float(metrics["loss/policy"]), loss_policy_torch=lp,
        loss_value_jax=float(metrics["loss/value"]), loss_value_torch=lv,
        loss_policy_rel_diff=rel(float(metrics["loss/policy"]), lp, max(1e-2, advantage_scale)),
        loss_value_rel_diff=rel(float(metrics["loss/value"]), lv), advantage_scale=advantage_scale,
        caption_length=float(mask.sum(1).mean()),
    )
    tol = torch_side.s.shape["check_tolerance"]
    out["tolerance"] = tol
    out["ok"] = bool(out["reward_max_abs_diff"] <= tol * max(out["reward_scale"], 1.0)
                     and out["loss_policy_rel_diff"] <= tol and out["loss_value_rel_diff"] <= tol)
    return out


# ---------------------------------------------------------------------------------------------
# FLOPs, peak and memory
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


def _vm(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def _release_freed_memory():
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def memory_child(args) -> dict:
    """One side alone: resident bytes before the steps and peak resident bytes during two steps
    (compile included for JAX: XLA's compile is part of what a run holds)."""
    shape = shape_of(args)
    setup = make_setup(shape, args.variants, "cpu")
    side = JaxSide(setup) if args.only == "jax" else TorchSide(setup)
    if args.only == "jax":  # the transformers copies served the conversion only
        setup.hf_cap = setup.hf_itm = setup.clip = None
    pixels = bench_pixels(shape)
    batch = side.batch(pixels)
    _release_freed_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _vm("VmRSS")
    for _ in range(2):
        side.step(batch)
    return dict(rss_before_steps=before, peak_rss=_vm("VmHWM"))


def memory_per_side(args) -> dict:
    out = {}
    for side in ("jax", "torch"):
        cmd = [sys.executable, os.path.abspath(__file__), "--only", side, "--variants", args.variants,
               "--shapes", args.shapes, "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        out[side] = json.loads(lines[-1]) if proc.returncode == 0 and lines else dict(error=proc.stderr[-2000:])
    return out


# ---------------------------------------------------------------------------------------------
def shape_of(args) -> dict:
    shape = copy.deepcopy(SHAPES[args.shapes])
    for key in ("batch", "micro_batches", "new_tokens"):
        if getattr(args, key, None):
            shape[key] = getattr(args, key)
    if getattr(args, "remat", "auto") != "auto":
        shape["remat"] = args.remat == "on"
    return shape


def bench_pixels(shape: dict) -> np.ndarray:
    size = 224 if shape.get("released") else shape["vision"]["image_size"]
    return np.random.default_rng(0).normal(size=(shape["batch"], size, size, 3)).astype(np.float32)


def run_variant(args, variant: str, device: str) -> dict:
    shape = shape_of(args)
    setup = make_setup(shape, variant, device)
    t0 = time.perf_counter()
    jax_side = JaxSide(setup)
    torch_side = TorchSide(setup)
    build_s = time.perf_counter() - t0
    pixels = bench_pixels(shape)
    t0 = time.perf_counter()
    check = check_same_step(jax_side, torch_side, pixels)  # also the JAX step's compile
    first_jax = time.perf_counter() - t0
    print(f"# {variant} check: {json.dumps(check)}", flush=True)
    jbatch, tbatch = jax_side.batch(pixels), torch_side.batch(pixels)
    torch_side.step(tbatch)  # warm-up (allocator, oneDNN primitives)
    torch_side.times.clear()
    jax_times, torch_times, lengths = [], [], []
    for _ in range(args.reps):  # alternate, so load from others falls on both sides alike
        t = time.perf_counter()
        jax_side.step(jbatch)
        jax_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        _, length = torch_side.step(tbatch)
        torch_times.append(time.perf_counter() - t)
        lengths.append(length)
    b = shape["batch"]
    jax_s, torch_s = float(np.median(jax_times)), float(np.median(torch_times))
    cap_cfg, itm_cfg = setup.hf_cap.config, setup.hf_itm.config
    flops = caption_flops(cap_cfg, itm_cfg, setup.value_cfg, shape["new_tokens"], variant, shape.get("clip"),
                          top_k=setup.rollout.top_k)
    row = dict(
        variant=variant, build_s=build_s, check=check,
        jax=dict(step_s=jax_s, step_s_all=jax_times, caps_s=b / jax_s, compile_s=max(first_jax - jax_s, 0.0)),
        torch=dict(step_s=torch_s, step_s_all=torch_times, caps_s=b / torch_s, caption_length=float(np.mean(lengths)),
                   stages={k: v / args.reps for k, v in torch_side.times.items()}),
        ratio=torch_s / jax_s, flops_per_caption=flops,
    )
    if args.stages:
        try:
            row["jax"]["stages"] = jax_side.stage_times(jbatch, max(1, min(args.reps, 2)))
        except Exception as e:  # noqa: BLE001 - a diagnostic; the step's own numbers stand without it
            row["jax"]["stages"] = dict(error=repr(e))
    if device == "cuda":
        stats = jax.devices()[0].memory_stats() or {}
        row["jax"]["peak_bytes"] = stats.get("peak_bytes_in_use")
        row["torch"]["peak_bytes"] = torch.cuda.max_memory_allocated()
    return row


def machine_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({jax.default_backend()}), {os.cpu_count()} CPU cores"
    return f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPU cores"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="medium", choices=sorted(SHAPES))
    p.add_argument("--tiny", action="store_true", help="--shapes tiny --reps 1 (a smoke test)")
    p.add_argument("--variants", default="vlrm,vlrm_rs")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--micro-batches", dest="micro_batches", type=int, default=0)
    p.add_argument("--new-tokens", dest="new_tokens", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (XLA uses every core)")
    p.add_argument("--remat", choices=["auto", "on", "off"], default="auto",
                   help="recompute OPT layers in the JAX update (auto: as the shape says)")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--no-stages", dest="stages", action="store_false")
    p.add_argument("--json", default=None)
    p.add_argument("--only", choices=["jax", "torch"], help=argparse.SUPPRESS)  # the memory subprocess
    args = p.parse_args(argv)
    if args.tiny:
        args.shapes, args.reps = "tiny", 1
    torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(memory_child(args)), flush=True)
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = shape_of(args)
    result = dict(
        machine=machine_name(), date=datetime.date.today().isoformat(), shapes=args.shapes,
        batch=shape["batch"], micro_batches=shape["micro_batches"], new_tokens=shape["new_tokens"], dtype=shape["dtype"],
        remat=shape["remat"],
        versions=dict(jax=jax.__version__, torch=torch.__version__), torch_threads=torch.get_num_threads(),
        loadavg_before=list(os.getloadavg()), reps=args.reps,
    )
    print(f"# {result['machine']}; jax {jax.__version__}, torch {torch.__version__}, torch threads "
          f"{torch.get_num_threads()}; load {result['loadavg_before']}", flush=True)
    result["matmul"] = matmul_peak(device, shape["dtype"])
    rows = []
    for variant in args.variants.split(","):
        row = run_variant(args, variant, device)
        if args.memory and device == "cpu":
            sub = argparse.Namespace(**{**vars(args), "variants": variant})
            row["memory"] = memory_per_side(sub)
            for side in ("jax", "torch"):
                if "peak_rss" in row["memory"][side]:
                    row[side]["peak_bytes"] = row["memory"][side]["peak_rss"]
        for side in ("jax", "torch"):
            row[side]["mfu"] = row["flops_per_caption"]["total"] * row[side]["caps_s"] / result["matmul"]["peak_flops_s"]
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("variant", "ratio")} | {s: {k: row[s].get(k) for k in ("caps_s", "compile_s", "mfu", "peak_bytes")} for s in ("jax", "torch")}), flush=True)
    result["rows"] = rows
    result["loadavg_after"] = list(os.getloadavg())
    print_table(result)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def print_table(result: dict) -> None:
    gib = lambda x: f"{x / 2**30:.2f}" if x else "-"  # noqa: E731
    print(f"\n{result['machine']}, {result['date']}, B={result['batch']}, {result['new_tokens']} new tokens, "
          f"{result['micro_batches']} micro-batches, {result['dtype']}, remat {result['remat']}; load {result['loadavg_before']} -> "
          f"{result['loadavg_after']}")
    print("| step | side | captions/s | step s | compile s | peak GiB | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        for side in ("jax", "torch"):
            s = r[side]
            print(f"| {r['variant']} | {side} | {s['caps_s']:.2f} | {s['step_s']:.2f} | {s.get('compile_s', 0):.1f} | "
                  f"{gib(s.get('peak_bytes'))} | {100 * s['mfu']:.1f}% |")
        print(f"| {r['variant']} | ratio | {r['ratio']:.2f}x | | | | check {'ok' if r['check']['ok'] else 'FAILED'} |")


if __name__ == "__main__":
    main()
