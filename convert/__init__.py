"""Weight conversion between PyTorch checkpoints (transformers, open_clip) and vlrm_jax folders."""
