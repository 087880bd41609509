"""One TF-sCM training step of a Wan2.1-1.3B-shaped video transformer (random weights).

The recipe (docs/wan_scm_step.md): the tangent dF/ds comes from ``torch.func.jvp`` of the
whole model under ``torch.no_grad()`` (one fused forward+JVP per attention call, nothing kept
for backward), then a plain forward with grad and per-block activation checkpointing gives F
for the loss. With ``--recipe fused`` one ``torch.func.jvp`` with grad serves both (its primal is
differentiable): fewer FLOPs, but every layer's activations and tangents stay alive.

The model is diffusers' WanTransformer3DModel with jvp_flash_attn's processors, run under
teacher forcing ([clean | noisy] latents, 21 latent frames at 480p = 2 x 32,760 tokens). The
teacher's velocity comes from the same weights (a student starts as its teacher).

    python examples/wan_scm_step.py --layers 30 --out results/     # one GPU, Wan scale
    python examples/wan_scm_step.py --preset tiny --device cpu      # seconds on a CPU

Prints, and appends to OUT/wan_scm_step.csv: ms per part of the step and the peak GiB.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import time

import torch
import torch.nn.functional as F

from jvp_flash_attn import masks
from jvp_flash_attn.integrations import diffusers as jd

# (model config, latent frames, latent height, width, text tokens)
PRESETS = {
    "wan-1.3b": (dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, text_dim=4096,
                      freq_dim=256), 21, 60, 104, 512),  # 480p: 30 x 52 = 1560 tokens per frame
    "tiny": (dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, text_dim=32, freq_dim=32),
             4, 4, 6, 8),
}


def build(preset: str, layers: int, device, dtype):
    """Random weights in ``dtype``, except the modules diffusers keeps in float32 when it loads
    a checkpoint in low precision; built on the device (no host copy of 1.3B parameters)."""
    from diffusers import WanTransformer3DModel

    config = PRESETS[preset][0]
    with torch.device(device):
        model = WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16,
                                      num_layers=layers, cross_attn_norm=True, **config)
    for name, p in model.named_parameters():
        if not any(k in name.split(".") for k in model._keep_in_fp32_modules):
            p.data = p.data.to(dtype)
    return model


def trig_model(model, clean, x_s, s, text):
    """The flow-matching model as a TrigFlow velocity: with c = cos s + sin s and t = sin s / c,
    F(x_s, s) = ((cos s - sin s) x_s + v(x_s / c, t)) / c, under teacher forcing on ``clean``."""
    cs, sn = torch.cos(s)[:, None, :, None, None], torch.sin(s)[:, None, :, None, None]
    c = cs + sn
    t = torch.sin(s) / (torch.cos(s) + torch.sin(s))
    v = jd.teacher_forcing(model, clean, (x_s / c).to(clean.dtype), 1000 * t, text)
    return ((cs - sn) * x_s + v.float()) / c


class Timer:
    """Wall time of each part, synchronised with the device so GPU work is counted."""

    def __init__(self, device):
        self.device, self.ms = torch.device(device), {}

    def part(self, name):
        timer = self

        class _Part:
            def __enter__(self):
                timer.sync()
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.sync()
                timer.ms[name] = 1e3 * (time.perf_counter() - self.t0)

        return _Part()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def step(model, x0, text, recipe: str, timer: Timer, norm_c: float = 0.1):
    """One TF-sCM step (TrigFlow, tangent warm-up done): returns the loss after backward()."""
    b, _, frames = x0.shape[:3]
    s = torch.rand(b, frames, device=x0.device) * (math.pi / 2 - 0.2) + 0.1  # per latent frame
    x_s = (torch.cos(s)[:, None, :, None, None] * x0.float()
           + torch.sin(s)[:, None, :, None, None] * torch.randn_like(x0, dtype=torch.float32))
    f = lambda x, ss: trig_model(model, x0, x, ss, text)  # noqa: E731
    with timer.part("teacher_ms"), torch.no_grad():
        dxds = f(x_s, s)  # the teacher's PF-ODE velocity (the student's own weights here)
    tangents = (dxds, torch.ones_like(s))
    if recipe == "split":
        with timer.part("jvp_ms"), torch.no_grad():
            f_minus, dfds = torch.func.jvp(f, (x_s, s), tangents)
        with timer.part("fwd_bwd_ms"):
            f_now = f(x_s, s)  # with grad; the blocks are checkpointed
            loss = _loss(f_now, f_minus, dfds, dxds, x_s, s, norm_c)
            loss.backward()
    else:
        with timer.part("jvp_ms"):
            f_now, dfds = torch.func.jvp(f, (x_s, s), tangents)
        with timer.part("fwd_bwd_ms"):  # the backward only: the JVP's primal carries the graph
            loss = _loss(f_now, f_now.detach(), dfds.detach(), dxds, x_s, s, norm_c)
            loss.backward()
    return loss.detach()


def _loss(f_now, f_minus, dfds, dxds, x_s, s, norm_c):
    """sCM: g = -cos^2 s (F^- - dx/ds) - cos s sin s (x_s + dF^-/ds), normalised per sample;
    L = ||F - F^- - g||^2, whose gradient at theta = theta^- is -2 g."""
    cs, sn = torch.cos(s)[:, None, :, None, None], torch.sin(s)[:, None, :, None, None]
    g = -cs ** 2 * (f_minus - dxds) - cs * sn * (x_s + dfds)
    g = g / (g.flatten(1).norm(dim=1)[:, None, None, None, None] + norm_c)
    return F.mse_loss(f_now, f_minus + g)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="wan-1.3b")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--recipe", choices=["split", "fused"], default="split",
                    help="split: JVP under no_grad + checkpointed forward; fused: one JVP with grad")
    ap.add_argument("--zero-tangent-hint", action="store_true",
                    help="promise the JVP that the clean copy's tangents are zero (docs/design/api.md)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--backend", default=None, help="jfa backend (default: automatic)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="folder: append a row to wan_scm_step.csv")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    _, frames, height, width, text_tokens = PRESETS[args.preset]
    model = build(args.preset, args.layers, device, dtype)
    tokens = (height // 2) * (width // 2)

    def mask_for(num_frames, tokens_per_frame):
        mask = masks.teacher_forcing(masks.FramePattern(tokens_per_frame, num_frames))
        if args.zero_tangent_hint:  # the clean copy is a constant of the JVP
            clean = (0, num_frames * tokens_per_frame)
            mask = mask.with_zero_tangents(q_ranges=[clean], k_ranges=[clean])
        return mask

    jd.apply(model, mask_for, backend=args.backend)
    if args.recipe == "split":
        model.enable_gradient_checkpointing()
    torch.manual_seed(0)
    x0 = torch.randn(1, 16, frames, height, width, device=device, dtype=dtype)
    text = torch.randn(1, text_tokens, model.config.text_dim, device=device, dtype=dtype)

    timer, rows, status = Timer(device), [], "ok"
    parts = ("teacher_ms", "jvp_ms", "fwd_bwd_ms", "step_ms", "peak_gib", "loss")
    for i in range(args.warmup + args.steps):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            with timer.part("step_ms"):
                loss = step(model, x0, text, args.recipe, timer)
        except torch.OutOfMemoryError:  # reported as a result: the point of the recipe
            status, timer.ms = "out of memory", {}
            rows = [dict.fromkeys(parts, float("nan"))]
            break
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {i}: the loss is {loss.item()}")
        if i >= args.warmup:
            peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
            rows.append(dict(timer.ms, peak_gib=peak, loss=loss.item()))

    med = {k: sorted(r[k] for r in rows)[len(rows) // 2] for k in parts}
    row = dict(preset=args.preset, layers=args.layers, tokens=2 * frames * tokens, recipe=args.recipe,
               zero_tangent_hint=args.zero_tangent_hint,
               backend=args.backend or _auto_backend(model, x0), steps=len(rows), status=status,
               **{k: round(v, 1 if k.endswith("ms") else 3) for k, v in med.items() if k != "loss"},
               loss=f"{med['loss']:.4g}", device=_device_name(device), torch=torch.__version__,
               diffusers=__import__("diffusers").__version__,
               date=datetime.date.today().isoformat())
    print(" ".join(f"{k}={v}" for k, v in row.items()))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "wan_scm_step.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
    return row


def _auto_backend(model, x):
    """The backend ``backend=None`` picks for this model's attention inputs."""
    from jvp_flash_attn.backends import select

    q = x.new_empty(1, 1, model.config.num_attention_heads, model.config.attention_head_dim)
    return type(select(None, q, q, q)).__name__.replace("Backend", "").lower()


def _device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()
