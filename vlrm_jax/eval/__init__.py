"""Evaluation: CLIP Recall of generated captions."""
from vlrm_jax.eval.recall import clip_recall, retrieval_ranks

__all__ = ["clip_recall", "retrieval_ranks"]
