"""Generation settings with transformers' names, defaults and validation."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50  # transformers' default; only used when sampling
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True, False or "never"
    no_repeat_ngram_size: int = 0
    num_return_sequences: int = 1
    # Benchmarks: never stop on EOS, always generate max_new_tokens (transformers: eos_token_id=None).
    ignore_eos: bool = False
    # Top-k sampling only: also return, per step, the ids of the support_size best scores, -1 for
    # those top-k dropped (Rollout.support). A trainer then scores p_k on them alone.
    support_size: int = 0

    @classmethod
    def paper_inference(cls, **overrides) -> "GenerationConfig":
        """The paper's caption settings (beam 5, no_repeat_ngram 2, 4 to 60 new tokens)."""
        kw = dict(num_beams=5, no_repeat_ngram_size=2, min_new_tokens=4, max_new_tokens=60)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def paper_rollout(cls, **overrides) -> "GenerationConfig":
        """The paper's rollouts: top-k 6 sampling at temperature 2, at most 60 new tokens."""
        kw = dict(do_sample=True, top_k=6, temperature=2.0, max_new_tokens=60)
        kw.update(overrides)
        return cls(**kw)

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"generation argument {name}={getattr(self, name)!r}: {why}")

        if self.max_new_tokens < 1:
            bad("max_new_tokens", "must be >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            bad("min_new_tokens", "must be between 0 and max_new_tokens")
        if self.temperature <= 0:
            bad("temperature", "must be > 0")
        if self.top_k is not None and self.top_k < 1:
            bad("top_k", "must be >= 1 or None")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if self.num_beams < 1:
            bad("num_beams", "must be >= 1")
        if self.num_beams > 1 and self.do_sample:
            bad("do_sample", "beam sampling is not supported; use num_beams=1 or do_sample=False")
        if self.early_stopping not in (True, False, "never"):
            bad("early_stopping", 'must be True, False or "never"')
        if self.no_repeat_ngram_size < 0:
            bad("no_repeat_ngram_size", "must be >= 0")
        if not 1 <= self.num_return_sequences <= self.num_beams and not (self.do_sample or self.num_beams == 1):
            bad("num_return_sequences", "must be between 1 and num_beams")
        if self.support_size and not (self.do_sample and self.num_beams == 1 and self.top_k is not None
                                      and self.support_size >= self.top_k):
            bad("support_size", "needs top-k sampling (do_sample, num_beams=1, top_k set) and must be >= top_k")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences != 1:
            bad("num_return_sequences", "greedy search returns one sequence per input")
