"""Command line for every stage: teachers, students, the Fréchet encoder, sampling and evaluation.

    python -m causal_rcm_min.train --preset tiny --stage all --out runs/tiny
    python -m causal_rcm_min.train --preset small --stage teacher_causal train.steps=5000
    torchrun --nproc_per_node 4 -m causal_rcm_min.train --preset small --stage teacher_causal

Each stage writes under ``<out>/<stage>/``; checkpoints carry the whole config, and
``--resume`` continues a training stage from its last checkpoint exactly as if it had not
stopped (checkpoint.py); a checkpoint written under another config is refused unless
``--allow-config-change`` is given.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import checkpoint, distill
from . import encoder as fd_encoder
from .config import Config, apply_overrides, preset
from .data import ClipStream, sample_clips, to_model
from .evaluate import frechet_distance, score_clips
from .log import Logger
from .losses import objective
from .model import CausalVideoDiT
from .optim import clipped_step, ema_update
from .sample import chunk_schedules, sample_full, sample_streaming, student_schedules
from .viz import plot_by_frame, plot_curves, save_filmstrip, save_gif

TEACHERS = {  # stage -> flow-matching objective
    "teacher_causal": "teacher_forcing",
    "teacher_causal_df": "diffusion_forcing",
    "teacher_bidirectional": "bidirectional",
}
STAGES = (*TEACHERS, *distill.STUDENT_STAGES, "encoder", "sample", "evaluate", "all")


# ---- distributed -----------------------------------------------------------------------
def setup_distributed():
    """(rank, world, device); starts a process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


# ---- teachers ---------------------------------------------------------------------------
def train_teacher(cfg: Config, stage: str, resume: bool, rank: int, world: int, device,
                  allow_config_change: bool = False) -> dict:
    out = os.path.join(cfg.out_dir, stage)
    tc = cfg.train
    if tc.batch_size % world:
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the world size {world}")
    torch.manual_seed(tc.seed + rank)
    model = CausalVideoDiT(cfg.model, cfg.data).to(device).fuse_pointwise(tc.fused_pointwise)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
    local_batch = tc.batch_size // world
    stream = ClipStream(cfg.data, local_batch, first_seed=tc.seed * 1_000_003 + rank, stride=world, device=device)
    step, history, running, changes = 0, [], [], []
    ckpt_path = os.path.join(out, "ckpt.pt")
    if resume:
        ckpt, changes = checkpoint.load_for_resume(ckpt_path, cfg.to_dict(), world, device, allow_config_change)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        stream.load_state_dict(ckpt["data"])
        step, history = ckpt["step"], ckpt["history"]
        if len(ckpt["ranks"]) == world:   # else (allowed) a new data split: this run's own RNG streams
            running = checkpoint.restore_rank_state(ckpt["ranks"][rank], device)
    log = Logger(out, rank, "train", history)
    if resume:
        log.info(checkpoint.resumed_message(stage, step, changes))
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else model
    loss_fn = objective(TEACHERS[stage])
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if tc.amp and device.type == "cuda" else contextlib.nullcontext()
    params = sum(p.numel() for p in model.parameters())
    log.info(f"{stage}: {params / 1e6:.2f}M parameters, objective {TEACHERS[stage]}, world {world}, device {device}")
    t0, start_step = time.time(), step
    bar = tqdm(total=tc.steps, initial=step, desc=stage, disable=rank != 0, leave=False)
    while step < tc.steps:
        clips = next(stream)
        for group in opt.param_groups:
            group["lr"] = tc.lr * min(1.0, (step + 1) / max(1, tc.warmup))
        with amp:
            loss = loss_fn(net, to_model(clips.frames), clips.cond,
                           clips.actions if cfg.data.action_mode else None, tc)
        grad_norm = clipped_step(opt, loss, model.parameters(), tc.grad_clip)
        ema_update(ema, model, tc.ema_decay)
        step += 1
        running.append(loss.detach())
        bar.update(1)
        over_time = tc.max_minutes > 0 and (time.time() - t0) / 60 > tc.max_minutes
        if world > 1:   # every rank stops at the same step
            flag = torch.tensor([float(over_time)], device=device)
            dist.all_reduce(flag)
            over_time = flag.item() > 0
        done = step >= tc.steps or over_time
        if step % tc.log_every == 0 or done:
            mean_loss = torch.stack(running).mean()
            if world > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= world
            running = []
            log.log(step, loss=mean_loss.item(), grad_norm=grad_norm.item(), lr=opt.param_groups[0]["lr"])
            if not math.isfinite(mean_loss.item()):
                raise FloatingPointError(f"{stage}: loss is {mean_loss.item()} at step {step}")
        if step % tc.ckpt_every == 0 or done:
            ranks = checkpoint.gather_rank_states(device, running, world)
            if rank == 0:
                checkpoint.save(ckpt_path, {
                    "config": cfg.to_dict(), "stage": stage, "objective": TEACHERS[stage], "step": step,
                    "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "history": log.history, "data": stream.state_dict(), "ranks": ranks})
        if done:
            break
    bar.close()
    elapsed = time.time() - t0
    metrics = {"stage": stage, "objective": TEACHERS[stage], "steps": step, "parameters": params,
               "seconds": elapsed, "steps_per_s": (step - start_step) / max(elapsed, 1e-9),
               "final_loss": log.history[-1]["loss"] if log.history else None, "world_size": world,
               "stopped_on_time": step < tc.steps}
    if rank == 0:
        with open(os.path.join(out, "train_metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        plot_curves(log.history, os.path.join(out, "loss.png"), keys=("loss", "grad_norm"))
    log.close()
    return metrics


# ---- encoder, sampling, evaluation ------------------------------------------------------
def encoder_path(cfg: Config) -> str:
    return os.path.join(cfg.out_dir, "encoder", "encoder.pt")


def run_encoder(cfg: Config, device):
    log = Logger(os.path.join(cfg.out_dir, "encoder"), 0, "train")
    t0 = time.time()
    fd_encoder.load_or_train(encoder_path(cfg), cfg.data, cfg.eval, device, log)
    log.info(f"encoder ready in {time.time() - t0:.1f}s at {encoder_path(cfg)}")


def run_sample(cfg: Config, device) -> str:
    """Sample the teacher or student in folder ``sample.teacher``, conditioned on real clips' scenes and actions.

    A teacher runs ``sample.solver`` on ``sample.steps`` with guidance ``sample.cfg_scale``; a
    student runs its own solver and schedule (``distill`` of its checkpoint, or
    ``sample.student_steps``), unguided, with its own context mode.
    """
    sc = copy.deepcopy(cfg.sample)
    path = os.path.join(cfg.out_dir, sc.teacher, "ckpt.pt")
    if sc.teacher not in TEACHERS and not os.path.exists(path):
        raise ValueError(f"sample.teacher must be one of {sorted(TEACHERS)} or a trained student's folder, "
                         f"got {sc.teacher!r}")
    model, tcfg, ckpt = checkpoint.load_model(path, device)
    data = tcfg.data
    real = sample_clips(sc.num_samples, data, seed=sc.seed, device=device)
    gen = torch.Generator(device=device).manual_seed(sc.seed)
    if ckpt.get("kind") == "student":
        dc = tcfg.distill
        schedules = chunk_schedules(sc.student_steps, dc.t_shift) if sc.student_steps else student_schedules(dc)
        sc.solver, sc.cfg_scale, sc.noisy_context = distill.solver_for(ckpt["objective"]), 1.0, dc.noisy_context
        sc.steps = [len(ts) - 1 for ts in schedules]
    else:
        schedules = chunk_schedules(sc.steps, sc.t_shift)
    outs, t0 = [], time.time()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.train.amp and device.type == "cuda" \
        else contextlib.nullcontext()
    with amp:
        for i in tqdm(range(0, sc.num_samples, sc.batch_size), desc="sample", leave=False):
            cond = real.cond[i:i + sc.batch_size]
            actions = real.actions[i:i + sc.batch_size] if data.action_mode else None
            if ckpt.get("objective") == "bidirectional":
                outs.append(sample_full(model, cond, actions, data.num_frames, schedules[0], sc.cfg_scale,
                                        sc.solver, gen))
            else:
                outs.append(sample_streaming(model, cond, actions, data.num_frames, schedules, sc.cfg_scale,
                                             sc.solver, sc.noisy_context, gen))
    frames = torch.cat(outs)
    seconds = time.time() - t0
    out = os.path.join(cfg.out_dir, sc.teacher, "samples")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "samples.pt")
    torch.save({"frames": frames.half().cpu(), "sample": dataclasses.asdict(sc), "data": tcfg.to_dict()["data"],
                "seconds": seconds}, path)
    n = min(sc.num_filmstrip, sc.num_samples)
    save_filmstrip(frames[:n], os.path.join(out, "generated.png"))
    save_gif(frames[:n], os.path.join(out, "generated.gif"))
    save_filmstrip(real.frames[:n], os.path.join(out, "real.png"))
    save_gif(real.frames[:n], os.path.join(out, "real.gif"))
    return path


def _json_safe(x):
    """NaN (a metric with nothing to measure, e.g. no sprite detected) becomes null."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def _markdown(name: str, results: dict) -> str:
    gen, real = results["generated"]["mean"], results["real"]["mean"]
    lines = [f"# {name}", "", f"Samples: {results['num_samples']} clips in {results['sampling_seconds']:.1f} s; "
             f"sampler: {json.dumps(results['sampler'])}", ""]
    if "training" in results:
        t = results["training"]
        lines += [f"Training: {t['steps']} steps in {t['seconds'] / 60:.1f} min ({t['steps_per_s']:.2f} steps/s, "
                  f"{t['parameters'] / 1e6:.2f}M parameters, {t['world_size']} process(es)), "
                  f"final loss {t['final_loss']:.4g}.", ""]
    lines += ["| metric | generated | real data |", "|---|---|---|"]
    lines += [f"| {k} | {gen[k]:.4g} | {real[k]:.4g} |" for k in gen]
    fd, floor = results["frechet_distance"], results["frechet_distance_real_floor"]
    lines += [f"| frechet_distance | {fd:.4g} | {floor:.4g} |", "",
              "Per-frame values are in results.json and by_frame.png; real data is the floor each metric "
              "reaches with the ground-truth world (the Fréchet floor compares two independent real sets)."]
    return "\n".join(lines) + "\n"


def run_evaluate(cfg: Config, device) -> dict:
    """Score the teacher's samples and real clips with the same metrics; write results.json/.md and plots."""
    sc, ec = cfg.sample, cfg.eval
    out = os.path.join(cfg.out_dir, sc.teacher)
    path = os.path.join(out, "samples", "samples.pt")
    if not os.path.exists(path):
        raise ValueError(f"no samples at {path}; run the sample stage first")
    saved = torch.load(path, map_location=device, weights_only=False)
    tcfg = Config.from_dict({**cfg.to_dict(), "data": saved["data"]})
    data = tcfg.data
    frames = saved["frames"].float().to(device)
    real = sample_clips(frames.shape[0], data, seed=saved["sample"]["seed"], device=device)
    agent = real.colours[:, 0] if data.action_mode else None
    actions = real.actions if data.action_mode else None
    gen_scores = score_clips(frames, real.cond, data, actions, agent)
    real_scores = score_clips(real.frames, real.cond, data, actions, agent)
    enc = fd_encoder.load_or_train(encoder_path(tcfg), data, ec, device)
    reference = sample_clips(ec.num_real, data, seed=ec.real_seed, device=device)
    f_ref = fd_encoder.clip_features(enc, reference.frames)
    results = {
        "teacher": sc.teacher, "num_samples": frames.shape[0], "sampler": saved["sample"],
        "sampling_seconds": saved["seconds"],
        "frechet_distance": frechet_distance(fd_encoder.clip_features(enc, frames), f_ref),
        "frechet_distance_real_floor": frechet_distance(fd_encoder.clip_features(enc, real.frames), f_ref),
        "generated": gen_scores, "real": real_scores,
    }
    train_metrics = os.path.join(out, "train_metrics.json")
    if os.path.exists(train_metrics):
        with open(train_metrics) as f:
            results["training"] = json.load(f)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(_json_safe(results), f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(_markdown(sc.teacher, results))
    plot_by_frame({"generated": gen_scores["by_frame"], "real": real_scores["by_frame"]},
                  os.path.join(out, "by_frame.png"))
    return results


# ---- command line ----------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="tiny | small")
    ap.add_argument("--stage", required=True, help=" | ".join(STAGES))
    ap.add_argument("--out", default=None, help="output directory (default: the preset's out_dir)")
    ap.add_argument("--resume", action="store_true", help="continue a training stage from its checkpoint")
    ap.add_argument("--allow-config-change", action="store_true",
                    help="with --resume: continue under a config that differs from the checkpoint's")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=100 model.frames_per_chunk=1")
    return ap.parse_args(argv)


def build_config(args) -> Config:
    cfg = apply_overrides(preset(args.preset), args.overrides)
    if args.out is not None:
        cfg.out_dir = args.out
    return cfg


def run_stage(cfg: Config, stage: str, resume: bool = False, allow_config_change: bool = False):
    """Run ``stage``. ``resume``: continue a training stage (teacher or student) from its checkpoint,
    which must have been written under the same config unless ``allow_config_change``.

    ``all`` runs the encoder, the three teachers and every student (distilled from
    ``distill.teacher``), then samples and evaluates each teacher and student.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if allow_config_change and not resume:
        raise ValueError("allow_config_change (--allow-config-change) applies to a resume (--resume)")
    rank, world, device = setup_distributed()
    if stage == "all":
        for s in ("encoder", *TEACHERS, *distill.STUDENT_STAGES):
            run_stage(cfg, s, resume, allow_config_change)
        students = [os.path.basename(distill.stage_dir(cfg, s)) for s in distill.STUDENT_STAGES]
        for folder in (*TEACHERS, *students):
            c = copy.deepcopy(cfg)
            c.sample.teacher = folder
            run_stage(c, "sample")
            run_stage(c, "evaluate")
    elif stage in TEACHERS:
        train_teacher(cfg, stage, resume, rank, world, device, allow_config_change)
    elif rank != 0:    # the remaining stages are single-process
        return
    elif stage in distill.STUDENT_STAGES:
        distill.train_student(cfg, stage, device, resume, allow_config_change)
    elif stage == "encoder":
        run_encoder(cfg, device)
    elif stage == "sample":
        run_sample(cfg, device)
    elif stage == "evaluate":
        results = run_evaluate(cfg, device)
        print(json.dumps({"teacher": results["teacher"], "frechet_distance": results["frechet_distance"],
                          **results["generated"]["mean"]}, indent=1))
    else:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    t0 = time.time()
    run_stage(cfg, args.stage, args.resume, args.allow_config_change)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"stage {args.stage} done in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
