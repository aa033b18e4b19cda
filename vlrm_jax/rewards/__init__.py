"""The VLRM reward's text side: penalties, retokenisation for the scorers, and returns."""
from vlrm_jax.rewards.penalties import (
    BatchPenalties,
    DecodedCaption,
    PenaltyRules,
    TokenPenalties,
    bad_char_mask,
    batch_token_penalties,
    decode_with_spans_batch,
    repeat_char_mask,
    token_penalties,
)
from vlrm_jax.rewards.retokenize import RetokenizedBatch, Retokenizer, retokenize_sharded
from vlrm_jax.rewards.returns import RewardWeights, compute_returns

__all__ = [
    "BatchPenalties",
    "DecodedCaption",
    "PenaltyRules",
    "RetokenizedBatch",
    "Retokenizer",
    "RewardWeights",
    "TokenPenalties",
    "bad_char_mask",
    "batch_token_penalties",
    "compute_returns",
    "decode_with_spans_batch",
    "repeat_char_mask",
    "retokenize_sharded",
    "token_penalties",
]
