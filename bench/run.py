"""Benchmark runner (docs/design/benchmarks.md): ``python -m bench.run`` (or ``python bench/run.py``).

Method
------
- Workloads W1-W8 (bench/workloads.py): bf16, B=1, H=12, D=128, 1560 tokens per frame,
  21 frames, unless ``--scale`` shrinks the tokens per frame (same mask structure).
- Inputs are drawn fresh from N(0, 1) for every measurement (seed printed), never zeros.
- Correctness before any time: each (provider, op, workload) is first run on a small mask
  of the same structure (``--check-tokens`` per frame) and every output (o; dq, dk, dv;
  o, to) is compared with the float64 reference; then the full-size run's row-local
  outputs (o, dq, to) are compared on three row slices with a float64 computation of those
  rows. Rule (docs/design/numerics.md): relative error <= 2 x the error of the reference in the same dtype
  + 1e-4. A provider that fails is reported and not timed; the exit status is then 1.
- Timing on a GPU: ``triton.testing.do_bench`` (CUDA events, L2 cleared before each call,
  ``--warmup-ms`` of warm-up, ``--rep-ms`` of repeats), reporting the 20th, 50th and 80th
  percentiles. On a CPU (smoke runs only): host clock; the checked call is the warm-up, then
  at least two calls, more while ``--rep-ms`` lasts.
- ``bwd`` times the backward alone (autograd.grad of a stored forward, retain_graph);
  ``jvp`` times one call returning o and its tangent; ``fwd`` runs under no_grad.
  ``jvp_hinted`` (teacher-forcing workloads W1, W2) is ``jvp`` with the clean half's tangents
  zero and the mask's zero-tangent hint (goal: W1 <= 22 ms); FLOPs as ``jvp``.
- FLOPs count exact allowed pairs P = mask.num_pairs x B x H: forward 2 P (Dqk + Dv),
  backward 2.5x, fused forward+JVP 3x (jvp_flash_attn.reference.flops). TFLOP/s uses p50.
- Peak memory: torch.cuda.max_memory_allocated from the drawn inputs through preparing the
  op (block masks, dense masks, the stored forward of bwd) and one call, in MiB.
- Peers run as their users run them (bench/providers.py, bench/flex.py): FlexAttention with
  the mask_mod written from the frame pattern, on its Triton kernels and on FlashAttention-4's.
- Output under ``--out``: results.csv (one row per measurement with the machine header),
  notes.csv (skipped cases, failed checks, errors, with the reason), results.md (a summary of
  cuda against the fastest peer per op and workload, then every row against the fastest peer,
  named, and against FlexAttention, then the performance goals and the notes), results.png (TFLOP/s per workload, one panel per op). The CSV is written row by
  row, and an interrupted run (Ctrl-C, ``timeout -s INT``) still writes the table and chart.
- Exit status 1 if a check failed, one of our backends raised, or the run was interrupted;
  errors of the other providers (e.g. FlexAttention has no CPU backward) are reported only.
"""
from __future__ import annotations

import argparse
import csv
import gc
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import bench
from bench import check, machine, providers, report, workloads
from bench.providers import Inputs
from jvp_flash_attn.reference import flops

CHECK_TOKENS = 52          # tokens per frame of the small same-structure check mask
SMALL_CHECK_PAIRS = 1 << 22  # at or below Sq*Sk, the full-size run is checked whole
QUANTILES = (0.2, 0.5, 0.8)
RUN_OPS = ("fwd", "bwd", "jvp", "jvp_hinted")
GPU_DEFAULT = ("cuda", "triton", "flex", "flex-flash", "cudnn", "sdpa", "math-jvp")
CPU_DEFAULT = ("reference", "triton")
CPU_SCALE = 0.005          # 8 tokens per frame: a CPU run is a smoke run


def log(msg: str):
    print(msg, flush=True)


# ---- timing -----------------------------------------------------------------------------
def time_fn(fn, device, warmup_ms: float, rep_ms: float) -> list[float]:
    """[p20, p50, p80] in milliseconds."""
    if device.type == "cuda":
        from triton.testing import do_bench
        return [float(x) for x in do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES))]
    times, start = [], time.perf_counter()  # the checked call before this was the warm-up
    while len(times) < 2 or (time.perf_counter() - start < rep_ms / 1e3 and len(times) < 100):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = torch.quantile(torch.tensor(times, dtype=torch.float64), torch.tensor(QUANTILES, dtype=torch.float64))
    return q.tolist()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# ---- one measurement --------------------------------------------------------------------
class Skip(Exception):
    pass


class CheckFailed(Exception):
    pass


def _draw(w, recipe, device, gen, op):
    mask = recipe.build()  # the builders cache it: the same mask object every call
    inp = Inputs.draw(mask, w.batch, w.heads, w.heads, w.d_qk, w.d_v, w.dtype, device, gen, recipe)
    return inp.with_zero_tangents(*w.zero_tangent_ranges(mask)) if op == "jvp_hinted" else inp


def measure(prov, op, w, recipe, check_recipe, args, device, gen) -> dict:
    """Check, then time one (provider, op, workload); raises Skip or CheckFailed."""
    tag = f"[{w.id} {op} {prov.name}]"
    mask = recipe.build()
    whole = mask.sq * mask.sk <= SMALL_CHECK_PAIRS
    notes = []
    kind = "jvp" if op == "jvp_hinted" else op  # what the provider runs and the checks compare
    inp = _draw(w, recipe, device, gen, op)
    why = prov.unsupported(kind, inp)
    if why:
        raise Skip(why)
    if not whole and args.check in ("small", "both"):
        small = _draw(w, check_recipe, device, gen, op)
        prep = prov.prepare(kind, small)
        ok, msg = check.check_small(kind, small, prep.outputs(prep.fn()))
        log(f"{tag} check, small mask {small.mask.sq}x{small.mask.sk}: {msg}")
        if not ok:
            raise CheckFailed(f"small-mask check: {msg}")
        notes.append("small-mask ok")
        del prep, small
        _free(device)
    if device.type == "cuda":  # the peak starts from what is allocated now: the inputs
        torch.cuda.reset_peak_memory_stats(device)
    prep = prov.prepare(kind, inp)
    outs = prep.outputs(prep.fn())
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    if whole:
        ok, msg = check.check_small(kind, inp, outs)
        label = f"whole output {mask.sq}x{mask.sk}"
    elif args.check in ("rows", "both"):
        ok, msg = check.check_rows(kind, inp, outs)
        label = "row slices"
    else:
        ok, msg = True, "not checked at full size"
        label = "full size"
    log(f"{tag} check, {label}: {msg}")
    if not ok:
        raise CheckFailed(f"{label} check: {msg}")
    if whole or args.check != "small":
        notes.append("whole ok" if whole else "rows ok")
    del outs
    # rounded as results.csv holds them, so bench.report remakes the same table from the CSV
    p20, p50, p80 = (round(t, 4) for t in time_fn(prep.fn, device, args.warmup_ms, args.rep_ms))
    f = flops(mask, w.batch, w.heads, w.d_qk, w.d_v, kind)
    row = {"op": op, "provider": prov.name, "workload": w.id, "sq": mask.sq, "sk": mask.sk,
           "batch": w.batch, "heads": w.heads, "d_qk": w.d_qk, "d_v": w.d_v,
           "dtype": str(w.dtype).replace("torch.", ""), "pairs": mask.num_pairs,
           "ms_p20": p20, "ms_p50": p50, "ms_p80": p80, "tflops": round(f / (p50 * 1e-3) / 1e12, 4),
           "peak_mem_mib": round(peak) if peak == peak else peak, "check": "; ".join(n for n in notes if n)}
    log(f"{tag} {p50:9.3f} ms (p20 {p20:.3f}, p80 {p80:.3f})  {row['tflops']:8.2f} TFLOP/s  "
        f"peak {peak:.0f} MiB")
    return row


# ---- outputs ----------------------------------------------------------------------------
class CsvLog:
    """results.csv, one row appended and flushed per measurement, so a run that is stopped
    (Ctrl-C, a time limit) keeps what it measured."""

    def __init__(self, path, env, scale):
        self.f = open(path, "w", newline="")
        self.wr = csv.DictWriter(self.f, fieldnames=report.CSV_FIELDS)
        self.wr.writeheader()
        self.extra = {**env, "scale": scale}

    def add(self, r):
        self.wr.writerow(report.csv_row({**r, **self.extra}))
        self.f.flush()

    def close(self):
        self.f.close()


# ---- main -------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Method: see the top of bench/run.py.")
    ap.add_argument("--workloads", default="all", help="comma-separated ids, e.g. W1,W3 (default all)")
    ap.add_argument("--ops", default=",".join(RUN_OPS),
                    help="comma-separated from fwd,bwd,jvp,jvp_hinted (jvp_hinted: the fused JVP of a teacher-"
                         "forcing workload with zero tangents on the clean half and the mask's hint)")
    ap.add_argument("--providers", default=None,
                    help=f"comma-separated from {','.join(providers.NAMES)} (default on a GPU: "
                         f"{','.join(GPU_DEFAULT)}, the reference being the slow oracle; on a CPU: "
                         f"{','.join(CPU_DEFAULT)})")
    ap.add_argument("--out", default=None,
                    help="output folder (default out/bench_<date-time>, ignored by git; copy a run "
                         "worth keeping to bench/results/)")
    ap.add_argument("--scale", type=float, default=None,
                    help=f"fraction of 1560 tokens per frame (default 1 on a GPU, {CPU_SCALE} on a CPU)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default cuda when available)")
    ap.add_argument("--check", choices=("both", "small", "rows"), default="both",
                    help="correctness checks before timing (default both)")
    ap.add_argument("--check-tokens", type=int, default=CHECK_TOKENS,
                    help="tokens per frame of the small same-structure check mask")
    ap.add_argument("--warmup-ms", type=float, default=50.0)
    ap.add_argument("--rep-ms", type=float, default=400.0)
    ap.add_argument("--seed", type=int, default=None, help="default: drawn at random and printed")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.scale is None:
        args.scale = 1.0 if device.type == "cuda" else CPU_SCALE
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = set(ops) - set(RUN_OPS)
    if bad:
        raise SystemExit(f"--ops: unknown {sorted(bad)}; known: {','.join(RUN_OPS)}")
    wls = workloads.select(args.workloads)
    registry = providers.all_providers()
    names = args.providers or ",".join(GPU_DEFAULT if device.type == "cuda" else CPU_DEFAULT)
    names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SystemExit(f"--providers: unknown {unknown}; known: {','.join(registry)}")
    env = machine.environment(device)
    stamp = env["date"].replace("-", "").replace(":", "").rstrip("Z")
    out = Path(args.out or bench.ROOT / "out" / f"bench_{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator(device=device).manual_seed(seed)
    if any(n.startswith("flex") for n in names):
        import torch._dynamo.config as dc
        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(dc, knob):
                setattr(dc, knob, max(getattr(dc, knob), 256))
    log(f"bench.run: {env['gpu']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
        f"git {env['git_sha']}, seed {seed}, scale {args.scale}, out {out}")

    active = []
    notes, rows = [], []
    for n in names:
        why = registry[n].availability(device)
        if why:
            log(f"skip provider {n}: {why}")
            notes.append(("all", "all", n, "skipped", why))
        else:
            active.append(registry[n])
    check_scale = min(args.scale, args.check_tokens / workloads.TOKENS_PER_FRAME)
    t_start = time.perf_counter()
    table = CsvLog(out / "results.csv", env, args.scale)
    interrupted = False
    try:
        for w in wls:
            recipe, check_recipe = w.recipe(args.scale), w.recipe(check_scale)
            mask = recipe.build()
            log(f"== {w.id}: {w.description}; Sq {mask.sq}, Sk {mask.sk}, B {w.batch}, H {w.heads}, "
                f"Dqk {w.d_qk}, Dv {w.d_v}, pairs {mask.num_pairs} ({mask.num_pairs / (mask.sq * mask.sk):.3f})")
            for op in ops:
                if op == "jvp_hinted" and w.zero_tangent_ranges(mask) is None:
                    continue  # only teacher forcing has a zero-tangent half
                for prov in active:
                    if ("jvp" if op == "jvp_hinted" else op) not in prov.ops:
                        continue
                    case = (w.id, op, prov.name)
                    try:
                        rows.append(measure(prov, op, w, recipe, check_recipe, args, device, gen))
                        table.add(rows[-1])
                    except Skip as e:
                        log(f"[{w.id} {op} {prov.name}] skipped: {e}")
                        notes.append((*case, "skipped", str(e)))
                    except CheckFailed as e:
                        log(f"[{w.id} {op} {prov.name}] CHECK FAILED, not timed: {e}")
                        notes.append((*case, "failed", str(e)))
                    except Exception as e:  # an OOM is a skip; any other error is reported
                        first = str(e).splitlines()[0][:300] if str(e) else ""
                        if _is_oom(e):
                            log(f"[{w.id} {op} {prov.name}] skipped: out of memory ({first[:160]})")
                            notes.append((*case, "skipped", f"out of memory ({first[:160]})"))
                        else:
                            log(f"[{w.id} {op} {prov.name}] ERROR: {type(e).__name__}: {first}")
                            notes.append((*case, "error", f"{type(e).__name__}: {first}"))
                    finally:
                        _free(device)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: writing what was measured")
    finally:
        table.close()
    report.write_notes(out / "notes.csv", notes)
    (out / "results.md").write_text(report.markdown(rows, notes, env, args.scale, interrupted))
    charted = False
    if rows:
        try:
            report.chart(out / "results.png", rows, env)
            charted = True
        except ImportError as e:  # the device image may lack matplotlib; the CSV is enough
            log(f"no chart ({e}); make it elsewhere: python -m bench.report {out} --out DIR")
    count = {k: sum(n[3] == k for n in notes) for k in ("skipped", "failed", "error")}
    log(f"\n{len(rows)} measurements, {count['skipped']} skipped, {count['failed']} failed checks, "
        f"{count['error']} errors, {time.perf_counter() - t_start:.1f} s; wrote {out}/results.csv, "
        "notes.csv, results.md" + (", results.png" if charted else ""))
    log((out / "results.md").read_text())
    # A wrong result anywhere, or an error in one of our own backends, fails the run;
    # errors of the other providers (say FlexAttention's backward on a CPU) are reported only.
    ours = {*report.OURS, "reference"}
    bad = any(k == "failed" or (k == "error" and p in ours) for _, _, p, k, _ in notes)
    return 1 if bad or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
