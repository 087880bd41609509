"""Optional dependencies: importing one that is missing names the extra that installs it."""
from __future__ import annotations

import importlib

# module -> (the name pip installs it by, the extra of jvp-flash-attn that brings it)
EXTRAS = {
    "matplotlib": ("matplotlib", "viz"),
    "PIL": ("pillow", "viz"),
    "tqdm": ("tqdm", "trainer"),
    "triton": ("triton", "triton"),
}


def missing_message(module: str, purpose: str, extra: str | None = None) -> str:
    dist, default_extra = EXTRAS.get(module.split(".")[0], (module, None))
    extra = extra or default_extra
    hint = f"pip install 'jvp-flash-attn[{extra}]'" if extra else f"pip install {dist}"
    return f"{purpose} needs {dist}, which is not installed: {hint}"


def require(module: str, purpose: str, extra: str | None = None):
    """``import module``, or ModuleNotFoundError saying what needs it and which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModuleNotFoundError(missing_message(module, purpose, extra), name=module) from e
