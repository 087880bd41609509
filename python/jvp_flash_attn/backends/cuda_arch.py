"""Which GPUs a build of the compiled core can run on.

A build holds SASS for each arch in JFA_CUDA_ARCHS (sm_90 as sm_90a, the Hopper wgmma path) and
the PTX of the top arch. A GPU runs the SASS of its own major version and an equal or lower
minor one (sm_90a: compute capability 9.0 only); any newer GPU runs the PTX, which the driver
JIT-compiles on first use and caches: the portable mma.sync kernels, since the Hopper-only ones
are not in the PTX. Older GPUs than every built arch, or than sm_80 (which the kernels' mma.sync
and cp.async need), have no kernel: the backend says so and ``backend=None`` moves on.
"""
from __future__ import annotations

import re

MIN_CAPABILITY = (8, 0)


class NoKernelImage(str):
    """Why a GPU has no kernel in this build; ``backend=None`` falls back and says this once."""


def _arch(name: str) -> tuple[int, int, bool]:
    """'sm_90a' -> (9, 0, True), 'compute_120' -> (12, 0, False)."""
    m = re.fullmatch(r"(?:sm|compute)_(\d+?)(\d)(a)?", name)
    if m is None:
        raise ValueError(f"not an arch name: {name!r}")
    return int(m.group(1)), int(m.group(2)), m.group(3) is not None


def built(info: dict) -> str:
    """'sm_80, sm_90a + PTX compute_90' (or 'unknown archs' for a build that did not record them)."""
    if not info.get("sass"):
        return "unknown archs"
    return ", ".join(info["sass"]) + (f" + PTX {info['ptx']}" if info.get("ptx") else "")


def coverage(capability: tuple[int, int], info: dict) -> tuple[str | None, str]:
    """(None or the reason there is no kernel, how the kernels run) on a GPU of ``capability``."""
    cc = tuple(capability)
    gpu = f"sm_{cc[0]}{cc[1]}"
    if cc < MIN_CAPABILITY:
        return NoKernelImage(f"this GPU is {gpu}; the compiled kernels need sm_80 or newer"), "none"
    if not info.get("sass"):
        return None, "as built (the build recorded no arch list)"
    for name in info["sass"]:
        major, minor, specific = _arch(name)
        if (major, minor) == cc if specific else (major == cc[0] and minor <= cc[1]):
            return None, f"{name} kernels"
    if info.get("ptx") and _arch(info["ptx"])[:2] <= cc:
        return None, f"{info['ptx']} PTX, JIT-compiled by the driver on first use (then cached)"
    top = f"{cc[0]}{cc[1]}"
    return NoKernelImage(f"this GPU is {gpu} but the compiled core holds kernels for {built(info)} only; "
                         f"rebuild with JFA_CUDA_ARCHS including {top}"), "none"


def device_reasons(module) -> dict[int, str | None]:
    """device index -> None if the build can run there, else the reason; read once (no context is created)."""
    info = module.build_info() if hasattr(module, "build_info") else {}
    out = {}
    for device in range(module.device_count()):
        cc = module.compute_capability(device) if hasattr(module, "compute_capability") else None
        out[device] = None if cc is None else coverage(cc, info)[0]
    return out
