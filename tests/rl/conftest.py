"""Tiny stacks for the A2C step tests: a transformers BLIP2 and its Flax conversion, a random
value network, and steps built on them."""
import pytest
from flax import nnx

from tests import factories as F
from tests.stacks import randomise


def flax_captioner_from_hf(hf):
    """The converter's own table, applied in memory (no folder round trip)."""
    from convert import blip2 as blip2_conv
    from convert.table import expand, torch_to_flax
    from vlrm_jax.models import build
    from vlrm_jax.models.blip2 import Blip2Captioner
    from vlrm_jax.testing.hf_weights import source_from_state_dict

    cfg = blip2_conv.config_from_hf_config(hf.config)
    ctor = lambda: Blip2Captioner(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    abstract = build.flat_params(build.abstract(ctor))
    entries = expand(blip2_conv.table(cfg), blip2_conv.layer_sets(cfg))
    params = torch_to_flax(source_from_state_dict(hf.state_dict()), entries, abstract,
                           ignore=blip2_conv.TIED_KEYS, progress=False)
    return build.from_params(ctor, params)


def random_value_network(value_cfg, opt_cfg, seed: int = 1, std: float = 0.2):
    """A value network whose every parameter is random (peft starts b at zero, which would hide
    a wrong gradient of a)."""
    from vlrm_jax.models.value import ValueNetwork

    return randomise(ValueNetwork(value_cfg, opt_cfg, rngs=nnx.Rngs(seed)), seed, std)


@pytest.fixture(scope="package")
def hf_blip2(tmp_path_factory):
    """transformers BLIP2 with a strong EOS row, so some sampled captions end early."""
    return F.save_tiny_blip2(str(tmp_path_factory.mktemp("rl_blip2")), seed=0, eos_scale=2.0)


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory):
    """main.py on the tiny config from start to end, uninterrupted: what every interrupted run must equal."""
    from tests.rl.main_runs import main

    workdir = tmp_path_factory.mktemp("straight")
    main(workdir)
    return workdir


@pytest.fixture(scope="module")
def vlrm_scorer(tmp_path_factory):
    """The VLRM reward's scorer on the tiny word-level tokenizer (captioner and ITM share it)."""
    from transformers import AutoTokenizer

    from tests.rl.tiny_steps import EOS, ROLLOUT
    from tests.stacks import VOCAB
    from vlrm_jax.rewards.retokenize import Retokenizer
    from vlrm_jax.rewards.reward import RewardConfig
    from vlrm_jax.rl.scoring import VlrmScorer
    from vlrm_jax.testing.tiny import save_tiny_tokenizer

    folder = tmp_path_factory.mktemp("rl_tok")
    save_tiny_tokenizer(str(folder), vocab_size=VOCAB)
    tok = AutoTokenizer.from_pretrained(folder)
    retok = Retokenizer(tok, max_new_tokens=ROLLOUT.max_new_tokens, itm_tokenizer=tok, itm_max_length=12,
                        eos_token_id=EOS)
    return VlrmScorer(RewardConfig.vlrm(), retok, bos_token_id=EOS)
