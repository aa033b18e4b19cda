"""What the training step asks of the rollout's generation settings: one sampled caption per row,
a p_k that is the sampling distribution, the reward's length limit; and whether the policy pass
scores p_k on the top-k support the rollout records."""
from __future__ import annotations

from vlrm_jax.generate.config import GenerationConfig
from vlrm_jax.rl.config import A2CConfig


def check(cfg: A2CConfig, rollout: GenerationConfig, scorer) -> None:
    if not rollout.do_sample or rollout.num_beams != 1 or rollout.num_return_sequences != 1:
        raise ValueError("rollout generation must sample one caption per row (do_sample=True, num_beams=1, "
                         "num_return_sequences=1; grouped estimators repeat the images themselves)")
    if cfg.prob == "sampled" and (rollout.no_repeat_ngram_size or rollout.min_new_tokens or rollout.top_p < 1):
        raise ValueError("a2c prob='sampled' takes p_k under temperature and top-k only; the rollout also uses "
                         "no_repeat_ngram_size / min_new_tokens / top_p, so p_k would not be the sampling "
                         "distribution: drop those or use prob='tempered'")
    limit = getattr(scorer, "max_new_tokens", rollout.max_new_tokens)
    if limit != rollout.max_new_tokens:
        raise ValueError(f"the reward's max_new_tokens ({limit}) differs from the rollout's ({rollout.max_new_tokens})")


# Support ids kept per step: top_k plus room for scores tied at the k-th (bf16 logits tie often).
SUPPORT_SLACK = 2


def uses_support(cfg: A2CConfig, rollout: GenerationConfig, vocab_size: int) -> bool:
    """Whether the policy pass scores p_k on the rollout's recorded top-k support."""
    return (cfg.support_only and cfg.prob == "sampled" and rollout.top_k is not None
            and rollout.top_k < vocab_size)
