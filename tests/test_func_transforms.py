"""torch.func.grad and torch.func.vjp over jfa.attention against float64 autograd of naive
attention, on every backend that runs here; second derivatives raise rather than come out zero."""
import pytest
import torch

import jvp_flash_attn as jfa
from conftest import assert_within_rule, naive_attention
from jvp_flash_attn import masks
from jvp_flash_attn.masks import FramePattern

MASK = masks.teacher_forcing(FramePattern(4, 5, 2), window=2, sink=1)
BACKENDS = [b for b in ("reference", "triton", "cuda") if jfa.backends()[b] is None]
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a CPU, Triton's interpreter


def _problem(backend):
    """Inputs in the backend's dtype: float64 for the reference, float32 for Triton, bf16 (and a
    head dim it is built for) for cuda."""
    dtype, device, d = {"reference": (torch.float64, "cpu", 16), "triton": (torch.float32, TRITON_DEVICE, 16),
                        "cuda": (torch.bfloat16, "cuda", 64)}[backend]
    g = torch.Generator().manual_seed(5)
    shapes = [(2, MASK.sq, 4, d), (2, MASK.sk, 2, d), (2, MASK.sk, 2, d), (2, MASK.sq, 4, d)]
    q, k, v, w = (torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype) for s in shapes)
    return (q, k, v), w


def _check(got, x, w, backend):
    """Against float64 autograd of naive attention: to 1e-9 for the float64 reference, by the
    tolerance rule (docs/design/numerics.md) for the kernels (the reference backend's gradients in their dtype as the baseline)."""
    leaves = [a.double().requires_grad_() for a in x]
    allowed = MASK.dense(x[0].device)
    expected = torch.autograd.grad((naive_attention(*leaves, allowed)[0] * w.double()).sum(), leaves)
    if backend == "reference":
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        return
    leaves = [a.clone().requires_grad_() for a in x]
    lowp = torch.autograd.grad((jfa.attention(*leaves, mask=MASK, backend="reference") * w).sum(), leaves)
    for name, a, b, c in zip(("dq", "dk", "dv"), got, expected, lowp):
        assert_within_rule(name, a, b, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_grad(backend):
    x, w = _problem(backend)
    loss = lambda q, k, v: (jfa.attention(q, k, v, mask=MASK, backend=backend) * w).sum()
    _check(torch.func.grad(loss, argnums=(0, 1, 2))(*x), x, w, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_vjp(backend):
    x, w = _problem(backend)
    _, vjp = torch.func.vjp(lambda q, k, v: jfa.attention(q, k, v, mask=MASK, backend=backend), *x)
    _check(vjp(w), x, w, backend)


def test_second_derivatives_raise():
    """The backward kernel has no derivative: differentiating its result raises, by autograd and
    by torch.func alike, instead of giving zero."""
    x, w = _problem("reference")
    loss = lambda q, k, v: (jfa.attention(q, k, v, mask=MASK, backend="reference") * w).sum()
    leaves = [a.clone().requires_grad_() for a in x]
    dq = torch.autograd.grad(loss(*leaves), leaves, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(dq.square().sum(), leaves)
    grad_q = lambda q: torch.func.grad(loss)(q, *x[1:])
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.func.grad(lambda q: grad_q(q).square().sum())(x[0])
