"""The machine header every measured run carries: GPU, torch, triton, CUDA, FlashAttention-4
(flash-attn-4, where installed), git sha, date.

    python -m bench.machine OUT.json [key=value ...]    # write it (plus extra fields) as JSON
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys

import torch

import bench


def git_sha() -> str:
    """$JFA_GIT_SHA (device machines get the tree without .git), else git's, with -dirty."""
    if os.environ.get("JFA_GIT_SHA"):
        return os.environ["JFA_GIT_SHA"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=bench.ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=bench.ROOT).returncode != 0
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device | None = None) -> dict:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    from bench.flex import flash_version
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda or "none", "fa4": flash_version() or "none", "git_sha": git_sha(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def main(argv: list[str]) -> None:
    if not argv or any("=" not in a for a in argv[1:]):
        raise SystemExit("usage: python -m bench.machine OUT.json [key=value ...]")
    info = environment()
    for item in argv[1:]:
        key, value = item.split("=", 1)
        info[key] = int(value) if value.lstrip("-").isdigit() else value
    with open(argv[0], "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
