"""The paper's steps, built from shapes alone at the released widths (2 layers per tower), lower
for a TPU slice. Before the host callback returned every result at rank 2, the reward's
retokenisation did not lower for any TPU target ("'stablehlo.recv' op result 0 - sharding
doesn't match tensor rank"), so the paper config could not start on a pod."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.aot.conftest import small_paper_config
from vlrm_jax import sharding
from vlrm_jax.rl.assemble import abstract_step, model_configs


def test_retokenisation_lowers_for_a_tpu_mesh(v5e_2x2):
    """The host callback alone: (B, T) penalties beside the (B,) noeos flag, per batch shard."""
    from vlrm_jax.rewards.retokenize import SHAPES_ONLY, Retokenizer, retokenize_sharded

    mesh = sharding.make_mesh((4, 1, 1), devices=v5e_2x2)
    retok = Retokenizer(SHAPES_ONLY, 60, itm_tokenizer=SHAPES_ONLY, clip_tokenizer=SHAPES_ONLY)
    ids = jax.ShapeDtypeStruct((8, 60), np.int32, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
    lowered = jax.jit(lambda x: retokenize_sharded(retok, x, mesh=mesh)).lower(ids)
    out = lowered.out_info
    assert out["noeos"].shape == (8,) and out["bad"].shape == (8, 60) and out["clip_input_ids"].shape == (8, 77)


@pytest.mark.parametrize("variant", ["vlrm", "vlrm_rs"])
def test_paper_step_lowers_for_a_tpu_slice(variant, v5e_2x2):
    cfg = small_paper_config(variant)
    step, parts = abstract_step(cfg, v5e_2x2, layers=2)
    assert parts.mesh_shape == (4, 1, 1)
    assert step.vision_shared and (step.ref_shared or variant == "vlrm_rs")  # the released checkpoints' sharing
    state, frozen, batch = step.abstract_inputs(cfg.batch_size)
    assert set(batch) == ({"pixels", "clip_pixels"} if variant == "vlrm_rs" else {"pixels"})
    text = step.step.lower(state, frozen, batch).as_text()
    assert "stablehlo.send" in text and "stablehlo.recv" in text  # the host retokenisation (TPU callbacks)
    # the frozen towers arrive in bf16, the trained sets in fp32 (the paper's precision)
    dtypes = {str(x.dtype) for x in jax.tree.leaves(frozen.policy)}
    assert "bfloat16" in dtypes
    assert {str(x.dtype) for x in jax.tree.leaves((state.policy, state.value))} == {"float32"}


def test_the_shared_trunk_is_passed_once(v5e_2x2):
    step, _ = abstract_step(small_paper_config("vlrm"), v5e_2x2, layers=2)
    itm_vision = {p[1] for p, _ in __import__("flax").nnx.to_flat_state(step.frozen.itm) if p[0] == "vision_model"}
    assert itm_vision == {"post_layernorm"}


def test_layers_cut_every_tower_and_keep_the_widths():
    cfgs = model_configs(small_paper_config("vlrm_rs"), layers=3)
    cap, itm, clip = cfgs["captioner"], cfgs["itm"], cfgs["clip"]
    assert (cap.vision.num_hidden_layers, cap.qformer.num_hidden_layers, cap.text.num_hidden_layers) == (3, 3, 3)
    assert (itm.vision.num_hidden_layers, itm.qformer.num_hidden_layers) == (3, 3)
    assert (clip.vision.layers, clip.text.layers) == (3, 3)
    assert (cap.vision.hidden_size, cap.text.hidden_size, cap.text.vocab_size, clip.vision.width) == (1408, 2560, 50272, 1664)
    assert cap.text.dtype == "bfloat16" and cap.qformer.hidden_size == 768  # the Q-Former keeps fp32
    assert cfgs["ref_lm"] is None  # the captioner's own OPT
    full = model_configs(small_paper_config("vlrm"))
    assert full["captioner"].text.num_hidden_layers == 32 and full["clip"] is None
    with pytest.raises(ValueError, match="layers"):
        model_configs(small_paper_config("vlrm"), layers=0)


def test_a_converted_folders_config_is_read(tmp_path):
    """Where the config's folder exists, its config.json gives the shapes, not the released ones."""
    from tests.factories import save_tiny_blip2
    from tests.helpers import convert_in_process

    hf = str(tmp_path / "hf")
    save_tiny_blip2(hf)
    convert_in_process("convert.blip2", "--src", hf, "--dst", str(tmp_path / "cap"))
    cfg = small_paper_config("vlrm")
    cfg.model.captioner = str(tmp_path / "cap")
    got = model_configs(cfg)["captioner"]
    assert got.text.hidden_size != 2560 and got.text.dtype == "bfloat16"


def test_abstract_models_need_the_sharing_decided(v5e_2x2):
    """Shapes have no values to compare: "auto" takes the released checkpoints' sharing, and the
    step itself refuses to guess."""
    from vlrm_jax.rl.assemble import abstract_models, shapes_only_scorer
    from vlrm_jax.rl import run
    from vlrm_jax.rl.step import A2CStep

    cfg = small_paper_config("vlrm")
    parts = run.validate(cfg, device_count=4, process_count=1, check_paths=False)
    models = abstract_models(model_configs(cfg, layers=1))
    from flax import nnx
    from vlrm_jax.models.value import ValueNetwork

    value = nnx.eval_shape(lambda: ValueNetwork(parts.value, models.captioner.cfg.text, rngs=nnx.Rngs(0)))
    mesh = sharding.make_mesh((4, 1, 1), devices=v5e_2x2)
    with pytest.raises(ValueError, match="share_trunk"):
        A2CStep(parts.a2c, models.captioner, value, shapes_only_scorer(cfg, parts.rollout, models),
                parts.rollout, itm=models.itm, ref_lm=models.captioner.language_model, mesh=mesh)
    cfg.model.share_trunk = "no"
    step, _ = abstract_step(cfg, v5e_2x2, layers=1)
    assert not step.vision_shared and "share_trunk=False" in step.vision_report.reason
    cfg.model.share_trunk = "sometimes"
    with pytest.raises(run.ConfigError, match="model.share_trunk"):
        abstract_step(cfg, v5e_2x2, layers=1)


def test_the_mesh_is_checked_against_the_target(v5e_2x2):
    """As main.py checks it against the machine: too many devices, or a multi-host slice whose
    devices are not all used."""
    from vlrm_jax.aot import topology
    from vlrm_jax.rl.run import ConfigError

    cfg = small_paper_config("vlrm", batch_size=6)
    with pytest.raises(ConfigError, match="config key batch_size"):
        abstract_step(cfg, v5e_2x2, layers=1)
    cfg = small_paper_config("vlrm")
    cfg.mesh.data = 8
    with pytest.raises(ConfigError, match="needs 8 devices; 4 are present"):
        abstract_step(cfg, v5e_2x2, layers=1)
    cfg.mesh.data = 32
    with pytest.raises(ConfigError, match="over 16 processes, and all must be used"):
        abstract_step(cfg, topology.devices(topology.parse("v5e:8x8")), layers=1)


@pytest.mark.parametrize("variant", ["vlrm", "vlrm_rs"])
def test_config_slices_fill_their_slice(variant):
    """`--config=configs/vlrm.py:SLICE`: every named slice's mesh uses all its chips and its
    micro-batches split over the batch axes (what main.py and the compile check would refuse)."""
    from vlrm_jax.aot.topology import MEGACORE
    from vlrm_jax.config_utils import config_path, load_config
    from vlrm_jax.rl.run import validate

    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", config_path(variant))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "v5e-64" in module.SLICES
    for name, (data, fsdp, tensor, micro_batches) in module.SLICES.items():
        generation, count = name.split("-")
        chips = int(count) // 2 if generation in MEGACORE else int(count)
        cfg = load_config(variant, name)
        assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.a2c.micro_batches) == (data, fsdp, tensor, micro_batches)
        validate(cfg, device_count=chips, process_count=chips // 4, check_paths=False)


def test_a_mesh_axis_may_span_part_of_a_physical_axis():
    """tensor=2 on a 4x4x4 v4 slice: no physical axis has size 2, so the mesh splits one (jax's
    default refuses)."""
    from vlrm_jax.aot import topology

    devices = topology.devices(topology.parse("v4:4x4x4"))
    mesh = sharding.make_mesh((32, 1, 2), devices=devices)
    assert dict(mesh.shape) == {"data": 32, "fsdp": 1, "tensor": 2}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)


def test_a_tpu_program_keeps_one_fused_attention(v5e_2x2, monkeypatch):
    """The CPU's chunked attention is chosen when lowering for a CPU only: the same function
    compiled for a TPU slice from this CPU host has no chunk loop."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from vlrm_jax import sharding
    from vlrm_jax.models import common

    monkeypatch.setattr(common, "CPU_CHUNK_SCORE_BYTES", 1)  # chunk every row on a CPU
    mesh = sharding.make_mesh((4, 1, 1), devices=v5e_2x2)
    x = jax.ShapeDtypeStruct((8, 16, 2, 8), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    fn = jax.jit(lambda q, k, v: common.attention(q, k, v, None, 0.5))
    assert "while" not in fn.lower(x, x, x).compile().as_text()
    cpu = jax.ShapeDtypeStruct((8, 16, 2, 8), jnp.float32)
    assert "while" in fn.lower(cpu, cpu, cpu).compile().as_text()


def test_a_tpu_decode_step_takes_the_lm_head_as_it_is(v5e_2x2):
    """The CPU's table-first lm_head is chosen when lowering for a CPU only: compiled for a TPU
    slice from this CPU host, a decode step's head has no (vocabulary, rows) product."""
    import re

    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from vlrm_jax import sharding
    from vlrm_jax.models import opt

    cfg = opt.OPTConfig(vocab_size=96, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                        max_position_embeddings=16, word_embed_proj_dim=16)
    model = opt.OPTForCausalLM(cfg, rngs=nnx.Rngs(0))
    mesh = sharding.make_mesh((4, 1, 1), devices=v5e_2x2)
    fn = jax.jit(model.decode_lm_head)
    tpu = jax.ShapeDtypeStruct((16, 16), jnp.float32, sharding=NamedSharding(mesh, P()))
    assert not re.search(r"f32\[96,16\]\S* (dot|fusion|convolution)\(", fn.lower(tpu).compile().as_text())
    cpu = jax.ShapeDtypeStruct((16, 16), jnp.float32)
    assert re.search(r"f32\[96,16\]\S* dot\(", fn.lower(cpu).compile().as_text())
