"""The shared suite every backend runs: the tolerance rule (docs/design/numerics.md) against the float64 oracle.

Backends are those that can run here (reference always; triton under TRITON_INTERPRET=1 on
a CPU or on a GPU; cuda when built and a GPU is present). Shapes are small on a CPU; the
`gpu` tests run the full W1-W8 structures on a GPU (row slices against the oracle, and the
adjoint identity for the backward).
"""
import sys
from pathlib import Path

import pytest
import torch

import jvp_flash_attn as jfa
from conftest import assert_within_rule, naive_attention, rel_err
from jvp_flash_attn import masks, reference
from jvp_flash_attn.backends import get
from jvp_flash_attn.masks import FramePattern

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [name for name, reason in jfa.backends().items() if reason is None]
LOW = [torch.bfloat16, torch.float16]

P = FramePattern(tokens_per_frame=13, num_frames=5, frames_per_chunk=2)  # awkward sizes
CASES = {  # id -> (mask, B, Hq, Hk, Dqk, Dv)
    "B1-S97-H2-D64-full": (masks.full(97, 97), 1, 2, 2, 64, 64),
    "B2-S130-H4/2-D64-tf_chunkwise": (masks.teacher_forcing(P), 2, 4, 2, 64, 64),
    "B1-S65-H2-D128-bc_framewise": (masks.block_causal(FramePattern(13, 5)), 1, 2, 2, 128, 128),
    "B1-S195-H3/1-D64-bc_window2_sink1": (masks.block_causal(FramePattern(13, 15, 2), 2, 1), 1, 3, 1, 64, 64),
    "B1-S26x91-H2-D64-kv_cache": (masks.kv_cache(FramePattern(13, 7, 2), 3), 1, 2, 2, 64, 64),
    "B1-S70x45-H2-D64-segments_causal_empty": (
        masks.from_segments([10, 33, 27], [20, 25], [[0, 0], [2, 1], [1, 2]]), 1, 2, 2, 64, 64),
    "B1-S78-H2-D64x32-tf_dv_ne_dqk": (masks.teacher_forcing(FramePattern(13, 3)), 1, 2, 2, 64, 32),
}


def _inputs(case, dtype, seed):
    mask, b, hq, hk, d, dv = CASES[case]
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, device=DEVICE, dtype=torch.float64)
    x = (mk(b, mask.sq, hq, d), mk(b, mask.sk, hk, d), mk(b, mask.sk, hk, dv))
    t = tuple(mk(*a.shape) for a in x)
    do = mk(b, mask.sq, hq, dv)
    return mask, x, t, do


def _backend_or_skip(name, x):
    be = get(name)
    why = be.unsupported(*x)
    if why:
        pytest.skip(f"{name}: {why}")
    return be


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_jvp_backward_within_rule(backend, case, dtype):
    seed = torch.seed() % 2 ** 31
    mask, x64, t64, do64 = _inputs(case, dtype, seed)
    x, t, do = [a.to(dtype) for a in x64], [a.to(dtype) for a in t64], do64.to(dtype)
    be = _backend_or_skip(backend, x)
    # the oracle sees the same rounded inputs the kernel sees
    x64, t64, do64 = [a.double() for a in x], [a.double() for a in t], do.double()
    o64, to64, lse64 = reference.forward_jvp(*x64, *t64, mask)
    o_lp, to_lp, lse_lp = reference.forward_jvp(*x, *t, mask)
    grads64 = reference.backward(*x64, o64, lse64, do64, mask)
    grads_lp = reference.backward(*x, o_lp, lse_lp.to(torch.float32), do, mask)

    o, lse = be.forward(*x, mask, x[0].shape[-1] ** -0.5)
    assert_within_rule(f"o (seed {seed})", o, o64, o_lp)
    assert_within_rule("lse", lse, lse64, lse_lp)
    o_j, to, lse_j = be.forward_jvp(*x, *t, mask, x[0].shape[-1] ** -0.5)
    assert_within_rule("o from the fused jvp", o_j, o64, o_lp)
    assert_within_rule("to", to, to64, to_lp)
    assert_within_rule("lse from the fused jvp", lse_j, lse64, lse_lp)
    try:
        grads = be.backward(*x, o, lse, do, mask, x[0].shape[-1] ** -0.5)
    except NotImplementedError as e:
        pytest.skip(f"{backend} backward: {e}")
    for name, got, ref, lp in zip(("dq", "dk", "dv"), grads, grads64, grads_lp):
        assert got.shape == ref.shape and got.dtype == dtype
        assert_within_rule(name, got, ref, lp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_api_per_backend_matches_naive_float32(backend):
    """Through jfa.attention under torch.func.jvp and backward(), float32."""
    mask, x64, t64, do64 = _inputs("B2-S130-H4/2-D64-tf_chunkwise", torch.float32, 1234)
    x, t = [a.float() for a in x64], [a.float() for a in t64]
    if get(backend).unsupported(*x):
        pytest.skip(get(backend).unsupported(*x))
    leaves = [a.clone().requires_grad_() for a in x]
    o, to = torch.func.jvp(lambda *a: jfa.attention(*a, mask=mask, backend=backend), tuple(leaves), tuple(t))
    (o * do64.float()).sum().backward()
    allowed = mask.dense(DEVICE)
    o_ref, to_ref = torch.func.jvp(lambda *a: naive_attention(*a, allowed)[0], tuple(x64), tuple(t64))
    ref = [a.clone().requires_grad_() for a in x64]
    torch.autograd.backward(naive_attention(*ref, allowed)[0], do64)
    assert rel_err(o, o_ref) < 3e-3 and rel_err(to, to_ref) < 3e-3
    for a, b in zip(leaves, ref):
        assert rel_err(a.grad, b.grad) < 3e-3


# ---- full-size workloads on a GPU ----------------------------------------------------------
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bench package: W1-W8
from bench.workloads import WORKLOADS  # noqa: E402


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_full_size_workloads(backend, workload):
    w = WORKLOADS[workload]
    mask, h, d = w.mask(), w.heads, w.d_qk
    g = torch.Generator(device="cuda").manual_seed(7)
    mk = lambda s: torch.randn(1, s, h, d, generator=g, device="cuda", dtype=torch.bfloat16)
    q, k, v = mk(mask.sq), mk(mask.sk), mk(mask.sk)
    tq, tk, tv = mk(mask.sq), mk(mask.sk), mk(mask.sk)
    be = _backend_or_skip(backend, (q, k, v))
    o, to, lse = be.forward_jvp(q, k, v, tq, tk, tv, mask, d ** -0.5)
    # row slices (first rows, a chunk boundary, last rows) against the oracle
    for r0 in (0, mask.sq // 2 - 100, mask.sq - 200):
        r1 = r0 + 200
        allowed = mask.dense_rows(r0, r1, "cuda")
        f = lambda q_, k_, v_: naive_attention(q_, k_, v_, allowed)[0]
        args = tuple(a.double() for a in (q[:, r0:r1], k, v))
        targs = tuple(a.double() for a in (tq[:, r0:r1], tk, tv))
        o_ref, to_ref = torch.func.jvp(f, args, targs)
        o_lp, to_lp = torch.func.jvp(f, (q[:, r0:r1], k, v), (tq[:, r0:r1], tk, tv))
        assert_within_rule(f"{workload} o rows {r0}:{r1}", o[:, r0:r1], o_ref, o_lp)
        assert_within_rule(f"{workload} to rows {r0}:{r1}", to[:, r0:r1], to_ref, to_lp)
    # backward by the adjoint identity <jvp(t), g> == <t, vjp(g)> (no oracle at this size)
    do = mk(mask.sq)
    dq, dk, dv = be.backward(q, k, v, o, lse, do, mask, d ** -0.5)
    # Terms are random-signed, so rounding moves each sum by about eps * sqrt(sum of squared
    # terms); a wrong tile moves it by the whole root-sum-square of the terms it touches.
    pairs = [(to, do)] + list(zip((tq, tk, tv), (dq, dk, dv)))
    terms = [(a.double() * b.double()) for a, b in pairs]
    lhs, rhs = terms[0].sum(), sum(t.sum() for t in terms[1:])
    spread = sum(t.square().sum().sqrt() for t in terms)
    assert abs(lhs - rhs) <= 0.05 * spread, (workload, lhs.item(), rhs.item(), spread.item())
