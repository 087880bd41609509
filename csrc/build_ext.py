"""The compiled core's build for setup.py: nvcc compiles the generated instantiation files
(in parallel, jobs bounded by cores and memory, objects cached by content: build_cache.py), the
host compiler builds the pybind11 module, and the two link against the static CUDA runtime, so
the module needs no torch and no CUDA libraries at run time beyond the driver. The build prints
how many files it compiles, each as it finishes, and the time taken (`pip install -v` shows it).

Environment:
  JFA_CUDA_ARCHS     ';'-separated SM targets, default "80;90" (e.g. "90" for a quick build); the
                     top one's PTX is embedded too, so newer GPUs JIT-compile the portable kernels
  JFA_CUDA_VARIANTS  'full' (default) or 'ci' (bf16, head dim 128 only), see generate_kernels.py
  JFA_CUDA_JOBS      parallel nvcc jobs (default: min(cores, available memory / 3 GiB))
  JFA_CUDA_CACHE_DIR where compiled objects are kept (default build/cuda-objects in the source tree)
  JFA_CUDA_LINEINFO  1 adds -lineinfo (for compute-sanitizer and profilers)
  JFA_TILES          tile-shape overrides for experiments, e.g. "fwd=128,128,8;bwd_kv=32,128,8;jvp90@64=128,128"
                     (keys fwd, jvp, bwd_q, bwd_kv: block_m,block_n,warps; fwd90, jvp90, bwdf90 (the
                     sm_90a family): block_m,block_n; a key@64 or key@128 applies to that head dim
                     only (the larger of q/k's and v's), a bare key to every one; see jfa/tile_shapes.h)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from setuptools import Extension
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import build_cache  # noqa: E402
import build_info  # noqa: E402
import generate_kernels  # noqa: E402

GIB = 1 << 30
JOB_MEMORY = 3 * GIB  # peak memory of one nvcc job on these kernels, with margin


def cuda_home() -> str:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(guess, "include", "cuda_runtime.h")):
            return guess
    return "/usr/local/cuda"


def nvcc_path(home: str) -> str:
    path = os.path.join(home, "bin", "nvcc")
    return path if os.path.exists(path) else (shutil.which("nvcc") or path)


def find_nvcc() -> str | None:
    """nvcc's path, or None when there is none to build with."""
    path = nvcc_path(cuda_home())
    return path if os.path.exists(path) else None


def cuda_lib_dir(home: str) -> str:
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"), os.path.join("targets", "sbsa-linux", "lib")):
        if os.path.exists(os.path.join(home, sub, "libcudart_static.a")):
            return os.path.join(home, sub)
    return os.path.join(home, "lib64")


def archs() -> list[str]:
    raw = os.environ.get("JFA_CUDA_ARCHS", "80;90")
    out = [a.strip() for a in raw.replace(",", ";").split(";") if a.strip()]
    for a in out:
        if not a.isdigit():
            raise ValueError(f"JFA_CUDA_ARCHS entries must be SM numbers like 80 or 90, got {a!r}")
    return out


def gencode_flags(arch_list: list[str]) -> list[str]:
    # sm_90 is built as sm_90a: the Hopper-only wgmma path needs it (the -gencode spelling, which
    # nvcc 13.0 accepts where the -arch=sm_90a shorthand also runs a plain sm_90 pass).
    flags = [f"-gencode=arch=compute_{a}a,code=sm_{a}a" if a == "90" else f"-gencode=arch=compute_{a},code=sm_{a}"
             for a in arch_list]
    top = max(arch_list, key=int)
    flags.append(f"-gencode=arch=compute_{top},code=compute_{top}")  # PTX for newer GPUs
    return flags


def arch_defines(arch_list: list[str]) -> list[str]:
    """-DJFA_SM90A tells host and device code that the build holds the sm_90a kernels (jfa/arch.h)."""
    return ["-DJFA_SM90A=1"] if "90" in arch_list else []


def default_jobs() -> int:
    cores = os.cpu_count() or 1
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    by_mem = max(1, avail // JOB_MEMORY) if avail else cores
    return max(1, min(cores, by_mem))


# JFA_TILES key -> (walk, kernel family, the tile side whose rows the sm_90a warpgroups split) in
# jfa/tile_shapes.h; the portable keys take block_m,block_n,warps, the sm90a ones block_m,block_n.
TILE_KEYS = {
    "fwd": ("kFwd", "kPortable", None), "jvp": ("kJvp", "kPortable", None),
    "bwd_q": ("kBwdQ", "kPortable", None), "bwd_kv": ("kBwdKV", "kPortable", None),
    "fwd90": ("kFwd", "kSm90", 0), "jvp90": ("kJvp", "kSm90", 0), "bwdf90": ("kBwdFused", "kSm90", 1),
}


def tile_defines(for_nvcc: bool = False) -> list[str]:
    """JFA_TILES as one -DJFA_TILE_OVERRIDES flag (none by default: the shapes of jfa/tile_shapes.h).
    nvcc reads commas in -D as separators between macros, so for nvcc they are escaped."""
    entries = []
    for item in filter(None, (x.strip() for x in os.environ.get("JFA_TILES", "").split(";"))):
        target, _, value = item.partition("=")
        key, at, head_dim = target.partition("@")
        nums = [n.strip() for n in value.split(",")]
        want = 2 if key.endswith("90") else 3
        if (key not in TILE_KEYS or len(nums) != want or not all(n.isdigit() for n in nums)
                or (at and head_dim not in ("64", "128"))):
            raise ValueError(f"JFA_TILES entries look like fwd=128,64,8, fwd90=128,128 or fwd90@64=128,224 "
                             f"(keys {sorted(TILE_KEYS)}, head dims 64 and 128), got {item!r}")
        walk, family, warpgroup_side = TILE_KEYS[key]
        m, n = int(nums[0]), int(nums[1])
        warps = int(nums[2]) if warpgroup_side is None else (m, n)[warpgroup_side] // 16
        entries.append(f"{{jfa::Walk::{walk},jfa::KernelFamily::{family},{int(head_dim or 0)},{{{m},{n},{warps}}}}},")
    if not entries:
        return []
    value = "".join(entries)
    return ["-DJFA_TILE_OVERRIDES=" + (value.replace(",", "\\,") if for_nvcc else value)]


def say(msg: str) -> None:
    print("jvp-flash-attn: " + msg, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """One line per compiled file: how far along, its time, the elapsed time and an estimate of the rest."""

    def __init__(self, total: int, jobs: int):
        self.total, self.jobs, self.done, self.start = total, jobs, 0, time.monotonic()

    def finished(self, name: str, seconds: float) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done)
        rest = f", about {_clock(left)} left" if self.done < self.total else ""
        say(f"[{self.done:>{len(str(self.total))}}/{self.total}] {name} {_clock(seconds)} "
            f"(elapsed {_clock(elapsed)}{rest})")

    def summary(self) -> str:
        return _clock(time.monotonic() - self.start)


def nvcc_flags(arch_list: list[str]) -> list[str]:
    flags = ["-std=c++17", "-O3", "--use_fast_math", "-Xcompiler", "-fPIC", "-I", HERE]
    flags += gencode_flags(arch_list) + tile_defines(for_nvcc=True) + arch_defines(arch_list)
    return flags + (["-lineinfo"] if os.environ.get("JFA_CUDA_LINEINFO") == "1" else [])


def compile_all(nvcc: str, flags: list[str], sources: list[str], cache: build_cache.ObjectCache,
                jobs: int, force: bool = False, what: str = "") -> list[str]:
    """The objects of ``sources``: from the cache, or compiled by nvcc (``jobs`` at a time) with a
    line per finished file. ``what`` says what they are for the first line."""
    todo = sources if force else [s for s in sources if not cache.has(s)]
    jobs = max(1, min(jobs, len(todo) or 1))
    say(f"CUDA kernels{what}: {len(sources)} files, {len(sources) - len(todo)} cached, {len(todo)} to compile"
        + (f" with {jobs} nvcc jobs" if todo else ""))
    if todo:
        say("nvcc " + " ".join(flags) + " -c <file>.cu")
        progress = Progress(len(todo), jobs)

        def compile_one(src):
            t0 = time.monotonic()
            tmp = cache.temp_path(src)
            try:
                subprocess.run([nvcc, *flags, "-c", src, "-o", tmp], check=True)
                cache.store(src, tmp)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return src, time.monotonic() - t0

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for fut in as_completed([pool.submit(compile_one, s) for s in todo]):
                src, seconds = fut.result()
                progress.finished(os.path.basename(src), seconds)
        say(f"compiled {len(todo)} CUDA files in {progress.summary()}")
    return [cache.path(s) for s in sources]


class NvccBuildExt(build_ext):
    """Compiles the CUDA sources with nvcc (or takes them from the object cache), then builds
    and links the module as usual."""

    def build_extension(self, ext):
        home = cuda_home()
        nvcc = nvcc_path(home)
        profile = os.environ.get("JFA_CUDA_VARIANTS", "full")
        sources = generate_kernels.sources(profile)
        arch_list = archs()
        defines = tile_defines() + arch_defines(arch_list)
        flags = nvcc_flags(arch_list)
        version = build_info.nvcc_version(nvcc)
        code = ", ".join(build_info.sass_name(a) for a in arch_list) + f" + PTX {build_info.ptx_arch(arch_list)}"
        objects = compile_all(nvcc, flags, sources, build_cache.ObjectCache(flags, version),
                              int(os.environ.get("JFA_CUDA_JOBS", default_jobs())), bool(self.force),
                              f" ({profile} variants for {code}, nvcc {version})")
        ext.extra_objects = list(ext.extra_objects or []) + objects
        ext.include_dirs = list(ext.include_dirs or []) + [os.path.join(home, "include")]
        ext.extra_compile_args = list(ext.extra_compile_args or []) + defines
        ext.define_macros = list(ext.define_macros or []) + build_info.macros(
            arch_list, profile, version, os.environ.get("JFA_TILES", ""))
        ext.library_dirs = list(ext.library_dirs or []) + [cuda_lib_dir(home)]
        # setuptools decides whether to relink from the C++ sources alone; the CUDA objects
        # (another profile, other tile shapes) change without them, so always relink.
        user_force, self.force = self.force, True
        try:
            super().build_extension(ext)
        finally:
            self.force = user_force


def extension() -> Extension:
    import pybind11

    return Extension(
        "jvp_flash_attn._cuda",
        sources=[os.path.relpath(os.path.join(HERE, "api.cpp"), ROOT)],
        include_dirs=[pybind11.get_include(), HERE],
        libraries=["cudart_static", "rt", "pthread", "dl"],
        extra_compile_args=["-std=c++17", "-O2"],
        language="c++",
    )


def setup_kwargs() -> dict:
    return {"ext_modules": [extension()], "cmdclass": {"build_ext": NvccBuildExt}}
