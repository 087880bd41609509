"""jvp-flash-attn: masked attention with backward and fused forward+JVP for video distillation."""
from . import backends as _backends_module
from . import masks, reference
from .api import attention, attention_jvp
from .backends import BackendUnavailableError

__version__ = "0.1.0"


def backends() -> dict:
    """Each backend's availability: name -> None when it can run here, else the reason."""
    return _backends_module.status()


__all__ = ["attention", "attention_jvp", "masks", "reference", "backends",
           "BackendUnavailableError", "__version__"]
