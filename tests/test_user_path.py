"""The user's whole path, every hand-off through the command line as the README gives it: a tiny
`main.py` run -> `vlrm_jax.rl.export` -> `vlrm_jax.caption` on a folder -> `vlrm_jax.evaluate
--captions` on that file -> `convert.to_hf` -> transformers' own `generate` and `AutoProcessor` give
the same token ids and captions as the caption CLI. Each tool reads what the one before it wrote,
unchanged. The README's Python block runs as written on the same folders."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.clip import tiny as tiny_clip
from tests.helpers import REPO, convert_in_process, run_module
from tests.rl.main_runs import env

# the caption CLI's generation flags, and the same settings for transformers' generate
GENERATION = dict(max_new_tokens=8, min_new_tokens=2, num_beams=2, no_repeat_ngram_size=2, length_penalty=1.0)
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in GENERATION.items()]


def _photos(folder):
    """Square images (the caption CLI's centre crop is then the whole image, as transformers'
    processor takes it) in a nested folder."""
    rng = np.random.default_rng(5)
    (folder / "sub").mkdir(parents=True)
    names = ["beach.jpg", "street.png", "sub/dog.png"]
    for i, name in enumerate(names):
        size = (28, 56, 42)[i]
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
    return names


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_path")
    workdir, exported = root / "run", root / "captioner"
    train = subprocess.run([sys.executable, "main.py", "--config=configs/tiny.py", "--config.total_steps=2",
                            "--config.checkpoint_every=2", "--config.samples_every=0", f"--config.workdir={workdir}"],
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "stopped at step 2 of 2" in train.stdout
    export = run_module("vlrm_jax.rl.export", "--workdir", str(workdir), "--dst", str(exported))
    assert "wrote the policy of step 2" in export.stdout
    names = _photos(root / "photos")
    caption = run_module("vlrm_jax.caption", "--model", str(exported), "--images", str(root / "photos"),
                         "--out", str(root / "captions.jsonl"), "--quiet", *FLAGS)
    assert "captioned 3 of 3 images" in caption.stdout
    rows = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    return root, exported, names, rows


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_path_clip")
    config = tiny_clip.register(str(root))
    torch.save(tiny_clip.create(seed=2).state_dict(), root / "clip.pt")
    convert_in_process("convert.open_clip", "--model", tiny_clip.NAME, "--model-config", config, "--pretrained",
                       str(root / "clip.pt"), "--dst", str(root / "clip"), "--quiet")
    return root / "clip"


def test_export_writes_a_complete_captioner_folder(path):
    _, exported, _, rows = path
    present = {p.name for p in exported.iterdir()}
    assert {"config.json", "params", "hf_config.json", "tokenizer.json", "preprocessor_config.json"} <= present
    assert all(r["caption"] and r["token_ids"] for r in rows)


def test_evaluate_reads_the_caption_cli_output(path, clip_folder):
    root, _, names, rows = path
    out = root / "eval"
    proc = run_module("vlrm_jax.evaluate", "--clip", str(clip_folder), "--dataset", str(root / "photos"),
                      "--captions", str(root / "captions.jsonl"), "--out", str(out), "--quiet")
    assert "3 images" in proc.stdout and "Traceback" not in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 3 and "model" in metrics["rows"]
    # evaluate's own caption file keeps the caption CLI's keys and captions
    written = {json.loads(line)["file"]: json.loads(line)["caption"] for line in (out / "captions.jsonl").read_text().splitlines()}
    assert written == {r["file"]: r["caption"] for r in rows} and sorted(written) == sorted(names)


def test_transformers_generates_the_caption_cli_captions_from_the_to_hf_folder(path):
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    root, exported, _, rows = path
    hf_dir = root / "hf"
    run_module("convert.to_hf", "--src", str(exported), "--dst", str(hf_dir))
    model = Blip2ForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
    # the PIL backend: the processor the project's preprocessing reproduces (tests/convert/test_to_hf.py)
    processor = AutoProcessor.from_pretrained(str(hf_dir), backend="pil")
    images = [Image.open(root / "photos" / r["file"]).convert("RGB") for r in rows]
    inputs = processor(images=images, text=[""] * len(images), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, **GENERATION)
    new = out[:, inputs["input_ids"].shape[1]:].numpy()
    pad = model.config.text_config.pad_token_id
    assert [row[row != pad].tolist() for row in new] == [r["token_ids"] for r in rows]
    texts = [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
    assert texts == [r["caption"] for r in rows]


def _readme_python_block() -> str:
    readme = (Path(REPO) / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]


def test_the_readme_python_block_runs_as_written(path, clip_folder, tmp_path):
    """README's Python API block, unchanged, in a folder whose ckpt/ holds tiny models under the
    README's names (the exported policy, a converted ITM, OpenCLIP and OPT) and photos/ two images."""
    from tests import factories as F
    from vlrm_jax.testing.tiny import save_tiny_tokenizer

    root, exported, _, _ = path
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "vlrm-tiny").symlink_to(exported)
    (ckpt / "clip-g").symlink_to(clip_folder)
    F.save_tiny_itm(str(tmp_path / "itm-hf"), seed=3)
    convert_in_process("convert.blip2_itm", "--src", str(tmp_path / "itm-hf"), "--dst", str(ckpt / "blip2-itm-vit-g"), "--quiet")
    save_tiny_tokenizer(str(ckpt / "blip2-itm-vit-g"))  # the real converted ITM folder has BERT's
    F.save_tiny_opt(str(tmp_path / "opt-hf"), seed=4)
    convert_in_process("convert.opt", "--src", str(tmp_path / "opt-hf"), "--dst", str(ckpt / "opt-2.7b"), "--quiet")
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    rng = np.random.default_rng(9)
    for name, size in [("img0.jpg", (48, 40)), ("2024/img1.jpg", (30, 64))]:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / "photos" / name)
    proc = subprocess.run([sys.executable, "-c", _readme_python_block()], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n") == 2  # the two print lines
