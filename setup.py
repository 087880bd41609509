"""Installs the Python packages from python/ and, when possible, the compiled core.

The compiled extension is built only when csrc/ holds sources, nvcc is found and
JFA_SKIP_CUDA_BUILD is not set; otherwise the install says so in one line and goes on.
"""
import os
import shutil
import sys

from setuptools import setup


def _cuda_extension():
    """The list of extensions to build (empty when the compiled core is not built)."""
    if os.environ.get("JFA_SKIP_CUDA_BUILD") == "1":
        print("jvp-flash-attn: JFA_SKIP_CUDA_BUILD=1, skipping the CUDA extension", file=sys.stderr)
        return {}
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        print("jvp-flash-attn: nvcc not found, skipping the CUDA extension (triton/reference backends only)",
              file=sys.stderr)
        return {}
    build_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "build_ext.py")
    if not os.path.exists(build_file):
        print("jvp-flash-attn: csrc/ has no compiled core yet, skipping the CUDA extension", file=sys.stderr)
        return {}
    sys.path.insert(0, os.path.dirname(build_file))
    import build_ext  # csrc/build_ext.py: the extension and its build command

    return build_ext.setup_kwargs()


setup(**_cuda_extension())
