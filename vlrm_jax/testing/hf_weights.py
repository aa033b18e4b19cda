"""transformers / open_clip weights handed to the converters in memory (no round trip to disk)."""
from __future__ import annotations


def source_from_state_dict(state_dict):
    """A converter TensorSource over an in-memory torch state dict (no round trip to disk);
    bf16 tensors come out as ml_dtypes.bfloat16 arrays."""
    import ml_dtypes
    import torch

    from convert.sources import TensorSource

    def to_numpy(t):
        t = t.detach().cpu()
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()

    return TensorSource({k: (lambda t=v: to_numpy(t)) for k, v in state_dict.items()},
                        {k: tuple(v.shape) for k, v in state_dict.items()}, "memory")
