"""The released checkpoints' shapes (convert.released_shapes) read into this package's configs as
its defaults, and the Flax models hold exactly as many parameters as transformers' at full size
(built abstractly: no memory)."""
import numpy as np
import pytest
import torch
from flax import nnx

from convert import blip2, blip2_itm, released_shapes
from vlrm_jax.models import build
from vlrm_jax.models.blip2 import Blip2Captioner
from vlrm_jax.models.itm import Blip2Itm
from vlrm_jax.models.opt import OPTConfig
from vlrm_jax.models.qformer import QFormerConfig
from vlrm_jax.models.vit import VisionConfig


def _hf_parameter_count(cls, hf_cfg, skip=()):
    with torch.device("meta"):
        model = cls(hf_cfg)
    return sum(int(np.prod(v.shape)) for k, v in model.state_dict().items() if k not in skip)


def _flax_parameter_count(ctor):
    return sum(int(np.prod(v.shape)) for v in build.flat_params(build.abstract(ctor)).values())


def test_blip2_opt_27b(tmp_path):
    from transformers import Blip2ForConditionalGeneration

    hf_cfg = released_shapes.blip2_opt_2_7b()
    hf_cfg.save_pretrained(tmp_path)
    cfg, _ = blip2.config_from_hf(str(tmp_path))
    assert (cfg.vision, cfg.qformer, cfg.text) == (VisionConfig(), QFormerConfig(), OPTConfig())
    assert _hf_parameter_count(Blip2ForConditionalGeneration, hf_cfg) == pytest.approx(3.87e9, rel=0.01)
    hf_count = _hf_parameter_count(Blip2ForConditionalGeneration, hf_cfg, skip=blip2.TIED_KEYS)
    assert _flax_parameter_count(lambda: Blip2Captioner(cfg, rngs=nnx.Rngs(0))) == hf_count


def test_blip2_itm_vit_g(tmp_path):
    from transformers import Blip2ForImageTextRetrieval

    hf_cfg = released_shapes.blip2_itm_vit_g()
    hf_cfg.save_pretrained(tmp_path)
    cfg, _ = blip2_itm.config_from_hf(str(tmp_path))
    assert (cfg.vision, cfg.qformer) == (VisionConfig(), QFormerConfig(use_qformer_text_input=True))
    hf_count = _hf_parameter_count(Blip2ForImageTextRetrieval, hf_cfg)
    assert _flax_parameter_count(lambda: Blip2Itm(cfg, rngs=nnx.Rngs(0))) == hf_count


@pytest.mark.parametrize("name", ["ViT-g-14", "ViT-bigG-14"])
def test_released_open_clip_configs_are_open_clips(name):
    """vlrm_jax.models.released writes open_clip's model configs out (no torch needed to build
    from shapes); they must stay what open_clip ships."""
    import open_clip

    from vlrm_jax.models import released
    from vlrm_jax.models.clip import ClipConfig

    assert released.OPEN_CLIP_MODELS[name] == open_clip.get_model_config(name)
    assert released.clip(name) == ClipConfig.from_open_clip(open_clip.get_model_config(name))


def test_released_blip2_configs_are_the_converters():
    from vlrm_jax.models import released

    assert released.captioner() == blip2.config_from_hf_config(released_shapes.blip2_opt_2_7b())
    assert released.itm() == blip2_itm.config_from_hf_config(released_shapes.blip2_itm_vit_g())
