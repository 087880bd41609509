"""Toy-scale reproduction of Causal-rCM's claims, resumable stage by stage.

    python -m causal_rcm_min.repro --preset small --work runs/rcm_repro_small --results bench/results/rcm_repro_small
    python -m causal_rcm_min.repro --preset tiny --work /tmp/w --results /tmp/r       # CPU dry run
    python -m causal_rcm_min.repro --preset smoke --work /tmp/w --results /tmp/r      # every stage at its smallest

Claims checked: (1) teacher-forcing consistency distillation (TF-sCM, TF-dCM) is a better
initialisation for self-forcing DMD than the teacher itself or TF-KD; (2) continuous-time CM
(TF-sCM, through the attention JVP) converges much faster than discrete-time CM (TF-dCM).

Per layout (chunk-wise, frame-wise): a teacher-forcing teacher (many-step sampler), the
initialisations TF-KD, TF-dCM, TF-sCM (from the teacher), then SF-DMD students from
{teacher, TF-KD, TF-dCM, TF-sCM} at 1, 2 and 4 steps, each sampled and scored by
evaluate.py. TF-sCM and TF-dCM of the chunk-wise layout log a quick metric against step
and training seconds (the convergence curves). Every stage leaves a marker in
``<work>/.done/``; a rerun skips finished stages, and ``--budget-s`` stops before starting
a stage once that many seconds have passed (each piece runs at least one stage), so the
whole can run in several pieces.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import torch

from .config import apply_overrides, preset
from .train import run_stage

INITS = ("teacher", "tf_kd", "tf_dcm", "tf_scm")
NAMES = {"tf_kd": "TF-KD", "tf_dcm": "TF-dCM", "tf_scm": "TF-sCM"}

# Budgets per preset: the small numbers take 22 min on one H200 for everything (target < 25).
BUDGETS = {
    "tiny": dict(layouts={"chunkwise": 2, "framewise": 1}, steps=(1, 2), teacher=["train.steps=6"],
                 kd=["distill.steps=3"], cm=["distill.steps=4", "distill.eval_every=2"],
                 dmd=["distill.steps=2"], timing_steps=6,
                 common=["eval.encoder_steps=10", "eval.num_real=8", "sample.num_samples=4", "sample.batch_size=4"]),
    # every stage of the tiny run at its smallest: the test of the whole pipeline (tests/test_rcm_distill.py)
    "smoke": dict(preset="tiny", layouts={"chunkwise": 2, "framewise": 1}, steps=(1,), teacher=["train.steps=2"],
                  kd=["distill.steps=1", "distill.kd_pairs=2", "distill.teacher_steps=1"],
                  cm=["distill.steps=2", "distill.eval_every=1"],
                  dmd=["distill.steps=1", "distill.dmd_fake_ratio=1"], timing_steps=2,
                  common=["data.num_frames=4", "eval.encoder_steps=2", "eval.num_real=4", "sample.num_samples=2",
                          "sample.batch_size=2", "sample.steps=[1]", "sample.num_filmstrip=1",
                          "distill.eval_samples=2", "train.log_every=1"]),
    "small": dict(layouts={"chunkwise": 3, "framewise": 1}, steps=(1, 2, 4),
                  teacher=["train.max_minutes=5"],
                  kd=["distill.steps=200"], cm=["distill.steps=300", "distill.eval_every=50"],
                  dmd=["distill.steps=24", "distill.dmd_fake_ratio=2"], timing_steps=40,
                  common=["sample.num_samples=256", "sample.batch_size=128"]),
    # the small model and data with shorter budgets: a one-piece check of every stage on a GPU
    "gpu_check": dict(preset="small", layouts={"chunkwise": 3, "framewise": 1}, steps=(1, 2, 4),
                      teacher=["train.max_minutes=1.5"], kd=["distill.steps=100"],
                      cm=["distill.steps=150", "distill.eval_every=50"],
                      dmd=["distill.steps=20", "distill.dmd_fake_ratio=2"], timing_steps=30,
                      common=["sample.num_samples=128", "sample.batch_size=128", "eval.encoder_steps=500",
                              "eval.num_real=256"]),
}


class Runner:
    def __init__(self, work: str, budget_s: float, keep_going: bool = False):
        self.work, self.budget_s, self.t0, self.keep_going = work, budget_s, time.time(), keep_going
        self.failed = {}
        self.done_dir = os.path.join(work, ".done")
        os.makedirs(self.done_dir, exist_ok=True)
        self.stopped = False
        self.started = False   # the first stage of a piece always runs, so every piece makes progress

    def stage(self, name: str, fn):
        marker = os.path.join(self.done_dir, name)
        if os.path.exists(marker) or self.stopped:
            return
        if self.budget_s > 0 and self.started and time.time() - self.t0 > self.budget_s:
            print(f"[repro] budget of {self.budget_s:.0f}s spent; rerun to continue from {name}", flush=True)
            self.stopped = True
            return
        print(f"[repro] stage {name}", flush=True)
        self.started = True
        t0 = time.time()
        try:
            fn()
        except Exception as e:   # --keep-going: record and go on (stages that need this one fail too)
            if not self.keep_going:
                raise
            import traceback
            traceback.print_exc()
            self.failed[name] = f"{type(e).__name__}: {e}"
            return
        with open(marker, "w") as f:
            json.dump({"seconds": time.time() - t0}, f)


def _cfg(preset_name, out, overrides):
    cfg = apply_overrides(preset(BUDGETS[preset_name].get("preset", preset_name)), overrides)
    cfg.out_dir = out
    return cfg


def plan(runner: Runner, preset_name: str, budget: dict, teacher_ckpt: str | None, layouts, timing: bool = True):
    for layout in layouts:
        fpc = budget["layouts"][layout]
        out = os.path.join(runner.work, layout)
        base = budget["common"] + [f"model.frames_per_chunk={fpc}"]

        def c(*extra, out=out, base=base):
            return _cfg(preset_name, out, base + list(extra))

        def teacher(out=out, c=c):
            if teacher_ckpt and layout == "chunkwise":   # reuse a trained chunk-wise teacher
                os.makedirs(os.path.join(out, "teacher_causal"), exist_ok=True)
                shutil.copy(teacher_ckpt, os.path.join(out, "teacher_causal", "ckpt.pt"))
            else:
                run_stage(c(*budget["teacher"]), "teacher_causal")

        runner.stage(f"{layout}.teacher", teacher)
        if timing and layout == layouts[0]:   # step time of TF-sCM reusing the JVP primal for the gradient vs a second forward
            for reuse in (True, False):
                runner.stage(f"{layout}.scm_timing.{reuse}", lambda reuse=reuse, c=c: run_stage(c(
                    f"distill.steps={budget['timing_steps']}", "distill.eval_every=0",
                    f"distill.reuse_primal={str(reuse).lower()}",
                    f"distill.tag=timing_{'reuse' if reuse else 'second'}"), "tf_scm"))
        enc_first = os.path.join(runner.work, layouts[0], "encoder")

        def encoder(out=out, c=c):
            if os.path.exists(os.path.join(enc_first, "encoder.pt")) and out != os.path.dirname(enc_first):
                shutil.copytree(enc_first, os.path.join(out, "encoder"), dirs_exist_ok=True)
            else:
                run_stage(c(), "encoder")

        runner.stage(f"{layout}.encoder", encoder)

        def sample_eval(folder, extra=(), c=c):
            cc = c(f"sample.teacher={folder}", *extra)
            run_stage(cc, "sample")
            run_stage(cc, "evaluate")

        runner.stage(f"{layout}.teacher.eval", lambda f=sample_eval: f("teacher_causal"))
        curves = ["distill.eval_steps=1"] if layout == "chunkwise" else ["distill.eval_every=0"]
        runner.stage(f"{layout}.tf_kd", lambda c=c: run_stage(c(*budget["kd"], f"distill.student_steps=[{max(budget['steps'])}]"), "tf_kd"))
        runner.stage(f"{layout}.tf_dcm", lambda c=c: run_stage(c(*budget["cm"], *curves), "tf_dcm"))
        runner.stage(f"{layout}.tf_scm", lambda c=c: run_stage(c(*budget["cm"], *curves), "tf_scm"))
        for init in ("tf_kd", "tf_dcm", "tf_scm"):
            for n in budget["steps"]:
                runner.stage(f"{layout}.{init}.eval{n}",
                             lambda f=sample_eval, init=init, n=n: f(init, (f"sample.student_steps=[{n}]",)))
                # the evaluate stage writes into the folder: keep one result per step count
                runner.stage(f"{layout}.{init}.keep{n}", lambda out=out, init=init, n=n: _keep(out, init, n))
        for init in INITS:
            for n in budget["steps"]:
                tag = f"from_{init}_{n}step"
                runner.stage(f"{layout}.sf_dmd.{tag}", lambda c=c, init=init, n=n, tag=tag: run_stage(
                    c(*budget["dmd"], f"distill.init={init}", f"distill.tag={tag}", f"distill.student_steps=[{n}]",
                      "distill.eval_every=0"), "sf_dmd"))
                runner.stage(f"{layout}.sf_dmd.{tag}.eval", lambda f=sample_eval, tag=tag: f(f"sf_dmd_{tag}"))


def _keep(out, folder, n):
    src = os.path.join(out, folder)
    dst = os.path.join(out, f"{folder}_eval{n}")
    os.makedirs(dst, exist_ok=True)
    for name in ("results.json", "results.md"):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    shutil.copy(os.path.join(src, "samples", "generated.png"), os.path.join(dst, "generated.png"))


def _half(src, dst):
    """Copy a filmstrip at half its size (2 screen pixels per pixel) in 128 colours: the committed
    results stay small (noisy samples compress badly; the palette halves them again)."""
    from PIL import Image
    img = Image.open(src).convert("RGB")
    img = img.resize((img.width // 2, img.height // 2), Image.NEAREST)
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(dst, optimize=True)


def _load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


TEACHER_FD_RATIO = 20   # a teacher further than this from the real floor draws noise or blobs, not sprites
METRICS = ("frechet_distance", "physics_error_px", "adherence_clip_exact", "drift_area")


def _row(results):
    if results is None:
        return None
    gen = results["generated"]["mean"]
    return {"frechet_distance": results["frechet_distance"], **{k: gen.get(k) for k in METRICS[1:]},
            "real_fd_floor": results["frechet_distance_real_floor"]}


def _fmt(x):
    return "-" if x is None else f"{x:.4g}"


def report(work: str, results_dir: str, budget: dict, layouts, failed=None):
    """table.md / table.json, the convergence curves, filmstrips, stage times."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.join(results_dir, "filmstrips"), exist_ok=True)
    table, lines = [], ["| layout | model | init | steps | FD | physics px | clip adherence | drift area |",
                        "|---|---|---|---|---|---|---|---|"]

    def add(layout, model, init, steps, folder, png):
        row = _row(_load(os.path.join(work, layout, folder, "results.json")))
        if row is None:
            lines.append(f"| {layout} | {model} | {init} | {steps} | not run | | | |")
            return
        table.append({"layout": layout, "model": model, "init": init, "steps": steps, **row})
        lines.append(f"| {layout} | {model} | {init} | {steps} | " + " | ".join(_fmt(row[k]) for k in METRICS) + " |")
        src = os.path.join(work, layout, folder, png)
        if os.path.exists(src):
            _half(src, os.path.join(results_dir, "filmstrips", f"{layout}_{folder}.png"))

    for layout in layouts:
        add(layout, "teacher", "-", "32 (Euler, CFG)", "teacher_causal", "samples/generated.png")
        for init in ("tf_kd", "tf_dcm", "tf_scm"):
            for n in budget["steps"]:
                add(layout, NAMES[init], "teacher", n, f"{init}_eval{n}", "generated.png")
        for init in INITS:
            for n in budget["steps"]:
                add(layout, "SF-DMD", "none (teacher)" if init == "teacher" else NAMES[init], n,
                    f"sf_dmd_from_{init}_{n}step", "samples/generated.png")
        src = os.path.join(work, layout, "teacher_causal", "samples", "real.png")
        if os.path.exists(src):
            _half(src, os.path.join(results_dir, "filmstrips", f"{layout}_real.png"))
    floor = next((r["real_fd_floor"] for r in table), None)
    with open(os.path.join(results_dir, "table.md"), "w") as f:
        f.write("# SF-DMD students by initialisation, steps and layout\n\n")
        f.write(f"Real-data Fréchet floor: {_fmt(floor)}. Lower FD, physics and drift are better; "
                "adherence is the share of clips whose scene matches the condition exactly.\n\n")
        for r in table:   # distillation can only be judged against a teacher that draws the world
            if r["model"] == "teacher" and r["frechet_distance"] > TEACHER_FD_RATIO * r["real_fd_floor"]:
                f.write(f"**Warning: the {r['layout']} teacher's FD is {r['frechet_distance'] / r['real_fd_floor']:.0f}x "
                        f"the real floor: it does not yet draw the world, and its students say little about "
                        f"the claims.**\n\n")
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(results_dir, "table.json"), "w") as f:
        json.dump(table, f, indent=1)

    curves = {}
    for layout in layouts:
        for stage in ("tf_scm", "tf_dcm"):
            m = _load(os.path.join(work, layout, stage, "train_metrics.json"))
            if m and m.get("evals"):
                curves[f"{layout} {stage}"] = {"evals": m["evals"], "ms_per_step": m["ms_per_step"]}
    if curves:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7))
        for name, c in curves.items():
            e = c["evals"]
            for row, key in enumerate(("fd", "physics_error_px")):
                axes[row, 0].plot([x["step"] for x in e], [x[key] for x in e], marker="o", label=name)
                axes[row, 1].plot([x["train_seconds"] for x in e], [x[key] for x in e], marker="o", label=name)
                axes[row, 0].set_xlabel("training step")
                axes[row, 1].set_xlabel("training seconds")
                for ax in axes[row]:
                    ax.set_ylabel(f"1-step {key}")
                    ax.grid(alpha=0.3)
                    ax.legend()
        fig.suptitle("TF-sCM vs TF-dCM, 1-step samples of the EMA student")
        fig.tight_layout()
        fig.savefig(os.path.join(results_dir, "scm_vs_dcm.png"), dpi=100)
        plt.close(fig)
    timing = {}
    for tag in ("reuse", "second"):   # measured in whichever layout ran the timing stages
        for lay in layouts:
            m = _load(os.path.join(work, lay, f"tf_scm_timing_{tag}", "train_metrics.json"))
            if m:
                timing[tag] = m["ms_per_step_after_5"]
                break
    stages = {}
    for name in sorted(os.listdir(os.path.join(work, ".done"))):
        stages[name] = _load(os.path.join(work, ".done", name))["seconds"]
    with open(os.path.join(results_dir, "curves_and_timing.json"), "w") as f:
        json.dump({"curves": curves, "scm_ms_per_step": timing, "stage_seconds": stages, "failed": failed or {},
                   "total_stage_seconds": sum(stages.values()),
                   "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}, f, indent=1)
    print(f"[repro] report in {results_dir}: {len(table)} rows, stages {sum(stages.values()):.0f}s", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=sorted(BUDGETS))
    ap.add_argument("--work", required=True, help="checkpoints and markers (keep it between pieces)")
    ap.add_argument("--results", required=True, help="where the table, curves and filmstrips go")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="start no stage after this many seconds, the first excepted (0: no limit)")
    ap.add_argument("--teacher-ckpt", default=None, help="a trained chunk-wise teacher_causal ckpt.pt to reuse")
    ap.add_argument("--layouts", default="chunkwise,framewise")
    ap.add_argument("--keep-going", action="store_true", help="record a failed stage and go on")
    ap.add_argument("--no-timing", action="store_true", help="skip the TF-sCM step-time stages")
    args = ap.parse_args(argv)
    budget = BUDGETS[args.preset]
    layouts = [x for x in args.layouts.split(",") if x]
    for x in layouts:
        if x not in budget["layouts"]:
            raise ValueError(f"--layouts entries must be among {sorted(budget['layouts'])}, got {x!r}")
    runner = Runner(args.work, args.budget_s, args.keep_going)
    plan(runner, args.preset, budget, args.teacher_ckpt, layouts, timing=not args.no_timing)
    report(args.work, args.results, budget, layouts, runner.failed)
    print("[repro] " + ("stopped on budget; rerun to continue" if runner.stopped else "all stages done"), flush=True)


if __name__ == "__main__":
    main()
