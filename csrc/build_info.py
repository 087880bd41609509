"""What a build of the compiled core records about itself: the GPU code it holds (SASS per
arch, and the PTX newer GPUs JIT-compile), the kernel variants, the commit and nvcc's version.
They reach api.cpp as macros and come back from ``jvp_flash_attn._cuda.build_info()``."""
from __future__ import annotations

import json
import os
import re
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHA_FILE = os.path.join(HERE, "GIT_SHA")   # written into sdists, which carry no .git


def sass_name(arch: str) -> str:
    """sm_90 is built as sm_90a (the Hopper wgmma path, jfa/arch.h); other archs as themselves."""
    return f"sm_{arch}a" if arch == "90" else f"sm_{arch}"


def ptx_arch(arch_list: list[str]) -> str:
    """The PTX embedded for GPUs newer than every built arch: the top arch's (not its 'a' form,
    which would run on that arch alone)."""
    return "compute_" + max(arch_list, key=int)


def git_sha(root: str = ROOT) -> str:
    """$JFA_GIT_SHA, else git's short sha (with -dirty), else the sha an sdist recorded, else 'unknown'."""
    if os.environ.get("JFA_GIT_SHA"):
        return os.environ["JFA_GIT_SHA"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, capture_output=True).returncode != 0
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    if os.path.exists(SHA_FILE):
        with open(SHA_FILE) as f:
            return f.read().strip() or "unknown"
    return "unknown"


def nvcc_version(nvcc: str) -> str:
    """'13.0.88' from `nvcc --version` (the whole last line if its format changes)."""
    out = subprocess.run([nvcc, "--version"], text=True, capture_output=True, check=True).stdout
    m = re.search(r"V(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else out.strip().splitlines()[-1]


def macros(arch_list: list[str], profile: str, nvcc: str, tiles: str) -> list[tuple[str, str]]:
    """-D macros for api.cpp (string literals; json quoting is valid C++ for these values)."""
    values = {
        "JFA_BUILD_SASS": ";".join(sass_name(a) for a in arch_list),
        "JFA_BUILD_PTX": ptx_arch(arch_list),
        "JFA_BUILD_VARIANTS": profile,
        "JFA_BUILD_GIT": git_sha(),
        "JFA_BUILD_NVCC": nvcc,
        "JFA_BUILD_TILES": tiles,
    }
    return [(k, json.dumps(v)) for k, v in values.items()]
