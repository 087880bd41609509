"""Per-kernel GPU time of one attention op on one benchmark workload, for each backend.

    python bench/profile_kernels.py W3 bwd                 # cuda and triton, 5 profiled calls
    python bench/profile_kernels.py W1 fwd --backends cuda
    python bench/profile_kernels.py W3 bwd --backends cuda,flex-flash   # against FlashAttention-4
    python bench/profile_kernels.py W1 jvp --backends cuda              # the fused forward+JVP (no peer has one)
    python bench/profile_kernels.py W1 jvp_hinted --backends cuda       # with the zero-tangent hint

The suite (bench.run) times whole ops; this splits an op into its kernels (the backward's
preprocess, dK/dV and dQ kernels), which is where an optimisation's prediction can be checked.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):   # run as a script: the repository root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench  # noqa: F401,E402  (makes jvp_flash_attn importable from a checkout)
import jvp_flash_attn as jfa  # noqa: E402
from bench.workloads import select  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("op", choices=("fwd", "bwd", "jvp", "jvp_hinted"))
    ap.add_argument("--backends", default="cuda,triton")
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args(argv)
    (w,) = select(args.workload)
    if args.op.startswith("jvp") and set(args.backends.split(",")) & {"flex", "flex-flash"}:
        ap.error("FlexAttention has no JVP: profile jvp with the cuda or triton backend")
    mask = w.mask()
    hint = w.zero_tangent_ranges(mask) if args.op == "jvp_hinted" else None
    if args.op == "jvp_hinted" and hint is None:
        ap.error(f"{w.id} has no zero-tangent half: jvp_hinted is for the teacher-forcing workloads")
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(s, d):
        return torch.randn(w.batch, s, w.heads, d, device="cuda", dtype=w.dtype, generator=g)

    q, k, v = rnd(mask.sq, w.d_qk), rnd(mask.sk, w.d_qk), rnd(mask.sk, w.d_v)
    do = rnd(mask.sq, w.d_v)
    tangents = (rnd(mask.sq, w.d_qk), rnd(mask.sk, w.d_qk), rnd(mask.sk, w.d_v))
    if hint is not None:   # the promised zeros, and the mask that carries the promise (as bench.run)
        for t, ranges in zip(tangents, (hint[0], hint[1], hint[1])):
            for a, b in ranges:
                t[:, a:b] = 0
        mask = mask.with_zero_tangents(*hint)
    for backend in args.backends.split(","):
        q_, k_, v_ = (t.clone().requires_grad_(args.op == "bwd") for t in (q, k, v))
        attend = peer(backend, mask, w.recipe()) if backend in ("flex", "flex-flash") else (
            lambda q, k, v, backend=backend: jfa.attention(q, k, v, mask=mask, backend=backend))

        def call():
            if args.op.startswith("jvp"):
                return jfa.attention_jvp(q_, k_, v_, *tangents, mask=mask, backend=backend)
            o = attend(q_, k_, v_)
            if args.op == "bwd":
                torch.autograd.grad(o, (q_, k_, v_), do)

        for _ in range(2):
            call()
        torch.cuda.synchronize()
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.calls):
                call()
            torch.cuda.synchronize()
        rows = [(e.key, e.self_device_time_total / args.calls / 1e3) for e in prof.key_averages()
                if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA]
        rows.sort(key=lambda r: -r[1])
        print(f"== {w.id} {args.op} {backend}: ms per call, by kernel")
        for name, ms in rows[:8]:
            print(f"{ms:9.3f}  {name[:110]}")
    return 0


def peer(name, mask, recipe):
    """FlexAttention on the mask's BlockMask with the user-written mask_mod, on its Triton
    kernels (flex) or on FlashAttention-4's (flex-flash), as the benchmark's providers run it."""
    from bench import flex
    block_mask = flex.block_mask_for(mask, "cuda", mask_mod=flex.mask_mod_for(mask, "cuda", recipe))
    options = flex.FLASH_OPTIONS if name == "flex-flash" else None

    def attend(q, k, v):
        o = flex.flex_bhsd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask,
                           kernel_options=options)
        return o.transpose(1, 2)
    return attend


if __name__ == "__main__":
    sys.exit(main())
