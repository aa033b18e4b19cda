"""Tests of vlrm_jax.data."""
