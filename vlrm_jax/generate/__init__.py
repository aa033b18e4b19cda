"""Jitted decoding for the BLIP2 captioner: greedy, top-k/top-p/temperature sampling, beam search.

One engine (`decode.py`: prefill of [image soft prompt ; BOS] into a KV cache, then one token per
step) and one `lax.while_loop` per strategy over a state pytree, all inside `jax.jit`: no host
sync per token, the loop stops when every sequence has finished. Arguments and their meaning
follow transformers' `generate` so results match it token for token.
"""
from vlrm_jax.generate.config import GenerationConfig
from vlrm_jax.generate.search import generate

__all__ = ["GenerationConfig", "generate"]
