"""Ulysses context parallelism on 2 and 4 gloo processes against single-process attention.

Every rank draws the same global float64 inputs, runs context_parallel_attention on its shard
and compares its shard of the output, the tangent (torch.func.jvp and forward_ad) and the
gradients with jfa.attention on the whole sequence (reference backend). Failures inside a
rank surface here with the rank's traceback.
"""
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.distributed as dist
import torch.multiprocessing as mp

import jvp_flash_attn as jfa
from jvp_flash_attn import masks
from jvp_flash_attn.distributed import context_parallel_attention

P = masks.FramePattern(tokens_per_frame=5, num_frames=4, frames_per_chunk=2)
KV = masks.FramePattern(tokens_per_frame=4, num_frames=6, frames_per_chunk=2)
CASES = {  # id -> (mask, Hq, Hk, Dqk, Dv); sequence lengths divide by 4
    "tf-S40-H8/4-D8x6": (masks.teacher_forcing(P), 8, 4, 8, 6),
    "bc-S20-H4-D8-window1-sink1": (masks.block_causal(P, window=1, sink=1), 4, 4, 8, 8),
    "kv_cache-S8x24-H4-D8": (masks.kv_cache(KV, 2), 4, 4, 8, 8),
}


def _draw(mask, hq, hk, d, dv, seed):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x = (mk(2, mask.sq, hq, d), mk(2, mask.sk, hk, d), mk(2, mask.sk, hk, dv))
    return x, tuple(mk(*a.shape) for a in x), mk(2, mask.sq, hq, dv)


def _shard(x, rank, p):
    n = x.shape[1] // p
    return x[:, rank * n:(rank + 1) * n].clone()


def _close(name, got, want):
    err = ((got - want).norm() / want.norm()).item()
    assert err < 1e-12, f"{name}: relative error {err:.2e}"


def _check_case(case, group, seed):
    mask, hq, hk, d, dv = CASES[case]
    rank, p = dist.get_rank(group), dist.get_world_size(group)
    x, t, do = _draw(mask, hq, hk, d, dv, seed)
    full = lambda q, k, v: jfa.attention(q, k, v, mask=mask, backend="reference")
    cp = lambda q, k, v: context_parallel_attention(q, k, v, mask, group=group, backend="reference")
    xl, tl, dol = [_shard(a, rank, p) for a in x], [_shard(a, rank, p) for a in t], _shard(do, rank, p)

    o_ref, to_ref = torch.func.jvp(full, x, t)
    leaves = [a.clone().requires_grad_() for a in x]
    full(*leaves).backward(do)
    grads_ref = [_shard(a.grad, rank, p) for a in leaves]

    _close(f"{case} o", cp(*xl), _shard(o_ref, rank, p))
    o, to = torch.func.jvp(cp, tuple(xl), tuple(tl))
    _close(f"{case} o under torch.func.jvp", o, _shard(o_ref, rank, p))
    _close(f"{case} to under torch.func.jvp", to, _shard(to_ref, rank, p))

    # forward_ad dual tensors on leaves that require grad: the primal stays differentiable
    leaves = [a.clone().requires_grad_() for a in xl]
    with fwAD.dual_level():
        o, to = fwAD.unpack_dual(cp(*[fwAD.make_dual(a, b) for a, b in zip(leaves, tl)]))
        _close(f"{case} to under forward_ad", to, _shard(to_ref, rank, p))
        o.backward(dol)
    for name, a, g in zip("qkv", leaves, grads_ref):
        _close(f"{case} d{name} after forward_ad", a.grad, g)

    leaves = [a.clone().requires_grad_() for a in xl]
    cp(*leaves).backward(dol)
    for name, a, g in zip("qkv", leaves, grads_ref):
        _close(f"{case} d{name}", a.grad, g)


def _check_one_collective_each_way(group, seed):
    """Under forward AD, q, k, v and their tangents travel in one all-to-all, o and its
    tangent in one more; backward() adds one for do and one for (dq, dk, dv)."""
    mask, hq, hk, d, dv = CASES["tf-S40-H8/4-D8x6"]
    rank, p = dist.get_rank(group), dist.get_world_size(group)
    x, t, do = _draw(mask, hq, hk, d, dv, seed)
    xl = [_shard(a, rank, p).requires_grad_() for a in x]
    tl = [_shard(a, rank, p) for a in t]
    calls, real = [], dist.all_to_all_single
    dist.all_to_all_single = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        o, _ = torch.func.jvp(lambda *y: context_parallel_attention(*y, mask, group=group), tuple(xl), tuple(tl))
        assert len(calls) == 2, f"{len(calls)} all-to-alls for the forward under forward AD"
        o.backward(_shard(do, rank, p))
        assert len(calls) == 4, f"{len(calls) - 2} all-to-alls for the backward"
    finally:
        dist.all_to_all_single = real


def _check_errors(group):
    p = dist.get_world_size(group)
    q = torch.randn(1, 3, p, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="equal shard"):
        context_parallel_attention(q, q, q, masks.full(3 * p + 1, 3 * p + 1), group=group)
    odd = torch.randn(1, 3, p + 1, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="q has .* heads, not a multiple of the group size"):
        context_parallel_attention(odd, q, q, group=group)
    with pytest.raises(ValueError, match="k has .* heads"):
        context_parallel_attention(q, odd, odd, group=group)


def _check_deterministic_reaches_backend(group):
    """deterministic= travels through the exchanges to the backend's backward, as in jfa.attention."""
    from jvp_flash_attn.backends import get
    cls = type(get("reference"))
    original, seen = cls.backward, []

    def spy(self, *a, deterministic=False):
        seen.append(deterministic)
        return original(self, *a, deterministic=deterministic)
    cls.backward = spy
    try:
        p = dist.get_world_size(group)
        x = [torch.randn(1, 2, p, 8, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        for deterministic in (True, False):
            context_parallel_attention(*x, group=group, backend="reference", deterministic=deterministic).sum().backward()
    finally:
        cls.backward = original
    assert seen == [True, False], seen


def _worker(rank, world, port, seed):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(minutes=10))
    try:
        groups = [dist.new_group([r]) for r in range(world)]  # P = 1: plain attention
        pairs = [dist.new_group([r, r + 1]) for r in range(0, world, 2)]
        for case in CASES:
            _check_case(case, None, seed)
        _check_case("tf-S40-H8/4-D8x6", groups[rank], seed)
        if world > 2:  # a subgroup of the world
            _check_case("tf-S40-H8/4-D8x6", pairs[rank // 2], seed)
        _check_one_collective_each_way(None, seed)
        _check_errors(None)
        _check_deterministic_reaches_backend(None)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 4])
def test_context_parallel_matches_single_process(world, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME", "lo"))  # loopback
    seed = torch.seed() % 2 ** 31
    print(f"seed {seed}")
    mp.spawn(_worker, args=(world, _free_port(), seed), nprocs=world, join=True)


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_compiled_forward_ad_through_the_exchanges(compiler):
    """torch.func.jvp inside torch.compile over one rank: the tangent crosses both exchanges as an
    output of the graph, equal to the one-process tangent (never dropped on the way)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mask = masks.teacher_forcing(masks.FramePattern(tokens_per_frame=3, num_frames=4))
        g = torch.Generator().manual_seed(3)
        x = [torch.randn(1, mask.sq, 2, 8, generator=g, dtype=torch.float64) for _ in range(6)]
        split = lambda *a: context_parallel_attention(*a, mask=mask, backend="reference")
        compiled = torch.compile(lambda *a: torch.func.jvp(split, a[:3], a[3:]), backend=compiler)
        o, to = compiled(*x)
        o1, to1 = torch.func.jvp(lambda *a: jfa.attention(*a, mask=mask, backend="reference"), tuple(x[:3]), tuple(x[3:]))
        torch.testing.assert_close(o, o1, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(to, to1, rtol=1e-12, atol=1e-12)
        assert to.abs().max() > 0
    finally:
        dist.destroy_process_group()
