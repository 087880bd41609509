"""Backend registry and selection.

Backends are imported lazily by name; a backend whose module is missing or fails to
import is reported unavailable with the reason, never silently skipped.
"""
from __future__ import annotations

import importlib
import os
import warnings

from .base import Backend, BackendUnavailableError
from .cuda_arch import NoKernelImage

# name -> (module, class); the order is the automatic preference.
_SOURCES = {
    "cuda": (".cuda_backend", "CudaBackend"),
    "triton": (".triton_backend", "TritonBackend"),
    "reference": (".reference_backend", "ReferenceBackend"),
}
NAMES = tuple(_SOURCES)
_instances: dict[str, Backend | str] = {}


_reasons: dict[str, str | None] = {}


def _load(name: str) -> Backend | str:
    """The backend instance, or a string saying why it could not be loaded."""
    if name not in _instances:
        module, cls = _SOURCES[name]
        try:
            _instances[name] = getattr(importlib.import_module(module, __name__), cls)()
        except ImportError as e:
            _instances[name] = f"not installed ({e})"
    return _instances[name]


def _reason(name: str) -> str | None:
    """Why the backend cannot run here (None if it can). Asked once per process: GPUs and
    builds do not come and go, and a traced region (torch.compile) must not query drivers."""
    if name not in _reasons:
        b = _load(name)
        _reasons[name] = b if isinstance(b, str) else b.availability()
    return _reasons[name]


def status() -> dict[str, str | None]:
    """name -> None if the backend can run here, else the reason it cannot."""
    return {name: _reason(name) for name in NAMES}


def get(name: str) -> Backend:
    """The named backend, or BackendUnavailableError saying why it cannot run."""
    if name not in _SOURCES:
        raise ValueError(f"backend must be one of {NAMES} or None, got {name!r}")
    b = _load(name)
    reason = _reason(name)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run: {reason}")
    return b


def select(name: str | None, q, k, v) -> Backend:
    """Resolve ``backend=`` (or $JFA_BACKEND) for these inputs.

    An explicit name must run and support the inputs (ValueError otherwise); None picks
    the first backend in NAMES that is available and supports them: cuda, then triton, for
    CUDA tensors; the reference otherwise.
    """
    name = name if name is not None else (os.environ.get("JFA_BACKEND") or None)
    if name is not None:
        b = get(name)
        reason = b.unsupported(q, k, v)
        if reason is not None:
            raise ValueError(f"backend {name!r} does not support these inputs: {reason}")
        return b
    reasons = []
    for n in NAMES:
        b = _load(n)
        if n != "reference" and q.device.type != "cuda":
            # on a CPU the compiled and Triton kernels can only be emulated (Triton's
            # interpreter): slow, so they run only when asked for by name
            why = "picked automatically only for CUDA tensors"
        else:
            why = _reason(n) or b.unsupported(q, k, v)
        if why is None:
            for passed_over in reasons:
                if isinstance(passed_over[1], NoKernelImage):
                    _say_once(f"jvp_flash_attn: backend {passed_over[0]!r} has no kernel for this GPU "
                              f"({passed_over[1]}); using {n!r}")
            return b
        reasons.append((n, why))
    raise ValueError("no backend supports these inputs: " + "; ".join(f"{n}: {why}" for n, why in reasons))


_said: set[str] = set()


def _say_once(message: str) -> None:
    """A one-line warning, once per process: an automatic choice passed over a built backend."""
    if message not in _said:
        _said.add(message)
        warnings.warn(message, stacklevel=3)


# Load every backend once at import: selection then never imports inside a traced region
# (torch.compile cannot trace importlib).
for _name in NAMES:
    _reason(_name)

__all__ = ["Backend", "BackendUnavailableError", "NAMES", "get", "select", "status"]
