"""GPUs the build does not cover, simulated: the compute capability and the build's arch list
are monkeypatched, so this runs without a GPU. Covered GPUs run SASS or JIT-compile the PTX;
uncovered ones make backend=None fall back with one line and backend="cuda" name the built archs."""
import importlib
import types
import warnings

import pytest
import torch

from jvp_flash_attn.backends import cuda_arch, cuda_backend, cuda_module

backends = importlib.import_module("jvp_flash_attn.backends")   # (jvp_flash_attn.backends is also a function)

DEFAULT_BUILD = {"sass": ["sm_80", "sm_90a"], "ptx": "compute_90"}   # JFA_CUDA_ARCHS="80;90"


@pytest.mark.parametrize("cc, how", [
    ((8, 0), "sm_80 kernels"),
    ((8, 6), "sm_80 kernels"),            # same major, newer minor: the sm_80 SASS runs
    ((8, 9), "sm_80 kernels"),
    ((9, 0), "sm_90a kernels"),
    ((10, 0), "compute_90 PTX"),          # Blackwell: the portable kernels, JIT-compiled
    ((12, 0), "compute_90 PTX"),
])
def test_default_build_covers(cc, how):
    reason, served = cuda_arch.coverage(cc, DEFAULT_BUILD)
    assert reason is None and served.startswith(how)


def test_sm90a_sass_runs_on_9_0_only_and_ptx_never_runs_backwards():
    hopper_only = {"sass": ["sm_90a"], "ptx": "compute_90"}
    reason, _ = cuda_arch.coverage((8, 6), hopper_only)
    assert isinstance(reason, cuda_arch.NoKernelImage)
    assert "sm_86" in reason and "sm_90a + PTX compute_90" in reason and "JFA_CUDA_ARCHS" in reason
    assert cuda_arch.coverage((12, 0), hopper_only)[0] is None


def test_gpus_older_than_sm80_have_no_kernel():
    reason, _ = cuda_arch.coverage((7, 5), DEFAULT_BUILD)
    assert isinstance(reason, cuda_arch.NoKernelImage) and "sm_75" in reason and "sm_80 or newer" in reason


def test_a_build_without_an_arch_list_is_trusted():
    assert cuda_arch.coverage((12, 0), {})[0] is None


class FakeCore:
    """The compiled module as seen on a machine with one GPU of a given capability."""

    def __init__(self, cc, info):
        self.cc, self.info = cc, info

    def device_count(self):
        return 1

    def compute_capability(self, device):
        return self.cc

    def build_info(self):
        return dict(self.info, variants="ci", git="abc", nvcc="13.0.88", tiles="")

    def variants(self):
        return [(op, "bf16", 128, 128) for op in ("fwd", "jvp", "bwd")]


@pytest.fixture
def uncovered_gpu(monkeypatch):
    """An sm_80 GPU in front of a Hopper-only build (JFA_CUDA_ARCHS=90)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda_module, "_module", FakeCore((8, 0), {"sass": ["sm_90a"], "ptx": "compute_90"}))
    monkeypatch.setattr(cuda_module, "_module_error", None)
    monkeypatch.setattr(cuda_module, "_built_variants", None)
    monkeypatch.setattr(cuda_module, "_device_reasons", None)
    reason = cuda_backend.CudaBackend().availability()
    monkeypatch.setitem(backends._reasons, "cuda", reason)
    monkeypatch.setattr(backends, "_said", set())
    return reason


def test_uncovered_gpu_makes_the_cuda_backend_unavailable_naming_the_built_archs(uncovered_gpu):
    assert isinstance(uncovered_gpu, cuda_arch.NoKernelImage)
    assert "sm_80" in uncovered_gpu and "sm_90a" in uncovered_gpu
    with pytest.raises(backends.BackendUnavailableError, match=r"cuda.*sm_80.*sm_90a \+ PTX compute_90"):
        backends.get("cuda")


def test_uncovered_gpu_falls_back_with_one_line(uncovered_gpu, monkeypatch):
    class Stub:
        name = "triton"

        def unsupported(self, q, k, v):
            return None

    stub = Stub()
    monkeypatch.setitem(backends._instances, "triton", stub)
    monkeypatch.setitem(backends._reasons, "triton", None)
    q = types.SimpleNamespace(device=torch.device("cuda", 0))   # all selection looks at
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backends.select(None, q, q, q) is stub
        assert backends.select(None, q, q, q) is stub   # said once
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "'cuda'" in messages[0] and "sm_90a" in messages[0] and "using 'triton'" in messages[0]


def test_covered_gpu_keeps_the_cuda_backend(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda_module, "_module", FakeCore((12, 0), DEFAULT_BUILD))
    monkeypatch.setattr(cuda_module, "_module_error", None)
    monkeypatch.setattr(cuda_module, "_built_variants", None)
    monkeypatch.setattr(cuda_module, "_device_reasons", None)
    assert cuda_backend.CudaBackend().availability() is None
