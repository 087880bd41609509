"""Students of a causal flow-matching teacher: the Causal-rCM training stages.

    python -m causal_rcm_min.train --preset small --stage tf_scm distill.student_steps=[2]
    python -m causal_rcm_min.train --preset small --stage sf_dmd distill.init=tf_scm distill.tag=from_scm

Stages (objectives in losses.py): ``tf_kd`` (regression on teacher ODE pairs), ``tf_dcm``
(discrete-time consistency distillation, EMA target), ``tf_scm`` (continuous-time, TrigFlow,
one JVP of the whole student), ``tf_meanflow`` (average velocity, JVP), ``sf_dmd``
(self-forcing DMD on KV-cache rollouts). Each student starts from the teacher or from
another student (``distill.init``), keeps the teacher's layout (frame- or chunk-wise),
and writes ``<out>/<stage>[_<tag>]/``: ckpt.pt (with the whole config), train.jsonl,
train_metrics.json, loss.png, and, with ``distill.eval_every``, the quick metric
(Fréchet distance, physics error) against training step and training seconds.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time

import torch
from tqdm import tqdm

from . import checkpoint
from . import encoder as fd_encoder
from . import losses as L
from .config import Config
from .data import ClipStream, sample_clips, to_model
from .evaluate import frechet_distance, score_clips
from .log import Logger
from .model import CausalVideoDiT
from .optim import clipped_step, ema_update
from .sample import chunk_schedules, student_schedules, sample_streaming
from .viz import plot_curves

STUDENT_STAGES = L.STUDENT_OBJECTIVES


def stage_dir(cfg: Config, stage: str) -> str:
    tag = cfg.distill.tag
    return os.path.join(cfg.out_dir, f"{stage}_{tag}" if tag else stage)


# What a student's checkpoint holds besides checkpoint.RESUME_KEYS: the extra networks of its
# objective, and the run's counters.
EXTRA_STATE = {"tf_dcm": ("target",), "sf_dmd": ("fake", "fake_opt")}
RUN_STATE = ("evals", "nonfinite", "train_seconds", "step_times")


def student_config(cfg: Config, stage: str, tcfg: Config) -> dict:
    """The config a student is trained (and stored) under: ``cfg`` with the teacher's data and model."""
    t = tcfg.to_dict()
    return {**cfg.to_dict(), "model": {**t["model"], "two_times": stage == "tf_meanflow"}, "data": t["data"]}


def solver_for(objective: str) -> str:
    return "meanflow" if objective == "tf_meanflow" else "consistency"


def _load_weights(model, state, source: str):
    """Load ``state``; only the MeanFlow time-gap branch may be missing or extra."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    other = [k for k in (*missing, *unexpected) if not k.startswith("r_mlp.")]
    if other:
        raise ValueError(f"cannot initialise from {source}: mismatched weights {other[:4]}")


def init_student(cfg: Config, stage: str, teacher, tcfg: Config, device):
    """A student with the teacher's architecture and layout, started from ``distill.init``."""
    dc = cfg.distill
    mcfg = copy.deepcopy(tcfg.model)
    mcfg.two_times = stage == "tf_meanflow"
    student = CausalVideoDiT(mcfg, tcfg.data).to(device)
    if dc.init == "teacher":
        _load_weights(student, teacher.state_dict(), "the teacher")
    else:
        _, icfg, ckpt = checkpoint.load_model(os.path.join(cfg.out_dir, dc.init, "ckpt.pt"), device)
        if icfg.model.frames_per_chunk != mcfg.frames_per_chunk or icfg.model.dim != mcfg.dim:
            raise ValueError(f"distill.init={dc.init!r} has another layout or size than the teacher")
        _load_weights(student, ckpt["ema"], dc.init)
    return student


class QuickEval:
    """Fréchet distance and physics error of a few student samples (the convergence curves)."""

    def __init__(self, cfg: Config, tcfg: Config, device):
        dc, data = cfg.distill, tcfg.data
        self.cfg, self.data, self.device = cfg, data, device
        self.enc = fd_encoder.load_or_train(os.path.join(cfg.out_dir, "encoder", "encoder.pt"), data, cfg.eval,
                                            device)
        ref = sample_clips(cfg.eval.num_real, data, seed=cfg.eval.real_seed, device=device)
        self.f_ref = fd_encoder.clip_features(self.enc, ref.frames)
        self.real = sample_clips(dc.eval_samples, data, seed=cfg.sample.seed, device=device)
        self.schedules = chunk_schedules([dc.eval_steps], dc.t_shift)

    @torch.no_grad()
    def __call__(self, model, solver: str, noisy_context: bool) -> dict:
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.sample.seed)
        actions = self.real.actions if self.data.action_mode else None
        frames = sample_streaming(model, self.real.cond, actions, self.data.num_frames, self.schedules, 1.0,
                                  solver, noisy_context, gen)
        agent = self.real.colours[:, 0] if self.data.action_mode else None
        mean = score_clips(frames, self.real.cond, self.data, actions, agent)["mean"]
        return {"fd": frechet_distance(fd_encoder.clip_features(self.enc, frames), self.f_ref),
                "physics_error_px": mean["physics_error_px"], "adherence_clip_exact": mean["adherence_clip_exact"]}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_student(cfg: Config, stage: str, device, resume: bool = False, allow_config_change: bool = False) -> dict:
    """Distil the teacher ``distill.teacher`` into a student with objective ``stage``; ``resume``
    continues from the stage's checkpoint (see checkpoint.py), under the same config unless
    ``allow_config_change``."""
    if stage not in STUDENT_STAGES:
        raise ValueError(f"student stage must be one of {STUDENT_STAGES}, got {stage!r}")
    dc, tc = cfg.distill, cfg.train
    out = stage_dir(cfg, stage)
    ckpt_path = os.path.join(out, "ckpt.pt")
    torch.manual_seed(tc.seed)
    teacher, tcfg, tckpt = checkpoint.load_model(os.path.join(cfg.out_dir, dc.teacher, "ckpt.pt"), device)
    if tckpt.get("objective") != "teacher_forcing":
        raise ValueError(f"distill.teacher={dc.teacher!r} must be a teacher-forcing teacher "
                         f"(stage teacher_causal), got objective {tckpt.get('objective')!r}")
    config = student_config(cfg, stage, tcfg)
    ckpt, changes = None, []
    if resume:
        ckpt, changes = checkpoint.load_for_resume(ckpt_path, config, 1, device, allow_config_change,
                                                   keys=(*EXTRA_STATE.get(stage, ()), *RUN_STATE))
    log = Logger(out, 0, "train", ckpt["history"] if resume else ())
    if resume:
        log.info(checkpoint.resumed_message(stage, ckpt["step"], changes))
    teacher.requires_grad_(False)
    data = tcfg.data
    student = init_student(cfg, stage, teacher, tcfg, device).train()
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=dc.lr, betas=(0.9, 0.99), weight_decay=0.0)
    schedules = student_schedules(dc)
    actions_on = data.action_mode
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if tc.amp and device.type == "cuda" \
        else contextlib.nullcontext()

    target = fake = fake_opt = pool_kd = grid = None
    if stage == "tf_dcm":
        target = copy.deepcopy(student).eval().requires_grad_(False)
        grid = L.dcm_grid(dc.dcm_intervals, cfg.sample.t_shift)
    elif stage == "sf_dmd":
        fake = copy.deepcopy(teacher).train().requires_grad_(True)
        fake_opt = torch.optim.AdamW(fake.parameters(), lr=dc.dmd_fake_lr, betas=(0.9, 0.99), weight_decay=0.0)
    elif stage == "tf_kd":   # teacher ODE pairs, made once (their cost is reported apart; a resume makes the same)
        t0 = time.time()
        real = sample_clips(dc.kd_pairs, data, seed=tc.seed * 7 + 11, device=device)
        x0 = to_model(real.frames)
        eps, x0_t = [], []
        with amp:
            for i in range(0, dc.kd_pairs, dc.batch_size):
                a = real.actions[i:i + dc.batch_size] if actions_on else None
                e, x = L.teacher_ode_pairs(teacher, x0[i:i + dc.batch_size], real.cond[i:i + dc.batch_size], a,
                                           dc.teacher_steps, cfg.sample.t_shift, dc.cfg_scale)
                eps.append(e.float())
                x0_t.append(x.float())
        pool_kd = (x0, torch.cat(eps), torch.cat(x0_t), real.cond, real.actions)
        log.info(f"tf_kd: {dc.kd_pairs} teacher ODE pairs ({dc.teacher_steps} steps) in {time.time() - t0:.1f}s")
    elif stage not in ("tf_scm", "tf_meanflow"):
        raise ValueError(f"student stage must be one of {STUDENT_STAGES}, got {stage!r}")
    parts = {"model": student, "ema": ema, "opt": opt, "target": target, "fake": fake, "fake_opt": fake_opt}
    parts = {k: v for k, v in parts.items() if v is not None}
    stream = ClipStream(data, dc.batch_size, first_seed=tc.seed * 1_000_003 + 77, device=device)

    quick = QuickEval(cfg, tcfg, device) if dc.eval_every > 0 else None
    solver = solver_for(stage)
    params = sum(p.numel() for p in student.parameters())
    log.info(f"{stage}: {params / 1e6:.2f}M parameters, init {dc.init}, teacher {dc.teacher}, "
             f"frames/chunk {tcfg.model.frames_per_chunk}, schedules {schedules}, device {device}")
    step, running, evals, nonfinite, train_seconds, step_times = 0, [], [], 0, 0.0, []

    def evaluate_now():
        r = quick(ema, solver, dc.noisy_context)
        evals.append({"step": step, "train_seconds": train_seconds, **r})
        log.info(f"eval step {step} ({train_seconds:.1f}s): fd {r['fd']:.4g} physics {r['physics_error_px']:.4g}")

    if resume:
        for name, part in parts.items():
            part.load_state_dict(ckpt[name])
        stream.load_state_dict(ckpt["data"])
        step, evals, nonfinite, train_seconds, step_times = (ckpt[k] for k in ("step", *RUN_STATE))
        running = checkpoint.restore_rank_state(ckpt["ranks"][0], device)
    elif quick is not None:
        evaluate_now()
    bar = tqdm(total=dc.steps, initial=step, desc=stage, leave=False)
    while step < dc.steps:
        clips = next(stream)
        x0, cond = to_model(clips.frames), clips.cond
        actions = clips.actions if actions_on else None
        lr_scale = min(1.0, (step + 1) / max(1, dc.warmup))
        for group in opt.param_groups:
            group["lr"] = dc.lr * lr_scale
        _sync(device)
        t0 = time.time()
        info = {}
        with amp:
            if stage == "tf_kd":
                idx = torch.randint(dc.kd_pairs, (dc.batch_size,), device=device)
                kx0, keps, kx0t, kcond, kact = pool_kd
                loss = L.tf_kd_loss(student, kx0[idx], keps[idx], kx0t[idx], kcond[idx],
                                    kact[idx] if actions_on else None, schedules, dc.noisy_context)
            elif stage == "tf_dcm":
                loss = L.tf_dcm_loss(student, target, teacher, x0, cond, actions, grid, dc.cfg_scale, schedules,
                                     dc.noisy_context)
            elif stage == "tf_scm":
                loss, info = L.tf_scm_loss(student, teacher, x0, cond, actions, tc, dc, schedules, step)
            elif stage == "tf_meanflow":
                loss, info = L.tf_meanflow_loss(student, teacher, x0, cond, actions, tc, dc, schedules)
            elif stage == "sf_dmd":
                fake_tc = copy.copy(tc)
                for _ in range(dc.dmd_fake_ratio):    # two time-scale update rule
                    with torch.no_grad():
                        rollout = L.self_forcing_rollout(student, cond, actions, data.num_frames, schedules,
                                                         dc.noisy_context, grad=False)
                    fake_loss = L.sf_dmd_fake_loss(fake, rollout, cond, actions, fake_tc)
                    clipped_step(fake_opt, fake_loss, fake.parameters(), tc.grad_clip)
                rollout = L.self_forcing_rollout(student, cond, actions, data.num_frames, schedules,
                                                 dc.noisy_context, grad=True)
                loss, info = L.sf_dmd_generator_loss(rollout, teacher, fake, cond, actions, dc)
                info["fake_loss"] = fake_loss.detach()
            else:
                raise ValueError(f"student stage must be one of {STUDENT_STAGES}, got {stage!r}")
        grad_norm = clipped_step(opt, loss, student.parameters(), tc.grad_clip)
        ema_update(ema, student, dc.ema_decay)
        if target is not None:
            ema_update(target, student, dc.dcm_target_ema)
        _sync(device)
        step_times.append(time.time() - t0)
        train_seconds += step_times[-1]
        step += 1
        bar.update(1)
        running.append(loss.detach())
        nonfinite += int(info.get("nonfinite", 0))
        done = step >= dc.steps or (dc.max_minutes > 0 and train_seconds / 60 > dc.max_minutes)
        if step % tc.log_every == 0 or done:
            mean_loss = torch.stack(running).mean().item()
            running = []
            extra = {"fake_loss": info["fake_loss"].item()} if "fake_loss" in info else {}
            log.log(step, loss=mean_loss, grad_norm=grad_norm.item(), nonfinite=nonfinite,
                    train_seconds=train_seconds, **extra)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"{stage}: loss is {mean_loss} at step {step}")
        if quick is not None and (step % dc.eval_every == 0 or done):
            evaluate_now()
        if step % dc.ckpt_every == 0 or done:
            checkpoint.save(ckpt_path, {
                "config": config, "stage": stage, "kind": "student", "objective": stage, "step": step,
                **{name: part.state_dict() for name, part in parts.items()}, "history": log.history,
                "data": stream.state_dict(), "ranks": checkpoint.gather_rank_states(device, running, 1),
                "evals": evals, "nonfinite": nonfinite, "train_seconds": train_seconds, "step_times": step_times})
        if done:
            break
    bar.close()
    metrics = {"stage": stage, "objective": stage, "init": dc.init, "teacher": dc.teacher, "steps": step,
               "parameters": params, "seconds": train_seconds, "steps_per_s": step / max(train_seconds, 1e-9),
               "ms_per_step": 1000 * train_seconds / max(step, 1),
               "ms_per_step_after_5": 1000 * sum(step_times[5:]) / max(1, len(step_times[5:])), "final_loss": log.history[-1]["loss"],
               "world_size": 1, "nonfinite_frames": nonfinite, "schedules": schedules,
               "frames_per_chunk": tcfg.model.frames_per_chunk, "noisy_context": dc.noisy_context,
               "reuse_primal": dc.reuse_primal, "evals": evals}
    with open(os.path.join(out, "train_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plot_curves(log.history, os.path.join(out, "loss.png"), keys=("loss", "grad_norm"))
    log.close()
    return metrics
