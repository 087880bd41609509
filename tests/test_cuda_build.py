"""The compiled core without a GPU (CI): it builds, imports, reports its variants and tile
shapes, and a call without a GPU raises a clear error instead of crashing."""
import importlib
import os

import pytest
import torch

from jvp_flash_attn.backends import cuda_backend, cuda_module


def _module_or_skip():
    m = cuda_module.load_module()
    if m is None:
        pytest.skip(cuda_module.module_error())
    return m


def test_unbuilt_extension_is_reported_by_availability():
    if cuda_module.load_module() is not None:
        pytest.skip("the extension is built here")
    assert cuda_backend.CudaBackend().availability().startswith("compiled extension not built")


def test_module_lists_its_variants_and_tile_shapes():
    m = _module_or_skip()
    variants = {tuple(v) for v in m.variants()}
    assert ("fwd", "bf16", 128, 128) in variants  # every build profile, the CI one too
    assert ("jvp", "bf16", 128, 128) in variants
    assert ("bwd", "bf16", 128, 128) in variants
    portable = m.tile_shapes()            # no device: the mma.sync path's shapes
    assert portable["path"] == "mma.sync"
    for device in [-1] + list(range(m.device_count())):
        shapes = m.tile_shapes(device)
        assert set(shapes) == {"fwd", "jvp", "bwd_q", "bwd_kv", "path", "bwd_fused"}
        assert shapes["path"] in ("mma.sync", "sm90a wgmma")
        # the fused backward is sm_90a only: 64 query rows, whole warpgroups of keys
        assert (shapes["bwd_fused"] is not None) == (shapes["path"] == "sm90a wgmma")
        if shapes["bwd_fused"] is not None:
            assert shapes["bwd_fused"][0] == 64 and shapes["bwd_fused"][1] % 64 == 0
        for key in ("fwd", "jvp", "bwd_q", "bwd_kv"):
            bm, bn = shapes[key]
            assert bm % 16 == 0 and bn % 16 == 0
        if shapes["path"] == "sm90a wgmma":
            # whole warpgroups: of query rows (fwd, jvp, dQ), of keys (dK/dV)
            assert all(shapes[key][0] % 64 == 0 for key in ("fwd", "jvp", "bwd_q")) and shapes["bwd_kv"][1] % 64 == 0


def test_sm90_path_follows_the_environment_switch():
    """JFA_CUDA_SM90=0 forces the portable kernels (read at each call), so one process can time both."""
    m = _module_or_skip()
    if m.device_count() == 0:
        pytest.skip("needs a GPU")
    import subprocess
    import sys
    code = "import jvp_flash_attn._cuda as m; print(m.tile_shapes(0)['path'])"
    off = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, JFA_CUDA_SM90="0"),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert off == "mma.sync"


def test_module_needs_no_torch():
    """The core is bound with pybind11 alone: importing it must not pull torch's C++ library."""
    m = _module_or_skip()
    with open(m.__file__, "rb") as f:
        blob = f.read()
    assert b"libtorch" not in blob and b"libc10" not in blob


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_call_without_gpu_raises_clear_error():
    m = _module_or_skip()
    assert cuda_backend.CudaBackend().availability() == "no CUDA GPU"
    tiles = dict(full_ptr=0, full_idx=0, part_ptr=0, part_idx=0, num_tiles=1, block_m=128, block_n=64)
    maps = dict(q_seg=0, q_pos=0, k_seg=0, k_pos=0, rule=0, num_k_segments=1)
    args = dict(batch=1, seqlen_q=128, seqlen_k=128, heads_q=1, heads_k=1, head_dim_qk=128, head_dim_v=128,
                scale=0.1, dtype="bf16", q=0, k=0, v=0, o=0, lse=0, q_stride=(0, 0, 0), k_stride=(0, 0, 0),
                v_stride=(0, 0, 0), o_stride=(0, 0, 0), q_tiles=tiles, maps=maps, stream=0, device=0)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        m.forward(args)


def test_registry_lists_cuda_first():
    backends = importlib.import_module("jvp_flash_attn.backends")
    assert backends.NAMES[0] == "cuda"
