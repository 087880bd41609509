"""The Triton backend from several threads at once, and its visit-order cache's bound.

Under TRITON_INTERPRET=1 the interpreter patches triton.language while a kernel runs, so
concurrent launches must be serialised; on a GPU the same test checks plain concurrency.
"""
import gc
import os
import threading

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import jvp_flash_attn as jfa  # noqa: E402
from conftest import assert_within_rule, naive_attention  # noqa: E402
from jvp_flash_attn import masks  # noqa: E402
from jvp_flash_attn.masks import FramePattern, SegmentMask  # noqa: E402

_REASON = jfa.backends()["triton"]
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"triton backend: {_REASON}")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poisoned_outputs():
    from jvp_flash_attn.triton.launch_setup import poison_outputs

    poison_outputs(True)
    yield
    poison_outputs(False)


def test_concurrent_calls_match_the_reference():
    """Threads run forward, fused JVP and backward on different masks at the same time."""
    cases = [masks.block_causal(FramePattern(5, 7, 2), window=2, sink=1),
             masks.teacher_forcing(FramePattern(4, 5)),
             masks.from_segments([9, 14], [11, 12], [[2, 0], [1, 2]]),
             masks.full(19, 23)]
    results, errors = {}, []
    start = threading.Barrier(len(cases))

    def work(i, mask):
        try:
            g = torch.Generator(device=DEVICE).manual_seed(i)
            mk = lambda s: torch.randn(1, s, 2, 16, generator=g, device=DEVICE, dtype=torch.float32)
            q, k, v = mk(mask.sq), mk(mask.sk), mk(mask.sk)
            tq, tk, tv = mk(mask.sq), mk(mask.sk), mk(mask.sk)
            start.wait()
            o, to = jfa.attention_jvp(q, k, v, tq, tk, tv, mask=mask, backend="triton")
            x = [a.clone().requires_grad_() for a in (q, k, v)]
            do = torch.randn_like(o)
            grads = torch.autograd.grad(jfa.attention(*x, mask=mask, backend="triton"), x, do)
            results[i] = (q, k, v, tq, tk, tv, do, mask, o, to, grads)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, m)) for i, m in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert len(results) == len(cases)
    for q, k, v, tq, tk, tv, do, mask, o, to, grads in results.values():
        refs = [_naive(mask, [a.to(dtype) for a in (q, k, v, tq, tk, tv, do)])
                for dtype in (torch.float64, torch.float32)]
        for name, out, ref64, ref32 in zip(("o", "to", "dq", "dk", "dv"), (o, to, *grads), *refs):
            assert_within_rule(name, out, ref64, ref32)


def _naive(mask, x):
    """(o, to, dq, dk, dv) of the dense oracle in x's dtype."""
    q, k, v, tq, tk, tv, do = x
    allowed = mask.dense(DEVICE)
    primals = [a.clone().requires_grad_() for a in (q, k, v)]
    o, to = torch.func.jvp(lambda *a: naive_attention(*a, allowed)[0], (q, k, v), (tq, tk, tv))
    return (o, to, *torch.autograd.grad(naive_attention(*primals, allowed)[0], primals, do))


def test_visit_order_cache_is_bounded_and_shared_by_equal_masks():
    from jvp_flash_attn.triton import launch_setup

    live = [SegmentMask((6, 6), (12,), ((1,), (2,)), zero_tangent_k=[(0, n)]) for n in range(13)]
    live += [masks.full(n, 12) for n in range(1, 150)]
    for mask in live:
        launch_setup.visit_order(mask.tiles(4, 4, DEVICE), "q")
    assert len(launch_setup._ORDERS) <= 64   # VISIT_ORDER_CACHE_SIZE, however many masks live
    # an equal mask made after the first is gone (so with a new description) finds its entry
    order = launch_setup.visit_order(SegmentMask((5, 7), (12,), ((2,), (1,))).tiles(4, 4, DEVICE), "k")
    gc.collect()
    assert launch_setup.visit_order(SegmentMask((5, 7), (12,), ((2,), (1,))).tiles(4, 4, DEVICE), "k") is order
