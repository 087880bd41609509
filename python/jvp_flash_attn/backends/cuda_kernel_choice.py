"""Which kernels of the compiled core a call runs, decided once per call and passed down.

A device is served by one kernel family: the Hopper one (sm_90a: wgmma products, TMA loads) on a
compute capability 9.0 GPU when the build holds it, the portable one (mma.sync) elsewhere. Each
family has its own tile shapes, which may differ by head dim, and a mask's tile description must
be built for the shape of the kernel that walks it. The backward has three forms: "two-kernel" (dK/dV, then dQ; bitwise
repeatable; the portable family's only form) and, on Hopper, "fused" (one kernel that also adds
dQ into a float32 buffer with reduce-adds in the order the blocks arrive, so dQ is not bitwise
repeatable) and "fused-ordered" (the same kernel adding each dQ tile in decreasing key-tile order,
each block waiting for its turn: bitwise repeatable). On Hopper "fused" runs unless the call asks
for deterministic gradients, then "fused-ordered"; one tile description (the fused kernel's
shape) serves both of its sides.

One developer switch, read once at import: ``JFA_CUDA_SM90=0`` runs the portable family on Hopper
too (to compare the two families in one build).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .cuda_module import load_module

FAMILIES = ("sm90a", "portable")
PORTABLE_ONLY = os.environ.get("JFA_CUDA_SM90") == "0"

BWD_FORMS = ("two-kernel", "fused", "fused-ordered")


@dataclass(frozen=True)
class DeviceKernels:
    """What the build runs on one device at one pair of head dims: the family and the (block_m,
    block_n) of each walk (wider key tiles where the head dims leave registers for them)."""

    family: str                            # "sm90a" (wgmma, TMA) or "portable" (mma.sync)
    fwd: tuple[int, int]
    jvp: tuple[int, int]
    bwd_q: tuple[int, int] | None          # dQ of the two-kernel backward: key tiles per query tile
    bwd_kv: tuple[int, int] | None         # its dK/dV: query tiles per key tile (portable family only)
    bwd_fused: tuple[int, int] | None      # the fused backward's (sm90a family only)


@dataclass(frozen=True)
class KernelChoice:
    """The kernels of one call: the tile shapes of the descriptions they walk and the backward form."""

    family: str
    q_tiles: tuple[int, int]               # walked per query tile (forward, JVP, dQ)
    k_tiles: tuple[int, int] | None = None  # walked per key tile (the backward's dK/dV)
    backward_form: str | None = None


_family_by_device: dict[int, str] = {}
_by_device: dict[tuple[int, int, int], DeviceKernels] = {}


def device_family(device: int) -> str:
    """The kernel family that serves a device, read from the module once per device."""
    if device not in _family_by_device:
        sm90 = load_module().sm90_capable(device) and not PORTABLE_ONLY
        _family_by_device[device] = "sm90a" if sm90 else "portable"
    return _family_by_device[device]


def device_kernels(device: int, head_dim_qk: int, head_dim_v: int) -> DeviceKernels:
    """The family that serves a device and its tile shapes at these head dims, read from the module
    once per (device, head dims)."""
    key = (device, head_dim_qk, head_dim_v)
    if key not in _by_device:
        family = device_family(device)
        shapes = {walk: None if shape is None else tuple(shape)
                  for walk, shape in load_module().tile_shapes(family, head_dim_qk, head_dim_v).items()}
        _by_device[key] = DeviceKernels(family, shapes["fwd"], shapes["jvp"], shapes["bwd_q"], shapes["bwd_kv"],
                                        shapes["bwd_fused"])
    return _by_device[key]


def choose_forward(device: int, jvp: bool, head_dim_qk: int, head_dim_v: int) -> KernelChoice:
    kernels = device_kernels(device, head_dim_qk, head_dim_v)
    return KernelChoice(kernels.family, kernels.jvp if jvp else kernels.fwd)


def choose_backward(device: int, deterministic: bool, head_dim_qk: int, head_dim_v: int) -> KernelChoice:
    """The fused form where the family has it (adding dQ in key-tile order when the gradients must
    be bitwise repeatable), else the two-kernel form."""
    kernels = device_kernels(device, head_dim_qk, head_dim_v)
    if kernels.bwd_fused is not None:
        return KernelChoice(kernels.family, kernels.bwd_fused, kernels.bwd_fused,
                            "fused-ordered" if deterministic else "fused")
    return KernelChoice(kernels.family, kernels.bwd_q, kernels.bwd_kv, "two-kernel")
