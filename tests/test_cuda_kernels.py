"""The compiled core on a GPU: forward, fused forward+JVP and backward against the float64
oracle under the tolerance rule (docs/design/numerics.md), with outputs poisoned (NaN) before every launch, fresh random
inputs, awkward lengths (97, 1025, 1560), B > 1, GQA, Dv != Dqk, every mask family."""
import pytest
import torch

import jvp_flash_attn as jfa
from conftest import assert_within_rule, rel_err
from jvp_flash_attn import masks, reference
from jvp_flash_attn.backends import cuda_backend, cuda_kernel_choice, cuda_launch_args, get, select
from jvp_flash_attn.masks import FramePattern

_REASON = cuda_backend.CudaBackend().availability()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=f"cuda backend: {_REASON}")]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(cuda_launch_args, "POISON_OUTPUTS", True)


CASES = {  # id -> (mask, B, Hq, Hk, Dqk, Dv)
    "B1-S97-H2-D64-full": (lambda: masks.full(97, 97), 1, 2, 2, 64, 64),
    "B2-S1025-H4/2-D128-full": (lambda: masks.full(1025, 1025), 2, 4, 2, 128, 128),
    "B1-S1560-H2-D128-bc_framewise": (lambda: masks.block_causal(FramePattern(156, 10)), 1, 2, 2, 128, 128),
    "B2-S1560-H3/1-D64-tf_chunkwise": (lambda: masks.teacher_forcing(FramePattern(130, 6, 3)), 2, 3, 1, 64, 64),
    "B1-S1950-H2-D128-bc_window2_sink1": (lambda: masks.block_causal(FramePattern(65, 30, 3), 2, 1), 1, 2, 2, 128, 128),
    "B1-S390x1170-H2-D64-kv_cache": (lambda: masks.kv_cache(FramePattern(130, 9, 3), 2), 1, 2, 2, 64, 64),
    "B1-S97x1025-H2-D64-segments_causal_empty": (
        lambda: masks.from_segments([10, 60, 27], [500, 525], [[0, 0], [2, 1], [1, 2]]), 1, 2, 2, 64, 64),
    "B1-S1025-H2-D64x128-tf_dv_gt_dqk": (lambda: masks.from_segments([512, 513], [1025], [[1], [2]]), 1, 2, 2, 64, 128),
    "B1-S1025-H2-D128x64-bc_dv_lt_dqk": (lambda: masks.block_causal(FramePattern(205, 5)), 1, 2, 2, 128, 64),
}


def _inputs(case, dtype):
    make_mask, b, hq, hk, d, dv = CASES[case]
    mask = make_mask()
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=dtype)
    x = (mk(b, mask.sq, hq, d), mk(b, mask.sk, hk, d), mk(b, mask.sk, hk, dv))
    t = tuple(mk(*a.shape) for a in x)
    return mask, x, t, mk(b, mask.sq, hq, dv)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_forward_jvp_backward_within_rule(case, dtype):
    mask, x, t, do = _inputs(case, dtype)
    be = get("cuda")
    if be.unsupported(*x):
        pytest.skip(be.unsupported(*x))
    scale = x[0].shape[-1] ** -0.5
    x64, t64, do64 = [a.double() for a in x], [a.double() for a in t], do.double()
    o64, to64, lse64 = reference.forward_jvp(*x64, *t64, mask)
    o_lp, to_lp, lse_lp = reference.forward_jvp(*x, *t, mask)

    o, lse = be.forward(*x, mask, scale)
    assert_within_rule("o", o, o64, o_lp)
    assert_within_rule("lse", lse, lse64, lse_lp)
    o_j, to, lse_j = be.forward_jvp(*x, *t, mask, scale)
    assert_within_rule("o (fused jvp)", o_j, o64, o_lp)
    assert_within_rule("to", to, to64, to_lp)
    assert_within_rule("lse (fused jvp)", lse_j, lse64, lse_lp)
    print(f"{case} {dtype}: rel o {rel_err(o, o64):.2e} to {rel_err(to, to64):.2e}")

    grads64 = reference.backward(*x64, o64, lse64, do64, mask)
    grads_lp = reference.backward(*x, o_lp, lse_lp.float(), do, mask)
    grads = be.backward(*x, o, lse, do, mask, scale)
    for name, got, ref, lp in zip(("dq", "dk", "dv"), grads, grads64, grads_lp):
        assert got.shape == ref.shape and got.dtype == dtype
        assert_within_rule(name, got, ref, lp)
    print(f"{case} {dtype}: rel dq {rel_err(grads[0], grads64[0]):.2e} dk {rel_err(grads[1], grads64[1]):.2e} "
          f"dv {rel_err(grads[2], grads64[2]):.2e}")


def _cuda_within_rule_every_direction(q, k, v, mask, scale=0.125):
    """The cuda forward+JVP and backward of (q, k, v) within the rule of the float64 oracle, on
    Hopper by the warp-specialised kernels; their outputs (o, to, lse, dq), for the caller's own
    checks."""
    t = tuple(torch.randn(a.shape, device=a.device, dtype=a.dtype) for a in (q, k, v))
    be = get("cuda")
    (o, to, lse), kernels = _kernels_of(be.forward_jvp, q, k, v, *t, mask, scale)
    if cuda_kernel_choice.device_family(q.device.index) == "sm90a":
        assert any("fwd_kernel_sm90_warp_specialised" in n for n in kernels), sorted(kernels)
    o64, to64, lse64 = reference.forward_jvp(q.double(), k.double(), v.double(), *(a.double() for a in t), mask, scale)
    o_lp, to_lp, lse_lp = reference.forward_jvp(q, k, v, *t, mask, scale)
    assert_within_rule("o", o, o64, o_lp)
    assert_within_rule("to", to, to64, to_lp)
    do = torch.randn_like(o)
    grads, kernels = _kernels_of(be.backward, q, k, v, o, lse, do, mask, scale)
    if cuda_kernel_choice.device_family(q.device.index) == "sm90a":
        assert any("bwd_kernel_sm90_warp_specialised" in n for n in kernels), sorted(kernels)
    ref = reference.backward(q.double(), k.double(), v.double(), o64, lse64, do.double(), mask, scale)
    ref_lp = reference.backward(q, k, v, o_lp, lse_lp.float(), do, mask, scale)
    for name, got, r, lp in zip(("dq", "dk", "dv"), grads, ref, ref_lp):
        assert_within_rule(name, got, r, lp)
    return o, to, lse, grads[0]


def test_cuda_non_contiguous_inputs_and_empty_rows():
    """q/k/v as views of a packed qkv tensor (head-interleaved strides); a mask with query rows
    that see nothing: o = 0, lse = -inf, zero gradient and tangent."""
    mask = masks.from_segments([40, 57], [70, 27], [[0, 0], [1, 2]])
    qkv = torch.randn(2, 97, 3, 2, 64, device="cuda", dtype=torch.bfloat16)
    o, to, lse, dq = _cuda_within_rule_every_direction(*qkv.unbind(2), mask)
    assert torch.isneginf(lse[:, :, :40]).all() and (o[:, :40] == 0).all() and (to[:, :40] == 0).all()
    assert (dq[:, :40] == 0).all()


def test_cuda_expanded_inputs():
    """k and v expanded over the batch and q's heads expanded (stride 0): copied for the TMA unit,
    within the rule in every direction."""
    mask = masks.block_causal(FramePattern(37, 3))
    q = torch.randn(1, mask.sq, 1, 64, device="cuda", dtype=torch.bfloat16).expand(2, -1, 2, -1)
    k, v = (torch.randn(1, mask.sk, 2, 64, device="cuda", dtype=torch.bfloat16).expand(2, -1, -1, -1) for _ in range(2))
    _cuda_within_rule_every_direction(q, k, v, mask)


def test_cuda_nan_propagates():
    mask = masks.full(97, 97)
    q, k, v = (torch.randn(1, 97, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    q[0, 5, 1, 3] = float("nan")
    o, _ = get("cuda").forward(q, k, v, mask, 0.125)
    assert torch.isnan(o[0, 5, 1]).all() and not torch.isnan(o[0, 6]).any()


def test_automatic_selection_picks_cuda_and_public_api_runs():
    mask = masks.teacher_forcing(FramePattern(65, 6, 2))
    x = [torch.randn(2, mask.sq, 4, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    x[1] = torch.randn(2, mask.sk, 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x[2] = torch.randn(2, mask.sk, 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert select(None, *x).name == "cuda"
    t = tuple(torch.randn_like(a) for a in x)
    o, to = torch.func.jvp(lambda *a: jfa.attention(*a, mask=mask), tuple(a.detach() for a in x), t)
    o2, to2 = jfa.attention_jvp(*(a.detach() for a in x), *t, mask=mask, backend="cuda")
    assert torch.equal(o, o2) and torch.equal(to, to2)
    out = jfa.attention(*x, mask=mask, backend="cuda")
    out.float().square().sum().backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in x)


def test_adjoint_identity_jvp_vs_backward():
    """<jvp(t), g> == <t, vjp(g)> with the cuda kernels alone (no oracle)."""
    mask = masks.block_causal(FramePattern(156, 10, 3))
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16)
    q, k, v = mk(2, mask.sq, 4, 128), mk(2, mask.sk, 2, 128), mk(2, mask.sk, 2, 128)
    tq, tk, tv = mk(*q.shape), mk(*k.shape), mk(*v.shape)
    be = get("cuda")
    o, to, lse = be.forward_jvp(q, k, v, tq, tk, tv, mask, 128 ** -0.5)
    g = mk(*o.shape)
    dq, dk, dv = be.backward(q, k, v, o, lse, g, mask, 128 ** -0.5)
    terms = [a.double() * b.double() for a, b in ((to, g), (tq, dq), (tk, dk), (tv, dv))]
    lhs, rhs = terms[0].sum(), sum(x.sum() for x in terms[1:])
    spread = sum(x.square().sum().sqrt() for x in terms)
    assert abs(lhs - rhs) <= 0.05 * spread, (lhs.item(), rhs.item(), spread.item())


@pytest.mark.parametrize("chunk", [1, 3], ids=["framewise", "chunkwise"])
def test_zero_tangent_hint_gives_the_same_jvp(chunk):
    """With tangents zero on the clean half of teacher forcing, the hinted mask (whose zero key
    tiles skip tk/tv loads and products on the sm_90a path) gives the unhinted result exactly:
    the skipped products would only have added exact zeros. Both are also within the rule."""
    pattern = FramePattern(130, 8, chunk)
    mask = masks.teacher_forcing(pattern)
    clean = (0, pattern.num_tokens)
    hinted = mask.with_zero_tangents(q_ranges=[clean], k_ranges=[clean])
    mk = lambda s, h: torch.randn(2, s, h, 128, device="cuda", dtype=torch.bfloat16)
    q, k, v = mk(mask.sq, 4), mk(mask.sk, 2), mk(mask.sk, 2)
    tq, tk, tv = (torch.randn_like(a) for a in (q, k, v))
    for t in (tq, tk, tv):
        t[:, : pattern.num_tokens] = 0
    be = get("cuda")
    o, to, lse = be.forward_jvp(q, k, v, tq, tk, tv, mask, 0.1)
    o_h, to_h, lse_h = be.forward_jvp(q, k, v, tq, tk, tv, hinted, 0.1)
    assert torch.equal(o, o_h) and torch.equal(to, to_h) and torch.equal(lse, lse_h)
    x64 = [a.double() for a in (q, k, v, tq, tk, tv)]
    o64, to64, _ = reference.forward_jvp(*x64, mask, scale=0.1)
    _, to_lp, _ = reference.forward_jvp(q, k, v, tq, tk, tv, mask, scale=0.1)
    assert_within_rule("to", to_h, to64, to_lp)


def _kernels_of(fn, *args):
    """fn(*args) and the names of the CUDA kernels it launched."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = fn(*args)
        torch.cuda.synchronize()
    return out, {e.name for e in prof.events() if e.device_type.name == "CUDA"}


@pytest.mark.parametrize("case", list(CASES))
def test_hopper_runs_the_warp_specialised_forward(case):
    """On Hopper the forward and JVP are the warp-specialised kernels (TMA loads, ping-pong
    warpgroups) whenever the TMA unit can describe the operands, as here; within the rule."""
    mask, x, t, _ = _inputs(case, torch.bfloat16)
    be, scale = get("cuda"), x[0].shape[-1] ** -0.5
    o64, to64, lse64 = reference.forward_jvp(*(a.double() for a in (*x, *t)), mask)
    o_lp, to_lp, lse_lp = reference.forward_jvp(*x, *t, mask)
    hopper = cuda_kernel_choice.device_family(x[0].device.index) == "sm90a"
    (o, lse), kernels = _kernels_of(be.forward, *x, mask, scale)
    (o_j, to, lse_j), jvp_kernels = _kernels_of(be.forward_jvp, *x, *t, mask, scale)
    ran_warp_specialised = [any("kernel_sm90_warp_specialised" in n for n in names)
                            for names in (kernels, jvp_kernels)]
    assert ran_warp_specialised == [hopper] * 2, sorted(kernels | jvp_kernels)
    for name, got, ref, lp in (("o", o, o64, o_lp), ("lse", lse, lse64, lse_lp), ("o (jvp)", o_j, o64, o_lp),
                               ("to", to, to64, to_lp), ("lse (jvp)", lse_j, lse64, lse_lp)):
        assert_within_rule(name, got, ref, lp)


@pytest.mark.parametrize("case", list(CASES))
def test_both_backward_forms_within_rule(case):
    """Both backward forms within the rule on every mask family. The fused kernel runs where built
    (its dQ conversion pass shows in the profile), adding dQ in key-tile order when the call is
    deterministic; the deterministic form is bitwise equal from run to run."""
    mask, x, _, do = _inputs(case, torch.bfloat16)
    be, scale = get("cuda"), x[0].shape[-1] ** -0.5
    x64 = [a.double() for a in x]
    o64, lse64 = reference.forward(*x64, mask)
    o_lp, lse_lp = reference.forward(*x, mask)
    grads64 = reference.backward(*x64, o64, lse64, do.double(), mask)
    grads_lp = reference.backward(*x, o_lp, lse_lp.float(), do, mask)
    o, lse = be.forward(*x, mask, scale)
    built = cuda_kernel_choice.device_kernels(x[0].device.index, x[0].shape[-1], x[2].shape[-1]).bwd_fused is not None
    runs = []
    for deterministic in (False, True, True):
        grads, kernels = _kernels_of(be.backward, *x, o, lse, do, mask, scale, deterministic)
        ran_fused = any("dq_convert" in k for k in kernels)
        assert ran_fused == built, (deterministic, sorted(kernels))
        # on Hopper the fused form is the warp-specialised kernel (the TMA unit describes these inputs)
        ran_warp_specialised = any("bwd_kernel_sm90_warp_specialised" in k for k in kernels)
        assert ran_warp_specialised == ran_fused, (deterministic, sorted(kernels))
        for name, got, ref, lp in zip(("dq", "dk", "dv"), grads, grads64, grads_lp):
            assert_within_rule(f"{name} ({'fused' if ran_fused else 'two-kernel'})", got, ref, lp)
        runs.append(grads)
    assert all(torch.equal(a, b) for a, b in zip(runs[1], runs[2]))


def test_backward_form_follows_deterministic():
    built = cuda_kernel_choice.device_kernels(0, 128, 128).bwd_fused is not None
    assert cuda_kernel_choice.choose_backward(0, False, 128, 128).backward_form == ("fused" if built else "two-kernel")
    assert cuda_kernel_choice.choose_backward(0, True, 128, 128).backward_form == ("fused-ordered" if built else "two-kernel")


def check_backward_forms(mask, d, seed):
    """Three deterministic backwards and one fast one of the same random inputs (GQA: four query
    heads on two kv heads): all within the rule against the float64 reference, and the three
    deterministic ones the same bits."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda s, h: torch.randn(1, s, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v, do = mk(mask.sq, 4), mk(mask.sk, 2), mk(mask.sk, 2), mk(mask.sq, 4)
    be, scale = get("cuda"), d ** -0.5
    o, lse = be.forward(q, k, v, mask, scale)
    o64, lse64 = reference.forward(q.double(), k.double(), v.double(), mask, scale)
    o_lp, lse_lp = reference.forward(q, k, v, mask, scale)
    ref = reference.backward(q.double(), k.double(), v.double(), o64, lse64, do.double(), mask, scale)
    ref_lp = reference.backward(q, k, v, o_lp, lse_lp.float(), do, mask, scale)
    runs = [be.backward(q, k, v, o, lse, do, mask, scale, deterministic=det) for det in (True, True, True, False)]
    for grads in runs:
        for name, got, r, lp in zip(("dq", "dk", "dv"), grads, ref, ref_lp):
            assert_within_rule(name, got, r, lp)
    assert all(torch.equal(a, b) for other in runs[1:3] for a, b in zip(runs[0], other))


@pytest.mark.parametrize("d", [64, 128])
def test_deterministic_backward_is_bitwise_repeatable_on_long_walks(d):
    """Where the fast form's sums do come out in different orders: many key tiles per query tile
    (a block-causal mask of 8,190 tokens: up to 64 key tiles add into a dQ tile), GQA (two query
    heads per kv head) and both head dims. The deterministic form gives the same bits in three
    runs, within the rule; the fast form is within the rule too (its bits may differ)."""
    check_backward_forms(masks.block_causal(FramePattern(390, 21, 3)), d, seed=7)


@pytest.mark.parametrize("d", [64, 128])
def test_deterministic_backward_with_dq_groups(d, monkeypatch):
    """A KV-cache step whose every query tile is visited by 171 key tiles (390 queries against
    21,840 keys, GQA): the ordered backward splits the key tiles into two dQ groups (each its own
    buffer, semaphores and turns; the conversion pass sums them in order). Within the rule, and
    the same bits in three runs."""
    mask = masks.kv_cache(FramePattern(130, 168, 3), query_chunk=55)
    chosen = []
    original = cuda_backend.dq_groups
    monkeypatch.setattr(cuda_backend, "dq_groups", lambda *a: chosen.append(original(*a)) or chosen[-1])
    check_backward_forms(mask, d, seed=11)
    if cuda_kernel_choice.choose_backward(0, True, d, d).backward_form == "fused-ordered":
        assert chosen == [2, 2, 2]
