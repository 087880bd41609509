"""The reference against naive dense softmax attention differentiated by torch itself (float64)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import naive_attention
from jvp_flash_attn import masks, reference
from jvp_flash_attn.masks import FramePattern

F64 = dict(dtype=torch.float64)


@st.composite
def problems(draw):
    """Random masks (with empty rows sometimes), shapes, GQA ratios and Dv != Dqk."""
    kind = draw(st.sampled_from(["tf", "bc", "kv", "seg", "full"]))
    p = FramePattern(draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 3)))
    window, sink = draw(st.none() | st.integers(1, 3)), draw(st.integers(0, 2))
    if kind == "tf":
        m = masks.teacher_forcing(p, window, sink)
    elif kind == "bc":
        m = masks.block_causal(p, window, sink)
    elif kind == "kv":
        m = masks.kv_cache(p, draw(st.integers(0, p.num_chunks - 1)), window, sink)
    elif kind == "full":
        m = masks.full(draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    else:
        nq, nk = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        rule = draw(st.lists(st.lists(st.sampled_from([0, 1, 2]), min_size=nk, max_size=nk), min_size=nq, max_size=nq))
        m = masks.from_segments(draw(st.lists(st.integers(1, 9), min_size=nq, max_size=nq)),
                                draw(st.lists(st.integers(1, 9), min_size=nk, max_size=nk)), rule)
    hk = draw(st.integers(1, 2))
    hq = hk * draw(st.sampled_from([1, 2, 3]))
    d, dv = draw(st.sampled_from([4, 8, 16])), draw(st.sampled_from([4, 8, 12]))
    b = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, m.sq, hq, d), (b, m.sk, hk, d), (b, m.sk, hk, dv)]
    x = [torch.randn(s, generator=g, **F64) for s in shapes]
    t = [torch.randn(s, generator=g, **F64) for s in shapes]
    do = torch.randn(b, m.sq, hq, dv, generator=g, **F64)
    return m, x, t, do


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@given(problems())
def test_forward_and_lse_match_naive(problem):
    m, (q, k, v), _, _ = problem
    o_ref, lse_ref = naive_attention(q, k, v, m.dense())
    o, lse = reference.forward(q, k, v, m)
    _close(o, o_ref)
    _close(lse, lse_ref)
    _close(reference.attention(q, k, v, m), o_ref)


@given(problems())
def test_backward_matches_autograd_of_naive(problem):
    m, x, _, do = problem
    x = [t.requires_grad_() for t in x]
    o_ref, _ = naive_attention(*x, m.dense())
    grads_ref = torch.autograd.grad(o_ref, x, do)
    o, lse = reference.forward(*x, m)
    for got, ref in zip(reference.backward(*x, o, lse, do, m), grads_ref):
        _close(got, ref)
    # the differentiable reference, by torch's own autograd
    for got, ref in zip(torch.autograd.grad(reference.attention(*x, m), x, do), grads_ref):
        _close(got, ref)


@given(problems())
def test_forward_jvp_matches_torch_func_jvp_of_naive(problem):
    m, x, t, _ = problem
    allowed = m.dense()
    o_ref, to_ref = torch.func.jvp(lambda q, k, v: naive_attention(q, k, v, allowed)[0], tuple(x), tuple(t))
    o, to, lse = reference.forward_jvp(*x, *t, m)
    _close(o, o_ref)
    _close(to, to_ref)
    _, to_plain = torch.func.jvp(lambda q, k, v: reference.attention(q, k, v, m), tuple(x), tuple(t))
    _close(to_plain, to_ref)


@given(problems())
def test_adjoint_identity(problem):
    """<jvp(t), g> == <t, vjp(g)> with no oracle involved."""
    m, x, t, g = problem
    o, to, lse = reference.forward_jvp(*x, *t, m)
    grads = reference.backward(*x, o, lse, g, m)
    lhs = (to * g).sum()
    rhs = sum((ti * gi).sum() for ti, gi in zip(t, grads))
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)


def test_empty_rows_give_zero_output_minus_inf_lse_and_zero_derivatives():
    m = masks.from_segments([3, 4], [5], [[0], [1]])
    q, k, v = (torch.randn(1, s, 2, 8, **F64) for s in (7, 5, 5))
    tq, tk, tv = (torch.randn_like(x) for x in (q, k, v))
    o, to, lse = reference.forward_jvp(q, k, v, tq, tk, tv, m)
    assert torch.all(o[:, :3] == 0) and torch.all(to[:, :3] == 0)
    assert torch.all(lse[:, :, :3] == float("-inf")) and torch.isfinite(lse[:, :, 3:]).all()
    dq, dk, dv = reference.backward(q, k, v, o, lse, torch.randn_like(o), m)
    assert torch.all(dq[:, :3] == 0) and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def test_nan_propagates():
    m = masks.full(6, 6)
    q, k, v = (torch.randn(1, 6, 1, 4, **F64) for _ in range(3))
    q[0, 2, 0, 1] = float("nan")
    o, _ = reference.forward(q, k, v, m)
    assert torch.isnan(o[0, 2]).all() and not torch.isnan(o[0, [0, 1, 3, 4, 5]]).any()


def test_memory_is_blocked(monkeypatch):
    """Scores exist one query block at a time: shrink the block and results do not change."""
    m = masks.teacher_forcing(FramePattern(7, 5, 2), window=2, sink=1)
    x = [torch.randn(2, m.sq, 2, 8, **F64) for _ in range(3)]
    t = [torch.randn_like(a) for a in x]
    full_block = reference.forward_jvp(*x, *t, m)
    monkeypatch.setattr(reference, "_BLOCK_ELEMENTS", 2 * 2 * m.sk * 3)  # 3 rows per block
    assert len(reference._blocks(x[0], m.sk)) == -(-m.sq // 3)
    for a, b in zip(reference.forward_jvp(*x, *t, m), full_block):
        _close(a, b)


def test_flops_counts_exact_pairs():
    m = masks.block_causal(FramePattern(4, 3))
    assert reference.flops(m, 2, 3, 16, 8, "fwd") == 2 * m.num_pairs * 2 * 3 * 24
    assert reference.flops(m, 1, 1, 16, 16, "jvp") == 3 * reference.flops(m, 1, 1, 16, 16)
    with pytest.raises(ValueError, match="op"):
        reference.flops(m, 1, 1, 16, 16, "bogus")
