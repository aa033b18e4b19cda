"""The A2C fine-tuning: config, the jitted step (rollout, reward, update), the loop, checkpoints,
resume and export of the trained policy (`python main.py`, `python -m vlrm_jax.rl.export`)."""
