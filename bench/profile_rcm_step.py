"""Where a causal_rcm_min teacher training step spends its time (one GPU).

    python bench/profile_rcm_step.py                          # small preset, batch 64
    python bench/profile_rcm_step.py --batch 32 --steps 60 model.frames_per_chunk=1

Prints steps/s (after warm-up), the GPU time per step summed over the kernels of a profiled
window, and the table of the ops and kernels that took most of it.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from causal_rcm_min.config import apply_overrides, preset
from causal_rcm_min.data import sample_clips, to_model
from causal_rcm_min.losses import objective
from causal_rcm_min.model import CausalVideoDiT
from causal_rcm_min.optim import clipped_step, ema_update


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=40, help="timed steps after 10 warm-up steps")
    ap.add_argument("--profile", type=int, default=5, help="profiled steps (0: none)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--fused", action="store_true", help="compiled pointwise pieces (model.fuse_pointwise)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = apply_overrides(preset(args.preset), args.overrides)
    tc = cfg.train
    if args.batch:
        tc.batch_size = args.batch
    device = torch.device(args.device)
    model = CausalVideoDiT(cfg.model, cfg.data).to(device).fuse_pointwise(args.fused)
    ema = CausalVideoDiT(cfg.model, cfg.data).to(device).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.99))
    loss_fn = objective("teacher_forcing")
    pool = sample_clips(tc.batch_size * 4, cfg.data, seed=0, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if tc.amp and device.type == "cuda" \
        else contextlib.nullcontext()

    def step(i):
        clips = pool.slice((i % 4) * tc.batch_size, (i % 4 + 1) * tc.batch_size)
        with amp:
            loss = loss_fn(model, to_model(clips.frames), clips.cond, None, tc)
        clipped_step(opt, loss, model.parameters(), tc.grad_clip)
        ema_update(ema, model, tc.ema_decay)

    for i in range(10):
        step(i)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    print(f"fused {model.fused}, batch {tc.batch_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"overrides {args.overrides}: {1 / dt:.2f} steps/s ({dt * 1e3:.1f} ms/step)", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(args.profile):
                step(i)
            sync()
        events = prof.key_averages()
        # kernels only: an op's row also carries the time of the kernels it launched
        cuda_total = sum(e.self_device_time_total for e in events
                         if e.device_type == torch.autograd.DeviceType.CUDA) / args.profile / 1e3
        print(f"GPU busy {cuda_total:.1f} ms/step of {dt * 1e3:.1f} ms/step wall", flush=True)
        print(events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
