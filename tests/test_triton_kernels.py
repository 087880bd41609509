"""Triton kernels against the float64 oracle: forward, fused forward+JVP, backward.

On a CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set below when no GPU
is present, before anything imports the kernels); shapes are small but cover every tile
class (EMPTY, FULL, PARTIAL, a ragged FULL last tile), GQA/MQA, Sq != Sk, Dv != Dqk,
padded head dims, B > 1, rows with no allowed key, and strided inputs. Every output buffer
is NaN-poisoned before the kernel writes it.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import jvp_flash_attn as jfa  # noqa: E402
from jvp_flash_attn import masks, reference  # noqa: E402
from jvp_flash_attn.backends import get  # noqa: E402
from jvp_flash_attn.masks import FramePattern  # noqa: E402
from conftest import assert_within_rule  # noqa: E402

_REASON = jfa.backends()["triton"]
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"triton backend: {_REASON}")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# id -> (mask, B, Hq, Hk, Dqk, Dv)
CASES = {
    "B2-S97x61-H4/2-D32x16-full": (masks.full(97, 61), 2, 4, 2, 32, 16),
    "B1-S98-H2-D64-tf_framewise": (masks.teacher_forcing(FramePattern(7, 7)), 1, 2, 2, 64, 64),
    "B2-S130-H3/1-D32-bc_window2_sink1": (
        masks.block_causal(FramePattern(13, 10, 2), window=2, sink=1), 2, 3, 1, 32, 32),
    "B1-S70x45-H2-D16-segments_causal_empty": (
        masks.from_segments([10, 33, 27], [20, 25], [[0, 0], [2, 1], [1, 2]]), 1, 2, 2, 16, 16),
    "B1-S26x91-H2-D32x64-kv_cache": (masks.kv_cache(FramePattern(13, 7, 2), 3), 1, 2, 2, 32, 64),
    "B1-S120-H2/1-D96-tf_chunkwise_first1": (
        masks.teacher_forcing(FramePattern(6, 10, 3, first_chunk_frames=1)), 1, 2, 1, 96, 96),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@pytest.fixture(autouse=True)
def poisoned_outputs():
    from jvp_flash_attn.triton.launch_setup import poison_outputs

    poison_outputs(True)
    yield
    poison_outputs(False)


def _rand(g, *shape, dtype):
    return torch.randn(*shape, generator=g, device=DEVICE, dtype=torch.float64).to(dtype)


def _problem(case, dtype, seed):
    mask, b, hq, hk, d, dv = CASES[case]
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = (_rand(g, b, mask.sq, hq, d, dtype=dtype), _rand(g, b, mask.sk, hk, d, dtype=dtype),
         _rand(g, b, mask.sk, hk, dv, dtype=dtype))
    t = tuple(_rand(g, *a.shape, dtype=dtype) for a in x)
    return mask, x, t, _rand(g, b, mask.sq, hq, dv, dtype=dtype)


def _seed():
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_jvp_backward_against_oracle(case, dtype):
    if dtype == "fp32" and case not in ("B2-S97x61-H4/2-D32x16-full", "B2-S130-H3/1-D32-bc_window2_sink1"):
        pytest.skip("float32 runs on two cases to keep the interpreter suite short")
    dt = DTYPES[dtype]
    seed = _seed()
    mask, x, t, do = _problem(case, dt, seed)
    be = get("triton")
    assert be.unsupported(*x) is None
    scale = x[0].shape[-1] ** -0.5
    x64, t64 = [a.double() for a in x], [a.double() for a in t]
    o64, to64, lse64 = reference.forward_jvp(*x64, *t64, mask)
    o_lp, to_lp, lse_lp = reference.forward_jvp(*x, *t, mask)

    o, lse = be.forward(*x, mask, scale)
    assert_within_rule(f"o (seed {seed})", o, o64, o_lp)
    assert_within_rule(f"lse (seed {seed})", lse, lse64, lse_lp.float())

    o_j, to, lse_j = be.forward_jvp(*x, *t, mask, scale)
    assert_within_rule(f"o of the fused jvp (seed {seed})", o_j, o64, o_lp)
    assert_within_rule(f"to (seed {seed})", to, to64, to_lp)
    assert_within_rule(f"lse of the fused jvp (seed {seed})", lse_j, lse64, lse_lp.float())

    grads64 = reference.backward(*x64, o64, lse64, do.double(), mask)
    grads_lp = reference.backward(*x, o_lp, lse_lp.float(), do, mask)
    grads = be.backward(*x, o, lse, do, mask, scale)
    for name, got, ref, lp, inp in zip(("dq", "dk", "dv"), grads, grads64, grads_lp, x):
        assert got.dtype == dt and got.shape == inp.shape
        assert_within_rule(f"{name} (seed {seed})", got, ref, lp)


def test_cases_cover_every_tile_class():
    """The cases above exercise EMPTY, FULL and PARTIAL tiles and a ragged FULL last tile
    under the tile sizes the kernels use here."""
    from jvp_flash_attn.masks.tiles import EMPTY, FULL, PARTIAL
    from jvp_flash_attn.triton.launch_setup import get_config

    seen = set()
    for mask, *_ in CASES.values():
        for direction in ("fwd", "jvp", "bwd_dkdv", "bwd_dq"):
            cfg = get_config(direction, torch.bfloat16, 32, 32)
            st = mask.tiles(cfg.block_m, cfg.block_n).state
            seen |= {int(s) for s in st.flat}
            if mask.sk % cfg.block_n and st[:, -1].max() == FULL:
                seen.add("ragged_full_k")
            if mask.sq % cfg.block_m and st[-1, :].max() == FULL:
                seen.add("ragged_full_q")
    assert {EMPTY, FULL, PARTIAL, "ragged_full_k", "ragged_full_q"} <= seen


def test_adjoint_identity_float32():
    """<jvp(t), g> == <t, vjp(g)> with the kernels' own fused JVP and backward."""
    mask, x, t, do = _problem("B2-S130-H3/1-D32-bc_window2_sink1", torch.float32, _seed())
    be = get("triton")
    o, to, lse = be.forward_jvp(*x, *t, mask, 32 ** -0.5)
    dq, dk, dv = be.backward(*x, o, lse, do, mask, 32 ** -0.5)
    lhs = (to.double() * do.double()).sum()
    rhs = sum((a.double() * b.double()).sum() for a, b in zip(t, (dq, dk, dv)))
    assert abs(lhs - rhs) <= 1e-4 * (abs(lhs) + 1), (lhs.item(), rhs.item())


def test_strided_inputs_from_packed_qkv():
    """q, k, v as views of one packed (B, S, 3, H, D) tensor: non-contiguous, unit last stride."""
    mask = masks.block_causal(FramePattern(9, 6, 2))
    g = torch.Generator(device=DEVICE).manual_seed(_seed())
    qkv = _rand(g, 2, mask.sq, 3, 2, 32, dtype=torch.float16)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    be = get("triton")
    o, lse = be.forward(q, k, v, mask, 32 ** -0.5)
    o_ref, lse_ref = be.forward(q.contiguous(), k.contiguous(), v.contiguous(), mask, 32 ** -0.5)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=0)
    dq, dk, dv = be.backward(q, k, v, o, lse, torch.ones_like(o), mask, 32 ** -0.5)
    dq2, dk2, dv2 = be.backward(q.contiguous(), k.contiguous(), v.contiguous(), o_ref, lse_ref,
                                torch.ones_like(o), mask, 32 ** -0.5)
    for a, b in ((dq, dq2), (dk, dk2), (dv, dv2)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nan_in_one_query_row_stays_in_that_row():
    mask = masks.full(40, 40)
    g = torch.Generator(device=DEVICE).manual_seed(_seed())
    q, k, v = (_rand(g, 1, 40, 1, 16, dtype=torch.float32) for _ in range(3))
    q[0, 5, 0, 0] = float("nan")
    o, lse = get("triton").forward(q, k, v, mask, 0.25)
    assert torch.isnan(o[0, 5]).all() and torch.isnan(lse[0, 0, 5])
    others = torch.cat([o[0, :5], o[0, 6:]])
    assert torch.isfinite(others).all()


def test_through_public_api_forward_ad_and_backward():
    """jfa.attention(backend="triton") under torch.func.jvp gives the fused kernel's (o, to),
    and the primal stays differentiable."""
    mask, x, t, do = _problem("B1-S98-H2-D64-tf_framewise", torch.float32, _seed())
    leaves = [a.clone().requires_grad_() for a in x]
    o, to = torch.func.jvp(lambda *a: jfa.attention(*a, mask=mask, backend="triton"),
                           tuple(leaves), tuple(t))
    o_f, to_f = jfa.attention_jvp(*x, *t, mask=mask, backend="triton")
    torch.testing.assert_close(o.detach(), o_f, rtol=0, atol=0)
    torch.testing.assert_close(to, to_f, rtol=0, atol=0)
    (o * do).sum().backward()
    grads = get("triton").backward(*x, o_f, get("triton").forward(*x, mask, 64 ** -0.5)[1], do,
                                   mask, 64 ** -0.5)
    for leaf, g in zip(leaves, grads):
        torch.testing.assert_close(leaf.grad, g, rtol=0, atol=0)


def test_unsupported_inputs_are_refused_with_the_reason():
    be = get("triton")
    x = torch.randn(1, 8, 1, 16, dtype=torch.float64, device=DEVICE)
    assert "dtype" in be.unsupported(x, x, x)
    with pytest.raises(ValueError, match="triton"):
        jfa.attention(x, x, x, backend="triton")
    y = torch.randn(1, 8, 1, 12, device=DEVICE)
    assert "head dim" in be.unsupported(y, y, y) and "q" in be.unsupported(y, y, y)
    z = torch.randn(1, 8, 1, 16, device=DEVICE)
    big = torch.randn(1, 8, 1, 512, device=DEVICE)
    assert "v's head dim" in be.unsupported(z, z, big)


def test_custom_ops_pass_opcheck():
    mask, x, t, do = _problem("B2-S97x61-H4/2-D32x16-full", torch.float16, _seed())
    scale = 32 ** -0.5
    torch.library.opcheck(torch.ops.jfa.attention_fwd, (*x, mask.uid, scale, "triton"))
    torch.library.opcheck(torch.ops.jfa.attention_jvp, (*x, *t, mask.uid, scale, "triton"))
    o, lse = get("triton").forward(*x, mask, scale)
    torch.library.opcheck(torch.ops.jfa.attention_bwd, (*x, o, lse, do, mask.uid, scale, "triton", False))
