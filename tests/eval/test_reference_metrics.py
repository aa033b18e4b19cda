"""reference_scores: pycocoevalcap's numbers, with and without Java, kept quiet."""
import gc
import shutil
import subprocess
import sys
import threading

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as meteor_module
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vlrm_jax.eval import reference_metrics as rm

needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="no `java` on PATH: pycocoevalcap's PTB tokenizer and METEOR need it")

# Mixed case and punctuation, one empty caption, one image (3) without references.
CAPTIONS = [
    "A man riding a Horse on the beach.",
    "Two dogs playing with a frisbee, in the park.",
    "",
    "a close-up of a t-shirt",
    "The cat's sleeping on the sofa",
    "A red bus driving down the street?!",
]
REFERENCES = [
    ["A man rides a horse along the beach.", "Someone riding a brown horse, near the ocean!",
     "a MAN on a horse at the shore"],
    ["Two dogs play with a red frisbee.", "Dogs' game: catching a frisbee in the park",
     "two dogs in a park", "A dog jumps for a frisbee...", "The dogs aren't tired yet."],
    ["A kitchen with white cabinets.", "A clean kitchen (with a stove)."],
    [],
    ["A cat is sleeping on a couch.", "A gray cat naps on the sofa -- peacefully."],
    ["A red double-decker bus on a city street."],
]
SCORED = [0, 1, 2, 4, 5]


def direct_scores(gts, res, with_meteor):
    """(corpus, per-image) scores of pycocoevalcap's scorers called as its COCO evaluation does."""
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    corpus, per_image = {"bleu4": bleu[3]}, {"bleu4": bleu_per_image[3]}
    if with_meteor:
        corpus["meteor"], per_image["meteor"] = meteor_module.Meteor().compute_score(gts, res)
    corpus["rouge_l"], per_image["rouge_l"] = Rouge().compute_score(gts, res)
    corpus["cider"], per_image["cider"] = Cider().compute_score(gts, res)
    return corpus, per_image


def assert_same_scores(result, corpus, per_image):
    assert list(result.scores) == list(corpus)
    for key in corpus:
        assert type(result.scores[key]) is float
        assert result.scores[key] == pytest.approx(corpus[key], abs=1e-9), key
        expected = [None] * len(CAPTIONS)
        for position, value in zip(SCORED, per_image[key]):
            expected[position] = pytest.approx(float(value), abs=1e-9)
        assert result.per_caption[key] == expected, key


def assert_no_reference_note(result):
    assert any("1 of 6 images have no reference captions" in note for note in result.notes)


@pytest.fixture(scope="module")
def ptb_tokenized():
    tokenizer = PTBTokenizer()
    res = tokenizer.tokenize({i: [{"caption": CAPTIONS[i]}] for i in SCORED})
    gts = tokenizer.tokenize({i: [{"caption": r} for r in REFERENCES[i]] for i in SCORED})
    return gts, res


@needs_java
def test_scores_equal_pycocoevalcap_with_its_ptb_tokenizer(ptb_tokenized):
    result = rm.reference_scores(CAPTIONS, REFERENCES)
    assert_same_scores(result, *direct_scores(*ptb_tokenized, with_meteor=True))
    assert list(result.scores) == ["bleu4", "meteor", "rouge_l", "cider"]
    assert result.tokenizer == rm.PTB_TOKENIZER
    assert_no_reference_note(result)
    assert len(result.notes) == 1
    assert result.per_caption["cider"][2] == 0.0  # the empty caption


def never_start_java(*args, **kwargs):
    raise AssertionError(f"a process was started without Java: {args}")


def test_without_java_scores_fallback_tokens_and_leaves_out_meteor(monkeypatch):
    monkeypatch.setattr(rm, "java_available", lambda: False)
    monkeypatch.setattr(subprocess, "Popen", never_start_java)
    result = rm.reference_scores(CAPTIONS, REFERENCES)

    res = {i: [rm.fallback_tokenize(CAPTIONS[i])] for i in SCORED}
    gts = {i: [rm.fallback_tokenize(r) for r in REFERENCES[i]] for i in SCORED}
    assert_same_scores(result, *direct_scores(gts, res, with_meteor=False))
    assert "meteor" not in result.scores and "meteor" not in result.per_caption
    assert result.tokenizer == rm.FALLBACK_TOKENIZER
    assert_no_reference_note(result)
    (java_note,) = [note for note in result.notes if "Java" in note]
    assert "METEOR is not reported" in java_note
    assert "apt-get install default-jre-headless" in java_note and "make install" in java_note


@needs_java
def test_fallback_tokenizer_matches_ptb_on_the_fixed_set(ptb_tokenized):
    gts, res = ptb_tokenized
    for i in SCORED:
        assert rm.fallback_tokenize(CAPTIONS[i]) == res[i][0]
        assert [rm.fallback_tokenize(r) for r in REFERENCES[i]] == gts[i]


@pytest.mark.parametrize("caption, tokens", [
    # each expected output is what pycocoevalcap's PTBTokenizer gives
    ("A man's dog, running.", "a man 's dog running"),
    ("Don't STOP! Can't won't", "do n't stop ca n't wo n't"),
    ("a close-up of a t-shirt...", "a close-up of a t-shirt"),
    ("(left) [right] {x}", "-lrb- left -rrb- -lsb- right -rsb- -lcb- x -rcb-"),
    ('"quoted" text', "quoted text"),
    ("it's 3.5 m/s, e.g. U.S.A. and the U.S.", "it 's 3.5 m/s e.g. u.s.a. and the u.s."),
    ("50% off; $5 -- now", "50 % off $ 5 now"),
    ("what?! Hi!!!", "what ?! hi !!!"),
    ("dogs' toys at 3:30, 1,000 people", "dogs toys at 3:30 1,000 people"),
    ("hello--world a---b", "hello world a b"),
    ("cannot", "can not"),
    ("", ""),
])
def test_fallback_tokenizer_rules(caption, tokens):
    assert rm.fallback_tokenize(caption) == tokens


def start_python_instead_of_java(real_popen):
    def popen(cmd, *args, **kwargs):
        assert cmd[0] == "java"
        return real_popen([sys.executable, "-c", "pass"], *args, **kwargs)
    return popen


def test_java_failing_in_the_tokenizer_falls_back(monkeypatch):
    """A Java that starts but tokenizes nothing: the silent line loss is caught, not scored."""
    monkeypatch.setattr(rm, "java_available", lambda: True)
    monkeypatch.setattr(subprocess, "Popen", start_python_instead_of_java(subprocess.Popen))
    result = rm.reference_scores(CAPTIONS, REFERENCES)
    assert result.tokenizer == rm.FALLBACK_TOKENIZER
    assert list(result.scores) == ["bleu4", "rouge_l", "cider"]
    (java_note,) = [note for note in result.notes if "Java failed" in note]
    assert "PTB tokenizer" in java_note and "RuntimeError" in java_note


def test_java_missing_at_run_time_falls_back(monkeypatch):
    def no_java(texts_by_key):
        raise FileNotFoundError("[Errno 2] No such file or directory: 'java'")

    monkeypatch.setattr(rm, "java_available", lambda: True)
    monkeypatch.setattr(rm, "_ptb_tokenize", no_java)
    result = rm.reference_scores(CAPTIONS, REFERENCES)
    assert result.tokenizer == rm.FALLBACK_TOKENIZER
    assert "meteor" not in result.scores
    assert any("Java failed" in note and "FileNotFoundError" in note for note in result.notes)


class DeadMeteor(meteor_module.Meteor):
    """A METEOR whose Java child exits at once."""

    def __init__(self):
        self.meteor_p = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lock = threading.Lock()


@needs_java
def test_meteor_failing_leaves_out_meteor_only(monkeypatch, ptb_tokenized):
    monkeypatch.setattr(meteor_module, "Meteor", DeadMeteor)
    result = rm.reference_scores(CAPTIONS, REFERENCES)
    gc.collect()  # Meteor.__del__ takes the lock a failed compute_score left held: must not hang
    assert_same_scores(result, *direct_scores(*ptb_tokenized, with_meteor=False))
    assert result.tokenizer == rm.PTB_TOKENIZER
    assert any("Java failed while running METEOR" in note for note in result.notes)


@needs_java
def test_quiet_unless_verbose(monkeypatch, capfd):
    monkeypatch.setattr(rm, "_meteor_score", lambda gts, res: (0.0, [0.0] * len(res)))  # no JVM
    rm.reference_scores(CAPTIONS, REFERENCES)
    assert capfd.readouterr() == ("", "")
    rm.reference_scores(CAPTIONS, REFERENCES, verbose=True)
    out, err = capfd.readouterr()
    assert "ratio:" in out  # Bleu's own print
    assert "PTBTokenizer tokenized" in err  # the Java tokenizer's report


def test_no_references_at_all():
    result = rm.reference_scores(["a dog", ""], [[], ["  "]])
    assert result.scores == {} and result.per_caption == {}
    assert result.notes == ["none of the 2 images has reference captions: no reference metrics are reported"]


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 captions but 1 reference lists"):
        rm.reference_scores(["a", "b"], [["a"]])
