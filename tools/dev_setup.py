"""Set-up for `make demo` and `make test`: installs what is missing, then this checkout (editable),
and compiles the CUDA kernels only where they can run.

- Requirements are installed only when absent (torch pinned by --torch).
- With no GPU visible the kernels are not compiled unless JFA_CUDA_BUILD=1: a CPU-only machine
  cannot run them, and a full build takes minutes. One line says so and how to build them anyway.
- The editable install is redone only when what it builds from changes (setup.py, pyproject.toml,
  csrc/, the build's environment): a Python-only change needs none. When it is redone, kernels
  whose inputs did not change come from the object cache (csrc/build_cache.py).
- pip's output goes to build/dev-setup/install.log; the build's own lines (kernels, progress,
  time) are shown as they come, and the log's tail if it fails.

    python tools/dev_setup.py [--extras test,trainer,triton] [--torch torch==2.13.0] [--goal demo]
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata as metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE_DIR = os.path.join(ROOT, "build", "dev-setup")
BUILD_ENV = ("JFA_CUDA_ARCHS", "JFA_CUDA_VARIANTS", "JFA_TILES", "JFA_CUDA_LINEINFO", "CUDA_HOME", "CUDA_PATH")
BUILD_REQUIREMENTS = ("setuptools>=77", "pybind11>=2.12")   # as in pyproject.toml's [build-system]


def say(msg: str) -> None:
    print("jvp-flash-attn: " + msg, flush=True)


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)


def _installed(requirement: str) -> bool:
    try:
        have = metadata.version(_name(requirement))
    except metadata.PackageNotFoundError:
        return False
    floor = re.search(r">=\s*([\d.]+)", requirement)   # the only specifier this project uses
    if floor is None:
        return True
    as_tuple = lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3])
    return as_tuple(have) >= as_tuple(floor.group(1))


def extra_requirements(extras: list[str]) -> list[str]:
    """The requirements of some extras, read from pyproject.toml (a plain table: no toml parser needed)."""
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        table = f.read().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    found = {name: re.findall(r'"([^"]+)"', body) for name, body in re.findall(r"^(\w+)\s*=\s*\[(.*?)\]", table, re.M)}
    unknown = [e for e in extras if e not in found]
    if unknown:
        sys.exit(f"jvp-flash-attn: unknown extras {unknown}; pyproject.toml has {sorted(found)}")
    return [r for e in extras for r in found[e]]


def install_missing(torch_requirement: str, extras: list[str]) -> None:
    if importlib.util.find_spec("torch") is None:
        say(f"installing {torch_requirement}")
        pip(torch_requirement)
    wanted = ["numpy", *BUILD_REQUIREMENTS, *extra_requirements(extras)]
    missing = list(dict.fromkeys(r for r in wanted if not _installed(r)))
    if missing:
        say("installing " + " ".join(missing))
        pip(*missing)


def gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        return r.returncode == 0 and "GPU" in r.stdout
    return bool(glob.glob("/proc/driver/nvidia/gpus/*"))


def cuda_mode(goal: str) -> str:
    """JFA_CUDA_BUILD as given, else 'auto' (build when nvcc is found) with a GPU, '0' without."""
    mode = os.environ.get("JFA_CUDA_BUILD") or ("0" if os.environ.get("JFA_SKIP_CUDA_BUILD") == "1" else "")
    if mode:
        return mode
    if gpu_visible():
        return "auto"
    say(f"no GPU visible, so the CUDA kernels are not compiled (to compile them anyway: "
        f"make {goal} JFA_CUDA_BUILD=1)")
    return "0"


def _inputs_digest(mode: str) -> str:
    """What the editable install builds from: a change here and only here needs a new install."""
    h = hashlib.sha256()
    paths = [os.path.join(ROOT, p) for p in ("setup.py", "pyproject.toml", "MANIFEST.in")]
    paths += sorted(p for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True)
                    if os.path.isfile(p) and "__pycache__" not in p and not p.endswith("GIT_SHA"))
    for p in paths:
        h.update(os.path.relpath(p, ROOT).encode() + b"\0")
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    env = {k: os.environ.get(k, "") for k in BUILD_ENV}
    h.update(json.dumps({"mode": mode, "env": env, "python": sys.executable}, sort_keys=True).encode())
    return h.hexdigest()


def _installed_here() -> bool:
    spec = importlib.util.find_spec("jvp_flash_attn")
    return spec is not None and spec.origin is not None and \
        os.path.dirname(os.path.dirname(spec.origin)) == os.path.join(ROOT, "python")


def install_editable(mode: str) -> None:
    os.makedirs(STATE_DIR, exist_ok=True)
    stamp = os.path.join(STATE_DIR, hashlib.sha256(sys.executable.encode()).hexdigest()[:12] + ".stamp")
    digest = _inputs_digest(mode)
    if _installed_here() and os.path.exists(stamp) and open(stamp).read() == digest:
        say("this checkout is installed and its build inputs are unchanged: nothing to build")
        return
    if mode == "0":   # an earlier build's core would not match these sources: drop it, as the build does
        for old in glob.glob(os.path.join(ROOT, "python", "jvp_flash_attn", "_cuda*.so")):
            os.remove(old)
            say(f"removed the earlier build's compiled core ({os.path.relpath(old, ROOT)})")
    log_path = os.path.join(STATE_DIR, "install.log")
    cmd = [sys.executable, "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps", "-e", ROOT]
    say("installing this checkout (editable)" + (" and its compiled core" if mode != "0" else ""))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, JFA_CUDA_BUILD=mode), cwd=ROOT)
        shown = set()   # pip runs setup.py more than once: each of its lines once
        for line in proc.stdout:
            log.write(line)
            if mode == "0" and "JFA_CUDA_BUILD=0" in line:
                continue    # the skip was announced already
            if line.lstrip().startswith("jvp-flash-attn:") and line.strip() not in shown:
                shown.add(line.strip())
                print(line.strip(), flush=True)
        rc = proc.wait()
    if rc != 0:
        with open(log_path) as f:
            tail = f.readlines()[-40:]
        sys.stdout.write("".join(tail))
        sys.exit(f"jvp-flash-attn: the install failed (exit {rc}); the whole log: {os.path.relpath(log_path)}")
    with open(stamp, "w") as f:
        f.write(digest)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extras", default="", help="comma-separated extras whose requirements to install")
    ap.add_argument("--torch", default="torch", help="the torch requirement, if torch is missing")
    ap.add_argument("--goal", default="demo", help="the make target, for the hint on building the kernels")
    args = ap.parse_args(argv)
    install_missing(args.torch, [e for e in args.extras.split(",") if e])
    install_editable(cuda_mode(args.goal))


if __name__ == "__main__":
    main()
