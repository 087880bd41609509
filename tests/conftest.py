"""Shared test set-up: hypothesis profiles, the independent naive oracle, the tolerance rule."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU the Triton kernels run in Triton's interpreter; triton reads this when a
# kernel is defined, so it is set before any test module imports the package.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_rounds_bfloat16_to_nearest():
    """Triton's interpreter converts float32 to bfloat16 by truncation; the GPU rounds to nearest
    even. The kernels round P, dS and their outputs to bfloat16, so under the interpreter every
    bfloat16 result carries a bias of half an ulp that no GPU run has (o's error about 2.4x the
    reference's in bfloat16, about 1x on a GPU). Make the interpreter round as the GPU does."""
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    truncating = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return truncating(self, src, dst_type)
        bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
        nearest = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        nearest = np.where(np.isnan(src.data), np.uint16(0x7FC0), nearest)  # a NaN stays a NaN
        return interpreter.TensorHandle(nearest, tl.bfloat16)

    interpreter.InterpreterBuilder.cast_impl = cast_impl


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_rounds_bfloat16_to_nearest()

settings.register_profile("dev", max_examples=12, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def naive_attention(q, k, v, allowed, scale=None):
    """Dense softmax attention written without any of the package's code: (o, lse).

    q (B,Sq,Hq,D), k (B,Sk,Hk,D), v (B,Sk,Hk,Dv), allowed (Sq,Sk) bool. Rows with no allowed
    key give o = 0 and lse = -inf. Plain ops, so autograd and forward AD differentiate it.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    groups = q.shape[2] // k.shape[2]
    qh = q.permute(0, 2, 1, 3)
    kh = k.permute(0, 2, 1, 3).repeat_interleave(groups, dim=1)
    vh = v.permute(0, 2, 1, 3).repeat_interleave(groups, dim=1)
    s = torch.einsum("bhqd,bhkd->bhqk", qh, kh) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    empty = ~allowed.any(-1, keepdim=True)
    p = torch.softmax(torch.where(empty, torch.zeros_like(s), s), dim=-1) * (~empty)
    return torch.einsum("bhqk,bhkd->bhqd", p, vh).permute(0, 2, 1, 3), lse


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def assert_within_rule(name, out, ref64, ref_lowp, floor=1e-5):
    """The tolerance rule (docs/design/numerics.md): the error against the float64 oracle is at most 2 x the error of the reference
    run in the same dtype, plus a small floor; checked on the relative (Frobenius) error and on
    the max error. -inf entries (empty rows' lse) must match exactly; NaN never passes.

    The max-error floor is at least half an ulp of the largest reference value in the output's
    dtype: storing the result in that dtype costs that much, and the low-precision reference's
    own maximum error can land below it by chance on one draw.
    """
    assert out.shape == ref64.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    inf = torch.isinf(ref64)
    assert torch.equal(torch.isinf(out), inf), f"{name}: infinities differ from the oracle"
    finite_max = ref64[~inf].abs().max().item() if (~inf).any() else 0.0
    floor = max(floor, 0.5 * torch.finfo(out.dtype).eps * finite_max)
    out, ref64, ref_lowp = (torch.where(inf, torch.zeros_like(x, dtype=torch.float64), x.double())
                            for x in (out, ref64, ref_lowp))
    assert not torch.isnan(out).any(), f"{name}: NaN in output (an element left unwritten?)"
    rel, rel_lp = rel_err(out, ref64), rel_err(ref_lowp, ref64)
    assert rel <= 2 * rel_lp + 1e-6, f"{name}: rel error {rel:.3e} > 2 x {rel_lp:.3e} + 1e-6"
    err, base = max_err(out, ref64), max_err(ref_lowp, ref64)
    assert err <= 2 * base + floor, (f"{name}: max error {err:.3e} > 2 x {base:.3e} + {floor:.1e} "
                                     f"(rel {rel:.2e})")


@pytest.fixture
def rng():
    """A fresh generator per test, seeded from the test's randomness so failures reproduce."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")  # shown by pytest when the test fails
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def reference_backend():
    """Whole-model tests (test_rcm_*) use jfa's reference backend: CI sets TRITON_INTERPRET=1,
    under which jfa would pick the Triton interpreter on the CPU, far too slow for whole models.
    They also run on one CPU thread: their models are tiny, and on a loaded machine torch's
    thread pool waits on busy cores (3-5x slower with 2 threads on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JFA_BACKEND", "reference")
        yield
    torch.set_num_threads(threads)
