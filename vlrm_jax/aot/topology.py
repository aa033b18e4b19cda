"""TPU compile targets named as libtpu names them ("v5e:8x8", "v4:2x4x4", "v5p:2x4x4"), turned
into compile-only devices on a CPU-only machine, and each chip's public figures for the report.

libtpu builds the devices of a topology it is not running on (deviceless ahead-of-time
compilation): `jax.experimental.topologies.get_topology_desc`. v4 and v5p chips are "megacore"
(two TensorCores as one device) on hosts of 2x2x1 chips; v5e and v6e have one core per chip and
need no extra arguments.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures from the vendor's published specifications (bf16 dense peak)."""

    name: str
    hbm_bytes: int
    peak_flops: float  # bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s in and out of one chip over all its inter-chip links


CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, 1228e9, 300e9),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 819e9, 200e9),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2765e9, 600e9),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, 1640e9, 448e9),
}
MEGACORE = ("v4", "v5p")
_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # e.g. "v5e:8x8"
    generation: str  # "v5e"
    chips: int
    chip: Chip

    @property
    def accelerator_type(self) -> str:
        """The slice as Cloud TPU's accelerator type names it (v5e is "v5litepod")."""
        return self.slice_name.replace("v5e-", "v5litepod-")

    @property
    def slice_name(self) -> str:
        """Cloud TPU's name of the slice: TensorCores for v4 / v5p (two per chip), chips otherwise."""
        cores = 2 * self.chips if self.generation in MEGACORE else self.chips
        return f"{self.generation}-{cores}"


def parse(name: str) -> Target:
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"topology {name!r}: expected GENERATION:AxB[xC] with GENERATION one of "
                         f"{sorted(CHIPS)}, e.g. v5e:8x8 or v4:2x4x4")
    generation, dims = match.groups()
    chips = math.prod(int(d) for d in dims.split("x"))
    if generation in MEGACORE and len(dims.split("x")) != 3:
        raise ValueError(f"topology {name!r}: {generation} slices are 3-D (e.g. {generation}:2x2x4)")
    return Target(name, generation, chips, CHIPS[generation])


def devices(target: Target) -> list:
    """Compile-only devices of the target (libtpu needed: `pip install -e .[tpu]`)."""
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - jax always has it
        raise RuntimeError(f"jax has no topologies module: {e}") from e
    kwargs = {}
    if target.generation in MEGACORE:
        kwargs = dict(chip_config_name="megacore", chips_per_host_bounds=(2, 2, 1), num_slices=1,
                      wrap=(False, False, False))
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask on a CPU machine
    # compile-only: several processes may load libtpu at once (no chip is claimed)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # what a TPU VM's metadata would say; unset, libtpu logs errors about the missing values
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    try:
        topology = topologies.get_topology_desc(platform="tpu", topology_name=target.name, **kwargs)
    except Exception as e:  # noqa: BLE001 - libtpu's errors come as several types
        raise RuntimeError(f"libtpu could not build topology {target.name!r} ({e}); is libtpu installed "
                           "(pip install -e '.[tpu]', or make install)?") from e
    found = list(topology.devices)
    if len(found) != target.chips:
        raise RuntimeError(f"topology {target.name!r} gave {len(found)} devices, expected {target.chips}")
    return found
