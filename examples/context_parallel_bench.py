"""W1 (teacher forcing, 21 frames x 1560 tokens, H=12, D=128, bf16) on one GPU and split over
the ranks of ``torchrun`` with Ulysses context parallelism.

    torchrun --nproc_per_node 2 examples/context_parallel_bench.py --out results/cp

Every rank draws the same global inputs. First each rank times ``jfa.attention`` on the whole
sequence on its own GPU (the one-GPU rows, rank 0's times), then all ranks time
``context_parallel_attention`` on their shards together. Ops: fwd; bwd (the backward alone,
from a kept graph); jvp (``torch.func.jvp`` under no_grad: one fused forward+JVP); jvp_hinted (the
same with the clean half's tangents zero and promised zero by the mask); all_to_all (the
forward's two exchanges alone). Each time is the median of --reps iterations, each fenced by a
barrier and timed with CUDA events; a context-parallel time is the slowest rank's median.
Before timing, the split results are checked against the one-GPU results (the same kernel on
fewer heads). Writes OUT/context_parallel.csv and OUT/context_parallel.md.
With ``--device cpu`` it runs on gloo (use a small --frames/--tokens-per-frame).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import time

import torch
import torch.distributed as dist

import jvp_flash_attn as jfa
from jvp_flash_attn import masks
from jvp_flash_attn.distributed import _all_to_all, context_parallel_attention

FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "jvp": 3.0, "jvp_hinted": 3.0}  # docs/design/benchmarks.md, x forward FLOPs


def _timed(fn, reps, warmup, device, fence):
    """Median ms of ``fn`` over ``reps`` runs, each started together on every rank."""
    times = []
    for i in range(warmup + reps):
        fence()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn()
            ms = 1e3 * (time.perf_counter() - t0)
        if i >= warmup:
            times.append(ms)
    return statistics.median(times)


def _ops(attn, q, k, v, t, t_hinted, do, mask, mask_hinted):
    """name -> (callable to time, result to check). Inputs are leaves that require grad."""
    with torch.no_grad():
        _, to = torch.func.jvp(lambda *x: attn(*x, mask), (q, k, v), t)
        _, to_hinted = torch.func.jvp(lambda *x: attn(*x, mask_hinted), (q, k, v), t_hinted)
    o = attn(q, k, v, mask)
    grads = torch.autograd.grad(o, (q, k, v), do, retain_graph=True)

    def fwd():
        with torch.no_grad():
            attn(q, k, v, mask)

    def jvp(m, tangents):
        def run():
            with torch.no_grad():
                torch.func.jvp(lambda *x: attn(*x, m), (q, k, v), tangents)
        return run

    return {
        "fwd": (fwd, [o.detach()]),
        "bwd": (lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), list(grads)),
        "jvp": (jvp(mask, t), [to]),
        "jvp_hinted": (jvp(mask_hinted, t_hinted), [to_hinted]),
    }


def _shard(x, rank, p):
    n = x.shape[1] // p
    return x[:, rank * n:(rank + 1) * n]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for context_parallel.csv / .md")
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--tokens-per-frame", type=int, default=1560)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    local = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        torch.cuda.set_device(local)
        device, dtype = torch.device("cuda", local), torch.bfloat16
    else:
        device, dtype = torch.device("cpu"), torch.float32
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(minutes=10))
    rank, p = dist.get_rank(), dist.get_world_size()
    fence = dist.barrier if device.type == "cpu" else (lambda: dist.barrier(device_ids=[local]))

    pattern = masks.FramePattern(args.tokens_per_frame, args.frames)
    mask = masks.teacher_forcing(pattern)
    clean = (0, pattern.num_tokens)
    mask_hinted = mask.with_zero_tangents(q_ranges=[clean], k_ranges=[clean])
    g = torch.Generator(device=device).manual_seed(0)
    mk = lambda: torch.randn(1, mask.sq, args.heads, args.head_dim, generator=g, device=device, dtype=dtype)  # noqa: E731
    x, t, do = [mk() for _ in range(3)], tuple(mk() for _ in range(3)), mk()
    t_hinted = tuple(a.clone() for a in t)
    for a in t_hinted:
        a[:, : pattern.num_tokens] = 0  # the clean half's tangents are zero, as promised

    def single(q, k, v, m):
        return jfa.attention(q, k, v, mask=m, backend=args.backend)

    def split(q, k, v, m):
        return context_parallel_attention(q, k, v, m, backend=args.backend)

    leaves = [a.clone().requires_grad_() for a in x]
    one = _ops(single, *leaves, t, t_hinted, do, mask, mask_hinted)
    sh = lambda a: _shard(a, rank, p).contiguous()  # noqa: E731
    shards = [sh(a).requires_grad_() for a in x]
    many = _ops(split, *shards, tuple(sh(a) for a in t), tuple(sh(a) for a in t_hinted), sh(do), mask, mask_hinted)

    errors = {}
    for op, (_, want) in one.items():
        got = many[op][1]
        want = [sh(w) for w in want]
        # (a shard of the clean half's tangent is all zero under the hint: no 0 / 0)
        errors[op] = max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()
                         for a, b in zip(got, want))
    bad = {op: e for op, e in errors.items() if not e <= 1e-2}
    if bad:
        raise SystemExit(f"rank {rank}: context-parallel results differ from one GPU's: {bad}")

    def exchanges():  # the forward's two all-to-alls: q, k, v to heads, one back
        with torch.no_grad():
            _all_to_all([_all_to_all(shards, True, None)[0]], False, None)

    rows, pairs = [], mask.num_pairs * args.heads
    unit = "GPU" if device.type == "cuda" else "process"
    for op in one:
        ms1 = _timed(one[op][0], args.reps, args.warmup, device, lambda: None)
        msp = torch.tensor(_timed(many[op][0], args.reps, args.warmup, device, fence), device=device)
        dist.all_reduce(msp, op=dist.ReduceOp.MAX)
        flops = FLOP_FACTOR[op] * 2 * pairs * 2 * args.head_dim
        for setup, ms in ((f"1 {unit}", ms1), (f"{p} {unit}s, Ulysses", msp.item())):
            rows.append(dict(op=op, setup=setup, ms=round(ms, 3), tflops=round(flops / ms / 1e9, 1),
                             speedup=round(ms1 / ms, 2), rel_err_vs_1gpu=f"{errors[op]:.1e}"))
    ms = torch.tensor(_timed(exchanges, args.reps, args.warmup, device, fence), device=device)
    dist.all_reduce(ms, op=dist.ReduceOp.MAX)
    rows.append(dict(op="all_to_all", setup=f"{p} {unit}s, Ulysses", ms=round(ms.item(), 3), tflops="",
                     speedup="", rel_err_vs_1gpu=""))

    if rank == 0:
        _write(args, rows, device, p, mask)
    dist.destroy_process_group()


def _write(args, rows, device, p, mask):
    os.makedirs(args.out, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    meta = dict(workload=f"teacher_forcing {args.frames}x{args.tokens_per_frame}, S={mask.sq}, "
                         f"H={args.heads}, D={args.head_dim}", gpus=p, device=name, torch=torch.__version__,
                date=datetime.date.today().isoformat())
    with open(os.path.join(args.out, "context_parallel.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) + list(meta))
        w.writeheader()
        w.writerows(dict(r, **meta) for r in rows)
    lines = [f"# Ulysses context parallelism: {meta['workload']}", "",
             f"{name} x {p}, torch {torch.__version__}, {meta['date']}; ms = median, TFLOP/s on exact pairs "
             f"(all GPUs together), speedup against one GPU.", "",
             "| op | setup | ms | TFLOP/s | speedup | rel. error vs 1 GPU |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['setup']} | {r['ms']} | {r['tflops']} | {r['speedup']} | {r['rel_err_vs_1gpu']} |"
              for r in rows]
    with open(os.path.join(args.out, "context_parallel.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
