"""Benchmarks, run as scripts from the repository root (`python bench/train_step.py ...`).

The A2C step beside its PyTorch composite (train_step.py) is split into: step_shapes (the shapes
table and the random models of both frameworks), jax_side / torch_side (the two steps), parity
(the check that both compute the same step), flops (the analytic FLOP model and the measured
matmul peak, also read by scaling.py) and memory (each side's peak resident set, in a subprocess).
"""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the card with JAX
