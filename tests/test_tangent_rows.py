"""The zero-tangent hint's query side (jvp_flash_attn/tangent_rows.py): which rows are
tangent-free, and that running the forward on them gives the fused JVP's result on every backend
(the float64 oracle's rule, exact zeros in `to` where the promise holds, NaN where the oracle's is)."""
import gc

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from hypothesis import given
from hypothesis import strategies as st

import jvp_flash_attn as jfa
from conftest import assert_within_rule
from jvp_flash_attn import masks, ops, reference
from jvp_flash_attn.backends import get
from jvp_flash_attn.masks import FramePattern
from jvp_flash_attn.tangent_rows import row_runs, tangent_free_segments

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [name for name, reason in jfa.backends().items() if reason is None]
P = FramePattern(tokens_per_frame=13, num_frames=4, frames_per_chunk=2)   # awkward sizes
CLEAN = (0, P.num_tokens)


def test_teacher_forcing_clean_rows_are_tangent_free_only_with_both_promises():
    tf = masks.teacher_forcing(P)
    n_clean = sum(s for s, start in zip(tf.q_sizes, tf._q_starts) if start < P.num_tokens)
    free = tangent_free_segments(tf.with_zero_tangents([CLEAN], [CLEAN]))
    assert free.sum() > 0 and sum(s for s, f in zip(tf.q_sizes, free) if f) == n_clean == P.num_tokens
    # the query promise alone is not enough: a clean row's keys may carry tangents
    assert not tangent_free_segments(tf.with_zero_tangents([CLEAN], [])).any()
    assert not tangent_free_segments(tf.with_zero_tangents([], [CLEAN])).any()
    assert row_runs(tf) is None and row_runs(tf.with_zero_tangents([CLEAN], [])) is None


def test_rows_that_see_an_unpromised_key_are_not_tangent_free():
    bc = masks.block_causal(FramePattern(13, 4))   # frame f sees frames 0..f
    two = (0, 26)
    # frames 0 and 1 promised, keys of frames 0 and 1 promised: both frames are free
    assert tangent_free_segments(bc.with_zero_tangents([two], [two])).tolist()[:2] == [True, True]
    # keys of frame 0 only: frame 1 sees frame 1's keys, which carry tangents
    free = tangent_free_segments(bc.with_zero_tangents([two], [(0, 13)]))
    assert free[0] and not free[1:].any()
    # a range that covers part of a segment promises nothing for the segment
    assert not tangent_free_segments(bc.with_zero_tangents([(0, 12)], [(0, 13)])).any()
    # ranges may be given in pieces and overlap
    assert tangent_free_segments(bc.with_zero_tangents([(0, 5), (3, 13)], [(0, 7), (7, 13)]))[0]


def test_runs_split_the_rows_in_order_and_are_cached():
    bc = masks.block_causal(FramePattern(13, 4))
    hinted = bc.with_zero_tangents([(0, 13), (26, 39)], [(0, 13)])   # frame 2 sees frames 1, 2: not free
    runs = row_runs(hinted)
    assert [(a, b, free) for a, b, free, _ in runs] == [(0, 13, True), (13, 52, False)]
    assert runs is row_runs(hinted)
    first, rest = runs[0][3], runs[1][3]
    assert (first.sq, first.sk, rest.sq, rest.sk) == (13, 52, 39, 52)
    assert first.num_pairs + rest.num_pairs == hinted.num_pairs
    assert rest.zero_tangent_q == ((13, 26),) and rest.zero_tangent_k == ((0, 13),)   # in the run's rows


def _hinted_inputs(mask, hinted_rows, dtype, seed, hq=4, hk=2, d=64):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    mk = lambda s, h: torch.randn(2, s, h, d, generator=g, device=DEVICE, dtype=torch.float64)
    x = [mk(mask.sq, hq), mk(mask.sk, hk), mk(mask.sk, hk)]
    t = [torch.randn(a.shape, generator=g, device=DEVICE, dtype=torch.float64) for a in x]
    for a, b in hinted_rows:
        for u in t:
            u[:, a:b] = 0
    return [a.to(dtype) for a in x], [u.to(dtype) for u in t]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["teacher_forcing", "block_causal_middle"])
def test_forward_on_tangent_free_rows_gives_the_jvp(backend, case, monkeypatch):
    """Through jfa.attention_jvp (the custom op that splits the rows): the forward runs on the
    tangent-free rows, the result is within the rule against the float64 oracle, and `to` is
    exactly zero on those rows, for runs at the start and in the middle of the rows."""
    if case == "teacher_forcing":
        mask, hint = masks.teacher_forcing(P), ([CLEAN], [CLEAN])
        free_rows = [CLEAN]
    else:   # window 1: each frame sees only itself, so frame 2 is free once its own keys are promised
        mask = masks.block_causal(FramePattern(13, 5), 1)
        hint = ([(26, 39)], [(13, 39)])
        free_rows = [(26, 39)]
    hinted = mask.with_zero_tangents(*hint)
    assert [(a, b) for a, b, free, _ in row_runs(hinted) if free] == free_rows
    dtype = torch.float32 if backend == "reference" else torch.bfloat16
    seed = torch.seed() % 2 ** 31
    x, t = _hinted_inputs(mask, hint[1] + hint[0], dtype, seed)
    if get(backend).unsupported(*x):
        pytest.skip(get(backend).unsupported(*x))
    forward_rows = []
    forward = type(get(backend)).forward   # patched on the class: an instance attribute would outlive the test
    monkeypatch.setattr(type(get(backend)), "forward",
                        lambda self, q, *a: forward_rows.append(q.shape[1]) or forward(self, q, *a))
    o, to, lse = ops.attention_jvp(*x, *t, hinted.uid, x[0].shape[-1] ** -0.5, backend)
    assert forward_rows == [b - a for a, b in free_rows]
    x64, t64 = [a.double() for a in x], [u.double() for u in t]
    o64, to64, lse64 = reference.forward_jvp(*x64, *t64, mask)
    o_lp, to_lp, lse_lp = reference.forward_jvp(*x, *t, mask)
    assert_within_rule(f"o (seed {seed})", o, o64, o_lp)
    assert_within_rule(f"to (seed {seed})", to, to64, to_lp)
    assert_within_rule(f"lse (seed {seed})", lse, lse64, lse_lp)
    for a, b in free_rows:
        assert torch.equal(to[:, a:b], torch.zeros_like(to[:, a:b]))


def test_tangent_free_rows_follow_the_oracle_on_non_finite_values():
    """0 * (v - o) is NaN where v is infinite: the forward's rows give NaN there too, not 0. (The
    one stated difference, an infinite key whose score is -inf, is not this case.)"""
    mask = masks.teacher_forcing(P)
    hinted = mask.with_zero_tangents([CLEAN], [CLEAN])
    x, t = _hinted_inputs(mask, [CLEAN], torch.float64, 7)
    x[2][:, 3, 0, 5] = float("inf")   # a clean key's value: every row that sees key 3
    _, to = jfa.attention_jvp(*x, *t, mask=hinted, backend="reference")
    _, to64, _ = reference.forward_jvp(*x, *t, mask)
    assert torch.equal(torch.isnan(to), torch.isnan(to64)) and torch.isnan(to[:, 3:P.num_tokens]).any()
    finite = ~torch.isnan(to64)
    torch.testing.assert_close(to[finite], to64[finite], rtol=1e-12, atol=1e-12)


def test_under_forward_ad_and_func_jvp():
    mask = masks.teacher_forcing(P)
    hinted = mask.with_zero_tangents([CLEAN], [CLEAN])
    x, t = _hinted_inputs(mask, [CLEAN], torch.float64, 11)
    f = lambda m: (lambda *a: jfa.attention(*a, mask=m, backend="reference"))
    o_h, to_h = torch.func.jvp(f(hinted), tuple(x), tuple(t))
    o, to = torch.func.jvp(f(mask), tuple(x), tuple(t))
    torch.testing.assert_close(o_h, o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(to_h, to, rtol=1e-12, atol=1e-12)


def test_backward_after_a_hinted_forward_ad_call():
    """Forward AD saves the joined o and lse for backward(): the gradients equal the unhinted ones."""
    mask = masks.teacher_forcing(P)
    hinted = mask.with_zero_tangents([CLEAN], [CLEAN])
    x, t = _hinted_inputs(mask, [CLEAN], torch.float64, 13)
    do = torch.randn(x[0].shape[:3] + (x[2].shape[-1],), dtype=torch.float64, device=DEVICE)
    grads = []
    for m in (hinted, mask):
        leaves = [a.clone().requires_grad_() for a in x]
        with fwAD.dual_level():
            o = jfa.attention(*(fwAD.make_dual(a, u) for a, u in zip(leaves, t)), mask=m, backend="reference")
            o = fwAD.unpack_dual(o).primal
        torch.autograd.backward(o, do)
        grads.append([a.grad for a in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_runs_are_cached_with_the_mask_and_freed_with_it():
    hinted = masks.teacher_forcing(P).with_zero_tangents([CLEAN], [CLEAN])
    sub_uid = row_runs(hinted)[0][3].uid
    assert jfa.masks.segments.mask_by_uid(sub_uid) is row_runs(hinted)[0][3]
    del hinted
    gc.collect()
    with pytest.raises(LookupError):
        jfa.masks.segments.mask_by_uid(sub_uid)


def test_a_mask_with_the_wrong_number_of_rows_is_refused():
    hinted = masks.teacher_forcing(P).with_zero_tangents([CLEAN], [CLEAN])
    x, t = _hinted_inputs(masks.teacher_forcing(P), [CLEAN], torch.float64, 3)
    with pytest.raises(ValueError, match="rows"):
        ops.attention_jvp(*(a[:, :-1] if i in (0, 3) else a for i, a in enumerate(x + t)), hinted.uid, 0.1,
                          "reference")


@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5), data=st.data())
def test_split_equals_the_fused_jvp_on_random_grids_and_hints(sizes, data):
    """Any segment grid and any hint (ranges need not follow the segments): the joined result
    equals the unsplit fused JVP of the float64 reference, with GQA, B = 2 and Dv != Dqk."""
    k_sizes = data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=5))
    rule = data.draw(st.lists(st.lists(st.sampled_from([0, 1, 2]), min_size=len(k_sizes), max_size=len(k_sizes)),
                              min_size=len(sizes), max_size=len(sizes)))
    mask = masks.from_segments(sizes, k_sizes, rule)
    # every token promised half of the time, so that most draws have rows to split off
    some = lambda n: st.lists(st.tuples(st.integers(0, n), st.integers(0, n)).map(sorted).map(tuple), max_size=3)
    ranges = lambda n: data.draw(st.one_of(st.just([(0, n)]), some(n)))
    hinted = mask.with_zero_tangents(ranges(mask.sq), ranges(mask.sk))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31 - 1)))
    mk = lambda s, h, d: torch.randn(2, s, h, d, generator=g, dtype=torch.float64)
    x = [mk(mask.sq, 4, 8), mk(mask.sk, 2, 8), mk(mask.sk, 2, 4)]
    t = [mk(*a.shape[1:]) for a in x]
    for u, rs in zip(t, (hinted.zero_tangent_q, hinted.zero_tangent_k, hinted.zero_tangent_k)):
        for a, b in rs:
            u[:, a:b] = 0   # the promise holds
    got = ops.attention_jvp(*x, *t, hinted.uid, 0.3, "reference")
    want = reference.forward_jvp(*x, *t, mask, 0.3)
    for name, a, b in zip(("o", "to", "lse"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
