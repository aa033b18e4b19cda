"""Flax NNX modules: ViT, Q-Former, OPT, BLIP2 captioner, BLIP2-ITM, OpenCLIP."""
