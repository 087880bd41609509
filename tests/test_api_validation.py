"""Argument validation that does not depend on the backend: the softmax scale, and tangents whose
dtype differs from their primal's (refused by attention_jvp, rounded to the primal's dtype under
forward AD). The refusals are checked for every backend name, available here or not: they come
before the backend is chosen."""
import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import jvp_flash_attn as jfa
from conftest import naive_attention
from jvp_flash_attn import masks
from jvp_flash_attn.backends import NAMES

MASK = masks.block_causal(masks.FramePattern(3, 4, 2))


def _qkv(dtype=torch.float32, head_dim=16):
    g = torch.Generator().manual_seed(2)
    return tuple(torch.randn(1, MASK.sq, 2, head_dim, generator=g, dtype=dtype) for _ in range(3))


@pytest.mark.parametrize("backend", NAMES)
@pytest.mark.parametrize("scale", [0, 0.0, -0.125, -1, float("inf"), float("-inf"), float("nan"), 1e39, 10 ** 400,
                                   1e-39, 1e-300], ids=str)
def test_scale_outside_float32_positive_normal_range_is_refused(scale, backend):
    with pytest.raises(ValueError, match=r"scale must be finite and positive, in float32's normal range .* got"):
        jfa.attention(*_qkv(), mask=MASK, scale=scale, backend=backend)


@pytest.mark.parametrize("backend", NAMES)
@pytest.mark.parametrize("scale", [True, torch.tensor(0.25), np.bool_(True), 1j], ids=repr)
def test_scale_of_another_type_is_refused(scale, backend):
    with pytest.raises(TypeError, match=r"scale must be a real number \(int or float\) or None, got"):
        jfa.attention(*_qkv(), mask=MASK, scale=scale, backend=backend)


@pytest.mark.parametrize("scale", [1, np.float32(0.3), np.float64(0.3), 2.0 ** -126, 1e30])
def test_scale_as_int_numpy_or_extreme_float_is_accepted(scale):
    q, k, v = _qkv(torch.float64)
    q = q * 1e-30 if scale == 1e30 else q  # keep the scores finite
    o = jfa.attention(q, k, v, mask=MASK, scale=scale, backend="reference")
    torch.testing.assert_close(o, naive_attention(q, k, v, MASK.dense(), float(scale))[0], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", NAMES)
def test_forward_ad_tangent_of_another_dtype_is_rounded_to_its_primals(backend):
    """Mixed-precision models hand forward-AD tangents of another floating dtype (float32 tangents
    of bf16 activations): they are taken at the primal's dtype, exactly as if the caller had cast
    them, never read as raw bytes of the primal's dtype."""
    why = jfa.backends()[backend]
    if why is not None:
        pytest.skip(why)
    gpu = backend != "reference" and torch.cuda.is_available()
    # 64: the smallest head dim the cuda backend is built for
    q, k, v = (x.to("cuda", torch.bfloat16) if gpu else x for x in _qkv(head_dim=64 if gpu else 16))
    wide = torch.float32 if gpu else torch.float64
    tq, tk, tv = (torch.randn(x.shape, dtype=wide, device=x.device) for x in (q, k, v))
    f = lambda *x: jfa.attention(*x, mask=MASK, backend=backend)
    _, want = torch.func.jvp(f, (q, k, v), (tq.to(q.dtype), tk.to(k.dtype), tv.to(v.dtype)))
    _, got = torch.func.jvp(f, (q, k, v), (tq, tk, tv))
    assert got.dtype == q.dtype and torch.equal(got, want)
    zeros = (torch.zeros_like(q), torch.zeros_like(k))
    _, want = torch.func.jvp(f, (q, k, v), (*zeros, tv.to(v.dtype)))
    with fwAD.dual_level():
        o = jfa.attention(q, k, fwAD.make_dual(v, tv), mask=MASK, backend=backend)
        assert torch.equal(fwAD.unpack_dual(o).tangent, want)


@pytest.mark.parametrize("backend", NAMES)
def test_attention_jvp_tangent_of_another_dtype_is_refused(backend):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"tk must match its primal's dtype/device \(torch.float32, cpu\), "
                                        r"got \(torch.bfloat16, cpu\)"):
        jfa.attention_jvp(q, k, v, q, k.bfloat16(), v, mask=MASK, backend=backend)
