"""Object files of the CUDA sources, cached by a hash of everything that goes into them: the
source, every header under csrc/jfa, nvcc's flags and version. A rebuild that changes none of
them (a Python-only change, api.cpp, the next `pip install -e .`) compiles no kernel.
setuptools' build folder cannot serve: pip's editable installs build in a new temporary folder
each time.

The cache is build/cuda-objects/ in the source tree ($JFA_CUDA_CACHE_DIR overrides); each
(source, flags) pair keeps only its newest object, so it does not grow with edits.
"""
from __future__ import annotations

import glob
import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(os.path.dirname(HERE), "build", "cuda-objects")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


class ObjectCache:
    def __init__(self, flags: list[str], nvcc_version: str, header_dir: str = os.path.join(HERE, "jfa"),
                 directory: str | None = None):
        directory = directory or os.environ.get("JFA_CUDA_CACHE_DIR") or DEFAULT_DIR
        flag_key = _digest(nvcc_version.encode(), "\0".join(flags).encode())
        self.dir = os.path.join(directory, flag_key[:16])
        headers = []
        for path in sorted(glob.glob(os.path.join(header_dir, "**", "*"), recursive=True)):
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    headers += [os.path.relpath(path, header_dir).encode(), f.read()]
        self._base = _digest(flag_key.encode(), *headers)

    def path(self, src: str) -> str:
        """Where the object of ``src`` (as it is now) lives in the cache."""
        with open(src, "rb") as f:
            key = _digest(self._base.encode(), f.read())[:20]
        return os.path.join(self.dir, f"{os.path.basename(src)[:-3]}-{key}.o")

    def has(self, src: str) -> bool:
        return os.path.exists(self.path(src))

    def temp_path(self, src: str) -> str:
        """A private name to compile to; ``store`` then moves it into place, so a build killed
        half-way never leaves a truncated object that looks cached."""
        os.makedirs(self.dir, exist_ok=True)
        return self.path(src) + f".tmp{os.getpid()}"

    def store(self, src: str, tmp: str) -> str:
        final = self.path(src)
        os.replace(tmp, final)
        stem = os.path.basename(src)[:-3]
        for old in glob.glob(os.path.join(self.dir, f"{glob.escape(stem)}-*.o")):
            if old != final:
                os.remove(old)
        return final
