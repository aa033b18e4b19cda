"""Ahead-of-time compilation for TPU slices on a CPU machine: `python -m vlrm_jax.aot`."""
