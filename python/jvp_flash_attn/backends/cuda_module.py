"""Loading the compiled core (module ``jvp_flash_attn._cuda``) and what a build holds: its kernel
variants and the devices it has kernels for. Each is read once per process, so no later call
(nor a torch.compile trace) asks the module again."""
from __future__ import annotations

import importlib

from . import cuda_arch

_module = None
_module_error = None
_built_variants = None
_device_reasons = None


def load_module():
    """The compiled module, or None (the reason is in ``module_error()``)."""
    global _module, _module_error
    if _module is None and _module_error is None:
        try:
            _module = importlib.import_module("jvp_flash_attn._cuda")
        except ImportError as e:
            _module_error = f"compiled extension not built ({e})"
    return _module


def module_error() -> str | None:
    load_module()
    return _module_error


def built_variants() -> frozenset:
    """The (direction, dtype, dqk, dv) kernels this build holds."""
    global _built_variants
    if _built_variants is None:
        m = load_module()
        _built_variants = frozenset() if m is None else frozenset(tuple(v) for v in m.variants())
    return _built_variants


def device_reasons() -> dict:
    """device index -> None if this build has kernels for it, else why not."""
    global _device_reasons
    if _device_reasons is None:
        m = load_module()
        _device_reasons = {} if m is None else cuda_arch.device_reasons(m)
    return _device_reasons
