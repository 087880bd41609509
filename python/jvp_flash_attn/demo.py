"""The main job: build video masks, run attention and its JVP, check them, print timings.

python -m jvp_flash_attn.demo            # defaults sized for the hardware present
python -m jvp_flash_attn.demo --frames 21 --tokens-per-frame 1560 --dtype bf16
"""
from __future__ import annotations

import argparse
import time

import torch

import jvp_flash_attn as jfa
from jvp_flash_attn import masks, reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def _timed(fn, device, repeats=3):
    """Median wall time of fn() in ms (synchronising around it on a GPU), and its last result."""
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2], out


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main(argv=None):
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(prog="python -m jvp_flash_attn.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens-per-frame", type=int, default=390 if gpu else 24)
    ap.add_argument("--frames", type=int, default=21 if gpu else 6)
    ap.add_argument("--frames-per-chunk", type=int, default=3)
    ap.add_argument("--heads", type=int, default=12 if gpu else 2)
    ap.add_argument("--dim", type=int, default=128 if gpu else 32)
    ap.add_argument("--dtype", choices=DTYPES, default="bf16" if gpu else "fp32")
    ap.add_argument("--backend", default=None, help="cuda, triton, reference (default: automatic)")
    ap.add_argument("--check-rows", type=int, default=256, help="query rows checked against float64")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if gpu else "cpu")
    dtype = DTYPES[args.dtype]

    from jvp_flash_attn.__main__ import report
    print(report())
    pattern = masks.FramePattern(args.tokens_per_frame, args.frames, args.frames_per_chunk)
    fresh = lambda: masks.builders._teacher_forcing.__wrapped__(pattern, None, 0)  # bypass the cache
    t_mask, mask = _timed(fresh, device)
    t_tiles, tiles = _timed(lambda: fresh().tiles(128, 128), device)
    print(f"\nteacher-forcing mask, {args.frames} frames x {args.tokens_per_frame} tokens, "
          f"{args.frames_per_chunk} frames/chunk: S = {mask.sq}, {mask.num_pairs / mask.sq ** 2:.1%} dense")
    print(f"  mask built in {t_mask:.2f} ms, mask + 128x128 tile description in {t_tiles:.2f} ms "
          f"({tiles.num_full} full, {tiles.num_partial} partial tiles of {tiles.state.size})")

    g = torch.Generator(device=device).manual_seed(0)
    shape = (1, mask.sq, args.heads, args.dim)
    q, k, v, tq, tk, tv = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(6))
    tq[:, : pattern.num_tokens].zero_()  # clean context carries no tangent in sCM
    tk[:, : pattern.num_tokens].zero_()
    tv[:, : pattern.num_tokens].zero_()
    f = lambda q, k, v: jfa.attention(q, k, v, mask=mask, backend=args.backend)
    t_fwd, o = _timed(lambda: f(q, k, v), device)
    t_jvp, (o_j, to) = _timed(lambda: torch.func.jvp(f, (q, k, v), (tq, tk, tv)), device)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    do = torch.randn_like(o)
    t_bwd, grads = _timed(lambda: torch.autograd.grad(f(*leaves), leaves, do), device)
    flop = lambda *ops: sum(reference.flops(mask, 1, args.heads, args.dim, args.dim, op) for op in ops)
    print(f"\nattention ({args.dtype}, H={args.heads}, D={args.dim}) on {device.type}, "
          f"backend {args.backend or 'automatic'}:")
    for name, ms, ops in (("forward", t_fwd, ("fwd",)), ("forward + backward", t_bwd, ("fwd", "bwd")),
                          ("torch.func.jvp (fused)", t_jvp, ("jvp",))):
        rate = flop(*ops) / ms / 1e9  # TFLOP/s
        shown = f"{rate:8.1f} TFLOP/s" if rate >= 1 else f"{rate * 1e3:8.2f} GFLOP/s"
        print(f"  {name:24s} {ms:9.2f} ms   {shown} (exact pairs)")

    # Check a slice of query rows against autograd of the plain float64 reference.
    r0 = max(0, mask.sq - args.check_rows)
    rows = mask.dense_rows(r0, mask.sq, device)
    x64 = [x.double() for x in (q, k, v)]
    t64 = [x.double() for x in (tq, tk, tv)]

    def ref_rows(q_, k_, v_):
        s = torch.einsum("bqhd,bkhd->bhqk", q_[:, r0:], k_) * args.dim ** -0.5
        p = torch.softmax(s.masked_fill(~rows, float("-inf")), dim=-1)
        return torch.einsum("bhqk,bkhd->bqhd", p, v_)

    o_ref, to_ref = torch.func.jvp(ref_rows, tuple(x64), tuple(t64))
    print(f"\ncheck of the last {mask.sq - r0} query rows against float64 autograd:")
    print(f"  o   rel err {_rel(o[:, r0:], o_ref):.2e}   (fused jvp's o: {_rel(o_j[:, r0:], o_ref):.2e})")
    print(f"  to  rel err {_rel(to[:, r0:], to_ref):.2e}")
    tol = 1e-6 if dtype == torch.float64 else (1e-4 if dtype == torch.float32 else 2e-2)
    ok = max(_rel(o[:, r0:], o_ref), _rel(to[:, r0:], to_ref)) < tol
    print(f"  {'OK' if ok else 'FAILED'} (relative error budget {tol:g} for {args.dtype})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
