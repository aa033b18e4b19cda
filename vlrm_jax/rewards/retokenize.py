"""From generated captioner ids to everything the reward models read, as fixed-shape arrays.

The captioner (OPT) generates byte-level BPE ids; the reward needs (a) the text penalties on those
ids, (b) the same caption as BERT WordPiece ids for BLIP2-ITM and (c) as CLIP BPE ids for OpenCLIP.
Tokenizers run on the host, so `Retokenizer` is plain numpy, and `retokenize_sharded` puts it
inside a jitted program: `jax.shard_map` over the mesh's batch axes, one `jax.pure_callback` per
shard, so each host only decodes the captions its own devices hold.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from vlrm_jax.rewards.penalties import PenaltyRules, batch_token_penalties

DEFAULT_ITM_MAX_LENGTH = 64  # BERT tokens; fits the paper's 60-token OPT captions
DEFAULT_CLIP_CONTEXT_LENGTH = 77  # every CLIP text tower


@dataclasses.dataclass(frozen=True)
class RetokenizedBatch:
    """Host result for B captions of T generated ids. Absent tokenizers give None fields."""

    bad: np.ndarray  # float32 (B, T)
    repeat: np.ndarray  # float32 (B, T)
    noeos: np.ndarray  # float32 (B,)
    mask: np.ndarray  # bool (B, T)
    texts: list[str]  # decoded captions (special tokens skipped), as the penalties saw them
    itm_input_ids: np.ndarray | None = None  # int32 (B, itm_max_length): [CLS] ... [SEP] [PAD]...
    itm_attention_mask: np.ndarray | None = None  # int32 (B, itm_max_length)
    clip_input_ids: np.ndarray | None = None  # int32 (B, clip_context_length)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array field that is present (texts left out: they cannot leave a callback)."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "texts" and getattr(self, field.name) is not None
        }


def text_for_scoring(text: str) -> str:
    # transformers' BLIP2 captioning strips the decoded caption; the scorers see it the same way.
    return text.strip()


def itm_token_ids(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, ...]:
    """BERT-style ids and attention mask, padded / truncated to `max_length` ([SEP] kept last)."""
    encoded = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return (
        np.asarray(encoded["input_ids"], dtype=np.int32).reshape(len(texts), max_length),
        np.asarray(encoded["attention_mask"], dtype=np.int32).reshape(len(texts), max_length),
    )


def clip_token_ids(tokenizer: Callable, texts: Sequence[str], context_length: int) -> np.ndarray:
    """open_clip tokenizer ids (SOT ... EOT, zero padded, EOT kept when truncated)."""
    if not texts:
        return np.zeros((0, context_length), dtype=np.int32)
    ids = tokenizer(list(texts), context_length=context_length)
    return np.asarray(ids, dtype=np.int32).reshape(len(texts), context_length)


class _ShapesOnly:
    """A tokenizer stand-in for steps built to be compiled, never run (`vlrm_jax.aot`): the
    retokenisation's output shapes need only know which tokenizers exist."""

    def __call__(self, *args, **kwargs):
        raise RuntimeError("this step was built from shapes alone (no tokenizers): it compiles but cannot run")

    batch_decode = __call__

    def __repr__(self) -> str:
        return "SHAPES_ONLY"


SHAPES_ONLY = _ShapesOnly()


@dataclasses.dataclass(frozen=True, eq=False)
class Retokenizer:
    """Host-side conversion of generated captioner ids (B, T) into reward inputs.

    captioner_tokenizer: the captioner's HF fast tokenizer (decodes the generated ids).
    max_new_tokens: the generation limit; ids past it are ignored, noeos = no EOS before it.
    itm_tokenizer: HF BERT-style fast tokenizer of BLIP2-ITM, or None to skip.
    clip_tokenizer: an open_clip tokenizer (`open_clip.get_tokenizer(name)`), or None to skip.
    """

    captioner_tokenizer: Any
    max_new_tokens: int
    rules: PenaltyRules = dataclasses.field(default_factory=PenaltyRules.default)
    itm_tokenizer: Any | None = None
    itm_max_length: int = DEFAULT_ITM_MAX_LENGTH
    clip_tokenizer: Callable | None = None
    clip_context_length: int = DEFAULT_CLIP_CONTEXT_LENGTH
    eos_token_id: int | Sequence[int] | None = None

    def __call__(self, generated_ids: np.ndarray) -> RetokenizedBatch:
        generated_ids = np.asarray(generated_ids)
        penalties = batch_token_penalties(
            generated_ids,
            self.captioner_tokenizer,
            self.rules,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.eos_token_id,
        )
        scored_texts = [text_for_scoring(t) for t in penalties.texts]
        itm_ids = itm_mask = clip_ids = None
        if self.itm_tokenizer is not None:
            itm_ids, itm_mask = itm_token_ids(self.itm_tokenizer, scored_texts, self.itm_max_length)
        if self.clip_tokenizer is not None:
            clip_ids = clip_token_ids(self.clip_tokenizer, scored_texts, self.clip_context_length)
        return RetokenizedBatch(
            bad=penalties.bad,
            repeat=penalties.repeat,
            noeos=penalties.noeos,
            mask=penalties.mask,
            texts=penalties.texts,
            itm_input_ids=itm_ids,
            itm_attention_mask=itm_mask,
            clip_input_ids=clip_ids,
        )

    def host_arrays(self, generated_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The pure_callback body: `arrays()` of one shard."""
        return self(generated_ids).arrays()

    def output_shapes(self, batch: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of `host_arrays` for (batch, length) ids."""
        shapes = {
            "bad": jax.ShapeDtypeStruct((batch, length), np.float32),
            "repeat": jax.ShapeDtypeStruct((batch, length), np.float32),
            "noeos": jax.ShapeDtypeStruct((batch,), np.float32),
            "mask": jax.ShapeDtypeStruct((batch, length), np.bool_),
        }
        if self.itm_tokenizer is not None:
            itm = jax.ShapeDtypeStruct((batch, self.itm_max_length), np.int32)
            shapes.update(itm_input_ids=itm, itm_attention_mask=itm)
        if self.clip_tokenizer is not None:
            shapes["clip_input_ids"] = jax.ShapeDtypeStruct(
                (batch, self.clip_context_length), np.int32
            )
        return shapes


def _rank2(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape if len(shape) >= 2 else (*shape, 1)


def retokenize_sharded(
    retokenizer: Retokenizer,
    generated_ids: jax.Array,
    *,
    mesh: Mesh | None = None,
    batch_axes: str | tuple[str, ...] | None = None,
) -> dict[str, jax.Array]:
    """Jit-compatible `retokenizer.host_arrays`, run per batch shard on the host.

    generated_ids (B, T) must be sharded (or shardable) along `batch_axes` of `mesh` (default:
    the mesh set with `jax.set_mesh`); every output is sharded the same way along its first axis.
    Devices that hold the same shard (other mesh axes) each run the callback on it. With no mesh
    at all (one device, a notebook) the whole batch goes through one callback. batch_axes default:
    the mesh's own batch axes (`vlrm_jax.sharding.BATCH_AXES` that it has).
    """
    from vlrm_jax.sharding import BATCH_AXES

    if batch_axes is None:
        names = (mesh if mesh is not None else jax.sharding.get_abstract_mesh()).axis_names
        batch_axes = tuple(a for a in BATCH_AXES if a in names)
    spec = PartitionSpec(batch_axes)

    def per_shard(local_ids: jax.Array) -> dict[str, jax.Array]:
        shapes = retokenizer.output_shapes(*local_ids.shape)
        # Every result crosses the callback at rank 2 and is reshaped after: the TPU host-callback
        # lowering (jax 0.10, Shardy) gives all results the first one's sharding, so a (B,) result
        # beside (B, T) ones fails to lower ("sharding doesn't match tensor rank").
        lifted = {k: jax.ShapeDtypeStruct(_rank2(s.shape), s.dtype) for k, s in shapes.items()}

        def host(ids):
            return {k: v.reshape(_rank2(v.shape)) for k, v in retokenizer.host_arrays(ids).items()}

        out = jax.pure_callback(host, lifted, local_ids)
        return {k: out[k].reshape(shapes[k].shape) for k in shapes}

    if mesh is None and jax.sharding.get_abstract_mesh().empty:
        return per_shard(generated_ids)
    return jax.shard_map(per_shard, mesh=mesh, in_specs=spec, out_specs=spec)(generated_ids)
