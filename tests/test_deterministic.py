"""jfa.attention(..., deterministic=): None follows torch's switch, True/False decide; the choice
reaches the backend's backward, and deterministic gradients are bitwise repeatable on every
backend that runs here (the cuda backend's own forms: test_cuda_kernels)."""
import pytest
import torch

import jvp_flash_attn as jfa
from jvp_flash_attn import masks
from jvp_flash_attn.backends import get
from jvp_flash_attn.masks import FramePattern

MASK = masks.block_causal(FramePattern(5, 4, 2), window=2, sink=1)
BACKENDS = [b for b, why in jfa.backends().items() if why is None]


def _inputs(backend, seed=0):
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float32 if backend == "reference" else torch.bfloat16
    device = "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"
    return [torch.randn(1, MASK.sq, 2, 16, generator=g).to(device, dtype).requires_grad_() for _ in range(3)]


@pytest.fixture
def seen(monkeypatch):
    """The ``deterministic`` each reference backward was called with."""
    cls = type(get("reference"))
    calls = []
    original = cls.backward

    def spy(self, *a, deterministic=False):
        calls.append(deterministic)
        return original(self, *a, deterministic=deterministic)
    monkeypatch.setattr(cls, "backward", spy)
    return calls


@pytest.mark.parametrize("torch_switch", [False, True])
def test_deterministic_reaches_the_backend(seen, torch_switch):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(torch_switch, warn_only=True)
    try:
        for deterministic in (None, True, False):
            q, k, v = _inputs("reference")
            jfa.attention(q, k, v, mask=MASK, backend="reference", deterministic=deterministic).sum().backward()
    finally:
        torch.use_deterministic_algorithms(prev)
    assert seen == [torch_switch, True, False]


def test_deterministic_must_be_a_bool_or_none():
    q, k, v = _inputs("reference")
    with pytest.raises(TypeError, match="deterministic"):
        jfa.attention(q, k, v, mask=MASK, backend="reference", deterministic=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_gradients_are_bitwise_repeatable(backend):
    x = _inputs(backend)
    if get(backend).unsupported(*x):
        pytest.skip(get(backend).unsupported(*x))
    do = torch.randn_like(x[0])
    runs = [torch.autograd.grad(jfa.attention(*x, mask=MASK, backend=backend, deterministic=True), x, do)
            for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
