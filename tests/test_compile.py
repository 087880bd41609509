"""torch.compile(fullgraph=True) through jfa.attention (forward and backward), and opcheck of
the custom ops over the reference backend (over Triton: test_triton_kernels)."""
import pytest
import torch

import jvp_flash_attn as jfa
from jvp_flash_attn import masks, ops
from jvp_flash_attn.masks import FramePattern

MASK = masks.teacher_forcing(FramePattern(5, 4, 2), window=2, sink=1)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(dtype=torch.float32):
    g = torch.Generator(device=DEVICE).manual_seed(3)
    return [torch.randn(2, MASK.sq, 4 if i == 0 else 2, 64, generator=g, device=DEVICE, dtype=dtype)
            for i in range(3)]


@pytest.mark.parametrize("backend", [b for b, why in jfa.backends().items() if why is None and
                                     (b == "reference" or DEVICE == "cuda")])
def test_compile_fullgraph_forward_and_backward(backend):
    """A small model block compiles without graph breaks and matches eager, values and grads."""
    w = torch.randn(64, 64, device=DEVICE) / 8

    def block(q, k, v):
        return (jfa.attention(q @ w, k, v, mask=MASK, backend=backend) @ w).square().mean()

    dtype = torch.float32 if backend == "reference" else torch.bfloat16  # the kernels' dtypes
    x = [a.requires_grad_() for a in _inputs(dtype)]
    w = w.to(dtype)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")  # traces fwd and bwd
    loss_c = compiled(*x)
    grads_c = torch.autograd.grad(loss_c, x)
    loss_e = block(*x)
    grads_e = torch.autograd.grad(loss_e, x)
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


def test_opcheck_reference_ops():
    q, k, v = _inputs(torch.float64)
    tq, tk, tv = (torch.randn_like(a) for a in (q, k, v))
    o, lse = ops.attention_fwd(q, k, v, MASK.uid, 0.25, "reference")
    do = torch.randn_like(o)
    torch.library.opcheck(ops.attention_fwd, (q, k, v, MASK.uid, 0.25, "reference"))
    torch.library.opcheck(ops.attention_jvp, (q, k, v, tq, tk, tv, MASK.uid, 0.25, "reference"))
    torch.library.opcheck(ops.attention_bwd, (q, k, v, o, lse, do, MASK.uid, 0.25, "reference", False))


@pytest.mark.parametrize("compile_backend", ["eager", "inductor"])
def test_compile_fullgraph_default_mask(compile_backend):
    """mask=None builds the full mask while tracing; it compiles, also after a shape change
    (which makes torch.compile retrace with symbolic sizes), and matches eager."""
    torch._dynamo.reset()
    f = torch.compile(lambda q, k, v: jfa.attention(q, k, v, backend="reference"),
                      fullgraph=True, backend=compile_backend)
    g = torch.Generator().manual_seed(5)
    for sq, sk in ((9, 12), (11, 12), (11, 14)):
        q = torch.randn(1, sq, 2, 16, generator=g)
        k, v = (torch.randn(1, sk, 2, 16, generator=g) for _ in range(2))
        torch.testing.assert_close(f(q, k, v), jfa.attention(q, k, v, backend="reference"))
