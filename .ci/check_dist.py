"""Checks what the packaging steps of .ci/package produced.

    python .ci/check_dist.py sdist DIST.tar.gz            # carries every file the build reads
    python .ci/check_dist.py wheel DIST.whl --core        # metadata, tag, the compiled core and its links
    python .ci/check_dist.py wheel DIST.whl --no-core     # a pure-Python wheel
    python .ci/check_dist.py installed DIR --core         # an install (pip --target) imports from DIR
    python .ci/check_dist.py editable --core              # this checkout is what the interpreter imports
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
from jvp_flash_attn._version import __version__  # noqa: E402

SYSTEM_LIBS = re.compile(r"^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[-\w]*)\.so(\.\d+)*$")


def fail(msg: str) -> None:
    sys.exit(f"check_dist: {msg}")


def git_files(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def build_info():
    sys.path.insert(0, os.path.join(ROOT, "csrc"))
    import build_info
    return build_info


def expected_core() -> dict:
    """What the core built here reports: the archs and variants asked for, this checkout's commit."""
    bi = build_info()
    archs = [a for a in os.environ.get("JFA_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a]
    return {"sass": [bi.sass_name(a) for a in archs], "ptx": bi.ptx_arch(archs),
            "variants": os.environ.get("JFA_CUDA_VARIANTS", "full"), "git": bi.git_sha()}


def check_sdist(path: str) -> None:
    with tarfile.open(path) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = set(git_files("csrc", "python", "tests")) | {"setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE",
                                                           "README.md", "CMakeLists.txt", "csrc/GIT_SHA"}
    missing = sorted(wanted - names)
    if missing:
        fail(f"{os.path.basename(path)} lacks {missing}")
    print(f"check_dist: {os.path.basename(path)} carries all {len(wanted)} files the build and tests read")


def check_so(so: str) -> None:
    dynamic = subprocess.run(["readelf", "-d", so], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    extra = [lib for lib in needed if not SYSTEM_LIBS.match(lib)]
    if not needed or extra:
        fail(f"{os.path.basename(so)} links {extra or 'nothing?'}; only the C/C++ runtimes are allowed")
    print(f"check_dist: the compiled core links only {', '.join(needed)}")


def check_import(directory: str, core: bool, on_path: bool = True) -> None:
    """Import the package from ``directory`` and read its build report; ``on_path=False``: as
    installed (no PYTHONPATH), which must find it in ``directory`` all the same."""
    env = dict(os.environ, PYTHONPATH=directory) if on_path else {k: v for k, v in os.environ.items()
                                                                   if k != "PYTHONPATH"}
    code = ("import json, jvp_flash_attn as j, jvp_flash_attn.__main__ as m; "
            "print(json.dumps(dict(file=j.__file__, **m.info()), default=str))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tempfile.gettempdir(), capture_output=True,
                         text=True, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    if not data["file"].startswith(os.path.realpath(directory)) and not data["file"].startswith(directory):
        fail(f"imported {data['file']}, not the copy in {directory}")
    built = data["compiled_core"]["built"]
    if built != core:
        fail(f"compiled core {'missing' if core else 'present'}: {data['compiled_core']}")
    if core:
        expect = expected_core()
        got = {k: data["compiled_core"].get(k) for k in expect}
        if got != expect:
            fail(f"the core reports {got}, expected {expect}")
    print(f"check_dist: imports from {directory}: version {data['version']}, compiled core "
          + (f"{data['compiled_core']['sass']} {data['compiled_core']['variants']} at {data['compiled_core']['git']}"
             if core else "not built (as expected)"))


def check_wheel(path: str, core: bool) -> None:
    name = os.path.basename(path)
    tag = name[:-4].split("-")[-3:]
    if core and not (tag[0].startswith("cp3") and tag[2].startswith("linux_")):
        fail(f"{name}: a wheel with the compiled core must be tagged cpXY-cpXY-linux_*, got {tag}")
    if not core and tag != ["py3", "none", "any"]:
        fail(f"{name}: a wheel without the compiled core must be py3-none-any, got {tag}")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        dist_info = f"jvp_flash_attn-{__version__}.dist-info"
        meta = z.read(f"{dist_info}/METADATA").decode()
        for needed in (f"Version: {__version__}", "License-Expression: BSD-3-Clause", "License-File: LICENSE",
                       "Provides-Extra: trainer", "Classifier: Environment :: GPU :: NVIDIA CUDA"):
            if needed not in meta:
                fail(f"{name}: METADATA lacks {needed!r}")
        for needed in (f"{dist_info}/licenses/LICENSE", "jvp_flash_attn/__init__.py", "causal_rcm_min/__init__.py"):
            if needed not in names:
                fail(f"{name} lacks {needed}")
        cores = [n for n in names if re.fullmatch(r"jvp_flash_attn/_cuda\..*\.so", n)]
        if bool(cores) != core:
            fail(f"{name}: compiled core {'missing' if core else 'present: ' + str(cores)}")
        with tempfile.TemporaryDirectory() as tmp:
            z.extractall(tmp)
            if core:
                check_so(os.path.join(tmp, cores[0]))
            check_import(tmp, core)
    print(f"check_dist: {name} is complete")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["sdist", "wheel", "installed", "editable"])
    ap.add_argument("path", nargs="?")
    ap.add_argument("--core", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    if args.kind == "sdist":
        check_sdist(args.path)
    elif args.kind == "wheel":
        check_wheel(args.path, args.core)
    else:
        where = os.path.join(ROOT, "python") if args.kind == "editable" else args.path
        cores = [f for f in os.listdir(os.path.join(where, "jvp_flash_attn")) if f.startswith("_cuda")]
        if args.core and cores:
            check_so(os.path.join(where, "jvp_flash_attn", cores[0]))
        check_import(where, args.core, on_path=args.kind != "editable")


if __name__ == "__main__":
    main()
