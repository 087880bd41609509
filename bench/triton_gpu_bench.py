"""Triton backend vs FlexAttention on the DESIGN §6 workloads, one GPU.

Method: bf16, B=1, H=12, D=128 (W8: H=16, D=64), inputs drawn fresh from randn. Each
provider's output is checked against a reference before it is timed (Triton forward o vs
the float64 oracle on row slices; Flex vs Triton; backward grads Triton vs Flex).
Times are CUDA-event medians from triton.testing.do_bench (p20/p50/p80), after warm-up.
FLOPs count exact allowed pairs (DESIGN §6): fwd 2P(Dqk+Dv), bwd 2.5x, jvp 3x.
Peak memory is the allocator's peak during one call minus what was allocated before it.
FlexAttention gets the equivalent BlockMask built from the mask's 128x128 tile states
(full and partial block lists) with a mask_mod evaluating the segment rule per element.

    python bench/triton_gpu_bench.py --workloads W1,W2,W3,W4 --out results.csv
    python bench/triton_gpu_bench.py --sweep W3      # try launch configs on one workload
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess
import sys

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import jvp_flash_attn as jfa  # noqa: E402
from jvp_flash_attn import masks, reference  # noqa: E402
from jvp_flash_attn.backends import get  # noqa: E402
from jvp_flash_attn.masks import FramePattern  # noqa: E402
from jvp_flash_attn.triton._common import Config, set_config  # noqa: E402

FRAME, FRAMES = 1560, 21
WORKLOADS = {
    "W1": lambda: masks.teacher_forcing(FramePattern(FRAME, FRAMES)),
    "W2": lambda: masks.teacher_forcing(FramePattern(FRAME, FRAMES, 3)),
    "W3": lambda: masks.block_causal(FramePattern(FRAME, FRAMES)),
    "W4": lambda: masks.block_causal(FramePattern(FRAME, FRAMES, 3)),
    "W5": lambda: masks.block_causal(FramePattern(FRAME, 63, 3), window=3, sink=1),
    "W6": lambda: masks.full(FRAME * FRAMES, FRAME * FRAMES),
    "W7": lambda: masks.kv_cache(FramePattern(FRAME, FRAMES, 3), 6),
    "W8": lambda: masks.block_causal(FramePattern(FRAME, FRAMES)),
}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def flex_block_mask(mask):
    from torch.nn.attention.flex_attention import BlockMask

    desc = mask.tiles(128, 128, "cuda")
    st = torch.from_numpy(desc.state).cuda()

    def lists(sel):
        num = sel.sum(1).to(torch.int32)
        idx = torch.argsort((~sel).to(torch.int8), dim=1, stable=True).to(torch.int32)
        return num[None, None].contiguous(), idx[None, None].contiguous()

    part_num, part_idx = lists(st == 1)
    full_num, full_idx = lists(st == 2)
    q_seg, q_pos, k_seg, k_pos, rule = mask.token_maps("cuda")

    def mask_mod(b, h, qi, ki):
        r = rule[q_seg[qi], k_seg[ki]]
        return (r == 1) | ((r == 2) & (q_pos[qi] >= k_pos[ki]))

    return BlockMask.from_kv_blocks(part_num, part_idx, full_num, full_idx, BLOCK_SIZE=128,
                                    mask_mod=mask_mod, seq_lengths=(mask.sq, mask.sk))


def bench(fn):
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    p20, p50, p80 = do_bench(fn, warmup=50, rep=300, quantiles=[0.2, 0.5, 0.8])
    return p20, p50, p80, peak


def inputs(name, mask, seed=0):
    h, d = (16, 64) if name == "W8" else (12, 128)
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda s: torch.randn(1, s, h, d, generator=g, device="cuda", dtype=torch.bfloat16)
    return h, d, [mk(mask.sq), mk(mask.sk), mk(mask.sk)], [mk(mask.sq), mk(mask.sk), mk(mask.sk)], mk(mask.sq)


def check_forward_rows(mask, x, o, lse, scale):
    """Forward o and lse on three row slices against float64 (worst relative errors)."""
    worst_o = worst_lse = 0.0
    k64, v64 = (a.double().transpose(1, 2) for a in x[1:])
    for r0 in (0, mask.sq // 2 - 64, mask.sq - 128):
        q64 = x[0][:, r0:r0 + 128].double().transpose(1, 2)
        s = (q64 @ k64.transpose(-1, -2)) * scale
        s = s.masked_fill(~mask.dense_rows(r0, r0 + 128, "cuda"), float("-inf"))
        lse64 = torch.logsumexp(s, -1)
        o64 = (torch.softmax(s, -1) @ v64).transpose(1, 2)
        worst_o = max(worst_o, rel(o[:, r0:r0 + 128], o64))
        worst_lse = max(worst_lse, rel(lse[:, :, r0:r0 + 128], lse64))
        del s
    return worst_o, worst_lse


def run_workload(name, rows, flex, do_flex=True):
    mask = WORKLOADS[name]()
    be = get("triton")
    h, d, x, t, do = inputs(name, mask)
    scale = d ** -0.5
    out = {}
    o, lse = be.forward(*x, mask, scale)
    err_o, err_lse = check_forward_rows(mask, x, o, lse, scale)
    o_j, to, lse_j = be.forward_jvp(*x, *t, mask, scale)
    err_oj = rel(o_j, o)
    dq, dk, dv = be.backward(*x, o, lse, do, mask, scale)
    checks = {"fwd o vs fp64 rows (rel)": err_o, "fwd lse vs fp64 rows (rel)": err_lse,
              "jvp o vs fwd o (rel)": err_oj}
    fl = {op: reference.flops(mask, 1, h, d, d, op) for op in ("fwd", "bwd", "jvp")}
    out["fwd"] = bench(lambda: be.forward(*x, mask, scale))
    out["jvp"] = bench(lambda: be.forward_jvp(*x, *t, mask, scale))
    out["bwd"] = bench(lambda: be.backward(*x, o, lse, do, mask, scale))
    if do_flex:
        bm = flex_block_mask(mask)
        xh = [a.transpose(1, 2).contiguous().requires_grad_() for a in x]
        doh = do.transpose(1, 2).contiguous()
        with torch.no_grad():
            of = flex(*xh, block_mask=bm, scale=scale)
        checks["flex o vs triton o (rel)"] = rel(of.transpose(1, 2), o)
        out["flex_fwd"] = bench(lambda: flex(*xh, block_mask=bm, scale=scale))
        of = flex(*xh, block_mask=bm, scale=scale)
        gf = torch.autograd.grad(of, xh, doh, retain_graph=True)
        for n, a, b in zip(("dq", "dk", "dv"), (dq, dk, dv), gf):
            checks[f"{n} triton vs flex (rel)"] = rel(a, b.transpose(1, 2))
        out["flex_bwd"] = bench(lambda: torch.autograd.grad(of, xh, doh, retain_graph=True))
    print(name, " ".join(f"{k}={v:.2e}" for k, v in checks.items()), flush=True)
    for op, (p20, p50, p80, peak) in out.items():
        base = op.replace("flex_", "")
        rows.append(dict(op=base, provider="flex" if op.startswith("flex") else "triton",
                         workload=name, ms_p20=p20, ms_p50=p50, ms_p80=p80,
                         tflops=fl[base] / p50 * 1e-9, peak_extra_mib=peak / 2**20))
    return checks


def sweep(name, configs):
    mask = WORKLOADS[name]()
    be = get("triton")
    h, d, x, t, do = inputs(name, mask)
    scale = d ** -0.5
    o, lse = be.forward(*x, mask, scale)
    ref = {"fwd": o, "jvp": be.forward_jvp(*x, *t, mask, scale)[1]}
    ref_b = be.backward(*x, o, lse, do, mask, scale)
    for direction, cfgs in configs.items():
        op = "bwd" if direction.startswith("bwd") else direction
        f = reference.flops(mask, 1, h, d, d, op)
        for c in cfgs:
            set_config(direction, c)
            try:
                if op == "fwd":
                    fn = lambda: be.forward(*x, mask, scale)
                    err = rel(fn()[0], ref["fwd"])
                elif op == "jvp":
                    fn = lambda: be.forward_jvp(*x, *t, mask, scale)
                    err = rel(fn()[1], ref["jvp"])
                else:
                    fn = lambda: be.backward(*x, o, lse, do, mask, scale)
                    err = max(rel(a, b) for a, b in zip(fn(), ref_b))
                ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
                print(f"sweep {name} {direction} {c} {ms:.2f} ms {f / ms * 1e-9:.0f} TFLOP/s "
                      f"rel-vs-default {err:.1e}", flush=True)
            except Exception as e:  # a config that does not compile (shared memory) is reported
                print(f"sweep {name} {direction} {c} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        set_config(direction, None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="W1,W2,W3,W4")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--sweep", default="")
    ap.add_argument("--out", default="triton_bench.csv")
    args = ap.parse_args()
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    header = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                  cuda=torch.version.cuda, git=sha, date=datetime.date.today().isoformat())
    print(header, flush=True)
    if args.sweep:
        sweep(args.sweep, {
            "fwd": [Config(128, 64, 8, 3), Config(128, 128, 8, 2), Config(128, 64, 4, 3), Config(64, 64, 4, 3)],
            "jvp": [Config(128, 32, 8, 2), Config(128, 64, 8, 2), Config(64, 64, 4, 2), Config(64, 32, 4, 3)],
            "bwd_dkdv": [Config(32, 128, 8, 2), Config(64, 128, 8, 2), Config(32, 64, 4, 2), Config(16, 64, 4, 2)],
            "bwd_dq": [Config(128, 64, 8, 2), Config(128, 32, 8, 2), Config(64, 64, 4, 2)],
        })
        return
    from torch.nn.attention.flex_attention import flex_attention
    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    for name in args.workloads.split(","):
        try:
            run_workload(name, rows, flex, not args.no_flex)
        except Exception as e:
            print(f"{name} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        torch.cuda.empty_cache()
        if rows:  # written after every workload, so a run cut short keeps what it measured
            with open(args.out, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]) + list(header))
                w.writeheader()
                for r in rows:
                    w.writerow({**r, **header})
    print("\n| workload | op | triton ms | triton TFLOP/s | flex ms | flex TFLOP/s | triton/flex speed | triton extra MiB |")
    print("|---|---|---|---|---|---|---|---|")
    by = {(r["workload"], r["op"], r["provider"]): r for r in rows}
    for name in args.workloads.split(","):
        for op in ("fwd", "bwd", "jvp"):
            r = by.get((name, op, "triton"))
            if r is None:
                continue
            fr = by.get((name, op, "flex"))
            fx = (f"{fr['ms_p50']:.2f} | {fr['tflops']:.0f} | {fr['ms_p50'] / r['ms_p50']:.2f}x"
                  if fr else "- | - | -")
            print(f"| {name} | {op} | {r['ms_p50']:.2f} | {r['tflops']:.0f} | {fx} | {r['peak_extra_mib']:.0f} |")


if __name__ == "__main__":
    main()
