"""`python -m vlrm_jax.rewards explain`: the paper's Table 1 for one caption."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from vlrm_jax.rewards import PenaltyRules
from vlrm_jax.rewards.__main__ import main
from vlrm_jax.rewards.explain import explain_caption

REPO = pathlib.Path(__file__).resolve().parents[2]
TABLE1_TEXT = "an image of a man in a green shirt is talking about his green shirt"
TABLE1_TOKENS = [
    "an", " image", " of", " a", " man", " in", " a", " green", " shirt",
    " is", " talking", " about", " his", " green", " shirt", "</s>",
]
TABLE1_BAD = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
TABLE1_REPEAT = [0] * 14 + [1, 0]
TABLE1_R = [-5, -4, -3, -2, -2, -2, -2, -2, -2, -2, -1, 0, 1, 1, 1, 2]  # sim + ref = 2


@pytest.fixture(scope="module")
def bad_phrases_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lists") / "bad.txt"
    path.write_text("# Table 1 of the paper\nan image of\nis talking about\n")
    return path


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "vlrm_jax.rewards", "explain", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_cli_table_and_json(opt_tokenizer_dir, bad_phrases_file):
    common = ["--tokenizer", opt_tokenizer_dir, "--text", TABLE1_TEXT, "--sim", "3.25",
              "--ref", "-1.25", "--bad-phrases", bad_phrases_file]
    table = run_cli(*common)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"caption: {TABLE1_TEXT!r}"
    assert lines[1].split() == ["sim", "=", "3.25", "ref", "=", "-1.25", "noeos", "=", "0"]
    assert len(lines) == 3 + len(TABLE1_TOKENS)
    for k, (line, token) in enumerate(zip(lines[3:], TABLE1_TOKENS)):
        assert line.startswith(f"{k:>3}  {token!r} "), line
    rows = [line.split() for line in lines[3:]]  # last four columns: bad, repeat, noeos, R
    assert [int(row[-4]) for row in rows] == TABLE1_BAD
    assert [int(row[-3]) for row in rows] == TABLE1_REPEAT
    assert [int(row[-2]) for row in rows] == [0] * 16
    assert [float(row[-1]) for row in rows] == TABLE1_R

    as_json = run_cli(*common, "--json")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["text"] == TABLE1_TEXT and result["noeos"] == 0
    assert [t["token"] for t in result["tokens"]] == TABLE1_TOKENS
    assert [t["bad"] for t in result["tokens"]] == TABLE1_BAD
    assert [t["repeat"] for t in result["tokens"]] == TABLE1_REPEAT
    assert [t["R"] for t in result["tokens"]] == TABLE1_R


def test_cli_names_a_bad_tokenizer_dir(tmp_path, capsys):
    # In-process (the subprocess path is covered above): argparse exits with status 2.
    for directory, reason in [(tmp_path / "missing", "not a directory"),
                              (tmp_path, "cannot load a tokenizer")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["explain", "--tokenizer", str(directory), "--text", "a dog"])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert f"--tokenizer {str(directory)!r}" in error and reason in error


def test_noeos_caption_has_no_eos_row_and_pays_one(opt_tokenizer):
    rules = PenaltyRules(bad_phrases=("an image of",), exempt_words=frozenset({"a"}))
    result = explain_caption(opt_tokenizer, "an image of a dog", rules=rules, sim=1.0, noeos=True)
    assert [t["token"] for t in result["tokens"]] == ["an", " image", " of", " a", " dog"]
    assert result["noeos"] == 1 and all(t["noeos"] == 1 for t in result["tokens"])
    assert [t["R"] for t in result["tokens"]] == [-3.0, -2.0, -1.0, 0.0, 0.0]
