"""convert.open_clip: strictness on damaged sources, other source layouts, and what the folder carries."""
import json
import os

import numpy as np
import pytest
import torch

from tests.clip import tiny


def _run_cli(capsys, *argv) -> tuple[int, str]:
    """The converter's command line in this process (cheaper than a subprocess): exit code, stderr."""
    from convert import cli
    from convert import open_clip as conv

    with pytest.raises(SystemExit) as exit_info:
        cli.run(conv.main, [*argv, "--quiet"])
    return exit_info.value.code, capsys.readouterr().err


def _damaged(tiny_clip, name, edit):
    model, _, _, _, root = tiny_clip
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    edit(sd)
    path = root / f"{name}.pt"
    torch.save(sd, path)
    return path


def _assert_nothing_written(root, name):
    assert not (root / name).exists()
    assert not [p for p in os.listdir(root) if p.startswith(f".{name}.partial")]


@pytest.mark.parametrize(
    "name,edit,key",
    [
        ("missing", lambda sd: sd.pop("transformer.resblocks.2.ln_2.bias"), "transformer.resblocks.2.ln_2.bias"),
        ("shape", lambda sd: sd.__setitem__("visual.proj", torch.zeros(30, 13)), "visual.proj"),
        ("unknown", lambda sd: sd.__setitem__("visual.transformer.resblocks.0.extra", torch.zeros(3)),
         "visual.transformer.resblocks.0.extra"),
        ("in_proj", lambda sd: sd.__setitem__("visual.transformer.resblocks.1.attn.in_proj_weight",
                                              torch.zeros(60, 30)), "visual.transformer.resblocks.1.attn.in_proj_weight"),
    ],
)
def test_damaged_source_fails_naming_the_key_and_leaves_nothing(tiny_clip, capsys, name, edit, key):
    _, _, config, _, root = tiny_clip
    src = _damaged(tiny_clip, name, edit)
    code, err = _run_cli(capsys, "--model", tiny.NAME, "--model-config", config, "--pretrained", str(src),
                         "--dst", str(root / f"out-{name}"))
    assert code == 2 and key in err, err
    _assert_nothing_written(root, f"out-{name}")


def test_safetensors_with_module_prefix_and_vector_logit_scale_converts(tiny_clip):
    """DDP checkpoints prefix keys with `module.`; nonscalar_logit_scale stores shape (1,)."""
    from safetensors.torch import save_file

    from convert import open_clip as conv

    model, _, config, dst, root = tiny_clip
    sd = {f"module.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd["module.logit_scale"] = sd["module.logit_scale"].reshape(1)
    save_file(sd, str(root / "ddp.safetensors"))
    conv.convert(tiny.NAME, str(root / "ddp.safetensors"), str(root / "ddp"), model_config_path=config, progress=False)
    from vlrm_jax.clip_api import ClipModel
    from vlrm_jax.models import build

    got = build.flat_params(ClipModel.load(str(root / "ddp")).module)
    expected = build.flat_params(ClipModel.load(str(dst)).module)
    assert got.keys() == expected.keys() and got[("logit_scale",)].shape == ()
    for path, value in expected.items():
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(value), err_msg=str(path))


def test_folder_tokenizer_equals_open_clip_get_tokenizer(tiny_clip):
    import open_clip

    from vlrm_jax.clip_api import ClipModel

    clip = ClipModel.load(str(tiny_clip[3]))
    expected = open_clip.get_tokenizer(tiny.NAME)(tiny.TEXTS).numpy()
    got = clip.tokenize(tiny.TEXTS)
    assert got.dtype == np.int32 and got.shape == (len(tiny.TEXTS), 16)
    np.testing.assert_array_equal(got, expected)


def test_preprocess_json_equals_open_clip_and_checkpoint_loads_there(tiny_clip):
    """open_clip itself loads the same file strictly and reports the same eval preprocessing."""
    import open_clip

    from vlrm_jax.clip_api import ClipModel

    _, weights, _, dst, _ = tiny_clip
    reference = open_clip.create_model(tiny.NAME, pretrained=str(weights))
    pp = reference.visual.preprocess_cfg
    expected = dict(image_size=list(pp["size"]), mean=list(pp["mean"]), std=list(pp["std"]),
                    resize_mode=pp["resize_mode"], interpolation=pp["interpolation"], fill_color=pp["fill_color"])
    assert ClipModel.load(str(dst)).preprocess_config == expected
    with open(dst / "open_clip_config.json") as f:
        assert json.load(f)["model_cfg"] == tiny.CONFIG


def test_pixel_values_follow_the_folder_preprocessing(tiny_clip):
    from PIL import Image

    from vlrm_jax.clip_api import ClipModel
    from vlrm_jax.data.preprocess import OpenClipPreprocessor

    clip = ClipModel.load(str(tiny_clip[3]))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    pixels = clip.pixel_values([image])
    assert pixels.shape == (1, 28, 28, 3)
    np.testing.assert_array_equal(pixels[0], OpenClipPreprocessor(28)(image))


def test_pretrained_tag_goes_through_open_clip_registry(tiny_clip, capsys):
    """No hub here: a real tag resolves in open_clip's registry and then fails to download."""
    root = tiny_clip[4]
    code, err = _run_cli(capsys, "--model", "ViT-g-14", "--pretrained", "laion2b_s12b_b42k", "--dst", str(root / "tag"))
    assert code == 2 and "could not fetch open_clip weights ViT-g-14:laion2b_s12b_b42k" in err, err
    code, err = _run_cli(capsys, "--model", "ViT-g-14", "--pretrained", "no_such_tag", "--dst", str(root / "tag"))
    assert code == 2 and "laion2b_s12b_b42k" in err, err  # lists the known tags
    _assert_nothing_written(root, "tag")


def test_unsupported_option_and_unknown_model_are_refused(tiny_clip, capsys):
    _, weights, _, _, root = tiny_clip
    layer_scale = {**tiny.CONFIG, "vision_cfg": {**tiny.CONFIG["vision_cfg"], "ls_init_value": 1e-4}}
    config = tiny.write_config(str(root), layer_scale, name="tiny-layer-scale")
    code, err = _run_cli(capsys, "--model", "tiny-ls", "--model-config", config, "--pretrained", str(weights),
                         "--dst", str(root / "ls"))
    assert code == 2 and "ls_init_value" in err, err
    code, err = _run_cli(capsys, "--model", "no-such-model", "--pretrained", str(weights), "--dst", str(root / "ls"))
    assert code == 2 and "no-such-model" in err, err
    _assert_nothing_written(root, "ls")


def test_existing_destination_is_refused(tiny_clip, capsys):
    _, weights, config, dst, _ = tiny_clip
    code, err = _run_cli(capsys, "--model", tiny.NAME, "--model-config", config, "--pretrained", str(weights),
                         "--dst", str(dst))
    assert code == 2 and "already exists" in err


@pytest.mark.parametrize("name", ["ViT-g-14", "ViT-bigG-14"])
def test_table_maps_every_real_model_tensor_with_the_right_shape(name):
    """At the real shapes, without any weights: open_clip's model on the meta device gives the
    tensor names and shapes; every one must map onto exactly one Flax parameter of that shape."""
    import open_clip
    from flax import nnx

    from convert import open_clip as conv
    from convert.table import expand
    from vlrm_jax.models import build
    from vlrm_jax.models.clip import ClipConfig, ClipModel

    model_cfg = open_clip.get_model_config(name)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in open_clip.model.CLIP(**model_cfg).state_dict().items()}
    cfg = ClipConfig.from_open_clip(model_cfg)
    abstract = build.flat_params(build.abstract(lambda: ClipModel(cfg, rngs=nnx.Rngs(0))))
    entries = expand(conv.table(cfg), conv.layer_sets(cfg))
    assert sorted(e.source for e in entries) == sorted(shapes)
    assert {e.target for e in entries} == set(abstract)
    for e in entries:
        flax_shape = e.transform.to_flax(np.empty(shapes[e.source], np.uint8)).shape
        want = abstract[e.target].shape[1:] if e.stack_index is not None else abstract[e.target].shape
        assert flax_shape == want, e.source
    n_params = sum(int(np.prod(a.shape)) for a in abstract.values())
    assert n_params == sum(int(np.prod(s)) for s in shapes.values())
