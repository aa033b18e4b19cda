"""Tests of vlrm_jax.eval."""
