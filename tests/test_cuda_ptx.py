"""GPUs newer than the build run its PTX, compiled by the driver on first use. That compile is
ptxas, as here: the PTX a default build embeds (compute_90, from the same flags) must assemble for
Blackwell (sm_100, sm_120). Needs nvcc, no GPU; one kernel file, about a minute."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "csrc"))
build_ext = pytest.importorskip("build_ext")


@pytest.mark.slow
@pytest.mark.skipif(build_ext.find_nvcc() is None, reason="needs nvcc")
def test_embedded_ptx_assembles_for_newer_gpus(tmp_path):
    flags = build_ext.nvcc_flags(["80", "90"])
    ptx = [f for f in flags if f.startswith("-gencode") and "code=compute_" in f]
    assert ptx == ["-gencode=arch=compute_90,code=compute_90"]   # what the build embeds for newer GPUs
    jit = [f for f in flags if not f.startswith("-gencode")]
    jit += [f"-gencode=arch=compute_90,code=sm_{a}" for a in (100, 120)]   # what their drivers make of it
    src = os.path.join(ROOT, "csrc", "instantiations", "fwd_bf16_qk128_v128.cu")
    r = subprocess.run([build_ext.find_nvcc(), *jit, "-c", src, "-o", str(tmp_path / "fwd.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
