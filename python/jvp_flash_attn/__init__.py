"""jvp-flash-attn: masked attention with backward and fused forward+JVP for video distillation."""
from ._version import __version__
from . import backends as _backends_module
from . import masks, reference
from .api import attention, attention_jvp
from .backends import BackendUnavailableError


def backends() -> dict:
    """Each backend's availability: name -> None when it can run here, else the reason."""
    return _backends_module.status()


__all__ = ["attention", "attention_jvp", "masks", "reference", "backends",
           "BackendUnavailableError", "__version__"]
