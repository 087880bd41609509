"""Forward-mode AD through jfa.attention under torch.compile(fullgraph=True), eager and inductor
backends: torch.func.jvp and forward_ad dual tensors inside the compiled function give the exact
tangent (against float64 forward AD of naive attention), never zeros or None; dual tensors made
outside the compiled function are refused where the kernel can see them."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import jvp_flash_attn as jfa
from conftest import assert_within_rule, naive_attention
from jvp_flash_attn import masks, reference
from jvp_flash_attn.masks import FramePattern

MASK = masks.block_causal(FramePattern(5, 6, 2), window=2, sink=1)  # FULL, PARTIAL and EMPTY tiles
BACKENDS = [b for b in ("reference", "triton", "cuda") if jfa.backends()[b] is None]
COMPILERS = ["eager", "inductor"]
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a CPU, Triton's interpreter


def _problem(backend):
    """Inputs in the backend's dtype: float64 for the reference, float32 for Triton, bf16 (and a
    head dim it is built for) for cuda."""
    dtype, device, d = {"reference": (torch.float64, "cpu", 16), "triton": (torch.float32, TRITON_DEVICE, 16),
                        "cuda": (torch.bfloat16, "cuda", 64)}[backend]
    g = torch.Generator().manual_seed(11)
    shapes = [(2, MASK.sq, 4, d), (2, MASK.sk, 2, d), (2, MASK.sk, 2, d)]
    x = tuple(torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype) for s in shapes)
    t = tuple(torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype) for s in shapes)
    return x, t


def _check(backend, x, t, o, to):
    assert to is not None, "no tangent"
    x64, t64 = [a.double() for a in x], [a.double() for a in t]
    allowed = MASK.dense(x[0].device)
    o_ref, to_ref = torch.func.jvp(lambda *a: naive_attention(*a, allowed)[0], tuple(x64), tuple(t64))
    if backend == "reference":
        torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(to, to_ref, rtol=1e-9, atol=1e-10)
    else:
        o_lp, to_lp, _ = reference.forward_jvp(*x, *t, MASK)
        assert_within_rule("o", o, o_ref, o_lp)
        assert_within_rule("to", to, to_ref, to_lp)


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_torch_func_jvp_gives_the_exact_tangent(backend, compiler):
    x, t = _problem(backend)
    attn = lambda q, k, v: jfa.attention(q, k, v, mask=MASK, backend=backend)

    @torch.compile(fullgraph=True, backend=compiler)
    def step(q, k, v, tq, tk, tv):
        return torch.func.jvp(attn, (q, k, v), (tq, tk, tv))

    _check(backend, x, t, *step(*x, *t))


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_forward_ad_gives_the_exact_tangent(backend, compiler):
    x, t = _problem(backend)

    @torch.compile(fullgraph=True, backend=compiler)
    def step(q, k, v, tq, tk, tv):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, d) for p, d in zip((q, k, v), (tq, tk, tv))]
            out = fwAD.unpack_dual(jfa.attention(*duals, mask=MASK, backend=backend))
            return out.primal, out.tangent

    _check(backend, x, t, *step(*x, *t))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dual_tensors_passed_into_a_compiled_function_are_refused(backend):
    """The graph is traced without the inputs' tangents, so jfa.attention's forward-AD rule is
    not in it; the kernel refuses the tangents rather than dropping them. (Under inductor, torch
    itself drops the tangents of dual inputs before any op sees them, for every op.)"""
    x, t = _problem(backend)
    compiled = torch.compile(lambda q, k, v: jfa.attention(q, k, v, mask=MASK, backend=backend),
                             fullgraph=True, backend="eager")
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, d) for p, d in zip(x, t)]
        with pytest.raises(RuntimeError, match="tangents reached the attention kernel"):
            compiled(*duals)
