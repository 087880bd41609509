"""Installs the Python packages from python/ and, when asked or possible, the compiled core.

JFA_CUDA_BUILD picks: unset or "auto" builds the core when nvcc is found, "1" requires it (an
error without nvcc), "0" skips it (JFA_SKIP_CUDA_BUILD=1 is an older spelling). Without the core
the wheel is pure Python (py3-none-any) and the triton and reference backends serve.
"""
import os
import sys

import setuptools
from setuptools import setup
from setuptools.command.sdist import sdist

# pyproject.toml's license metadata (an SPDX expression) needs setuptools >= 77. pip's isolated
# builds install it ([build-system]); builds without isolation use what is installed: say so plainly.
if tuple(int(x) for x in setuptools.__version__.split(".")[:2] if x.isdigit()) < (77, 0):
    sys.exit(f"jvp-flash-attn: building needs setuptools >= 77, found {setuptools.__version__}: "
             "pip install 'setuptools>=77' (or build with pip's default build isolation)")

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
sys.path.insert(0, CSRC)


def _say(msg):
    print("jvp-flash-attn: " + msg, file=sys.stderr)


def _build_core() -> bool:
    mode = "0" if os.environ.get("JFA_SKIP_CUDA_BUILD") == "1" else os.environ.get("JFA_CUDA_BUILD", "auto")
    if mode not in ("auto", "0", "1"):
        sys.exit(f"jvp-flash-attn: JFA_CUDA_BUILD must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        _say("JFA_CUDA_BUILD=0: not building the compiled core (triton and reference backends only)")
        return False
    if not os.path.exists(os.path.join(CSRC, "build_ext.py")):
        sys.exit("jvp-flash-attn: csrc/build_ext.py is missing, so this source tree cannot build the compiled "
                 "core; build from a git checkout or a complete sdist, or set JFA_CUDA_BUILD=0")
    import build_ext  # csrc/build_ext.py: the extension and its build command

    if build_ext.find_nvcc() is None:
        if mode == "1":
            sys.exit("jvp-flash-attn: JFA_CUDA_BUILD=1 but nvcc was not found (put it on PATH or set CUDA_HOME)")
        _say("nvcc not found: not building the compiled core (triton and reference backends only; "
             "JFA_CUDA_BUILD=1 makes this an error)")
        return False
    return True


class Sdist(sdist):
    """Records the commit in the sdist (csrc/GIT_SHA): it carries no .git, and a build from it
    reports the commit it came from."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        import build_info

        path = os.path.join(base_dir, "csrc", "GIT_SHA")
        if os.path.exists(path):
            os.remove(path)  # may be a hard link to the source tree's file
        with open(path, "w") as f:
            f.write(build_info.git_sha() + "\n")


kwargs = {"cmdclass": {"sdist": Sdist}}
if "sdist" not in sys.argv and _build_core():   # an sdist carries csrc/ either way (MANIFEST.in)
    import build_ext

    extra = build_ext.setup_kwargs()
    kwargs["ext_modules"] = extra["ext_modules"]
    kwargs["cmdclass"].update(extra["cmdclass"])
setup(**kwargs)
