"""python -m jvp_flash_attn: versions, GPU, and which backends can run here (and why not)."""
import platform

import torch

import jvp_flash_attn as jfa


def report() -> str:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    lines = [f"jvp_flash_attn {jfa.__version__}",
             f"python {platform.python_version()}, torch {torch.__version__}, triton {triton_version}, "
             f"CUDA {torch.version.cuda or 'none'}",
             f"GPU: {gpu}",
             "backends (automatic order):"]
    for name, reason in jfa.backends().items():
        lines.append(f"  {name:10s} {'available' if reason is None else 'unavailable: ' + reason}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
