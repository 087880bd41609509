"""Tables and charts from bench.run's CSV files; merges several runs into one report.

``python -m bench.report DIR [DIR ...] --out DIR`` reads each DIR/results.csv (measurements)
and DIR/notes.csv (skipped cases, failed checks, errors) and writes results.csv, notes.csv,
results.md (each of our rows against the fastest peer, and against FlexAttention) and results.png under --out. A full W1-W8
suite that does not fit one device call can so be run in parts and reported as one.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CSV_FIELDS = ("op", "provider", "workload", "sq", "sk", "batch", "heads", "d_qk", "d_v", "dtype",
              "pairs", "ms_p20", "ms_p50", "ms_p80", "tflops", "peak_mem_mib", "check",
              "gpu", "torch", "triton", "cuda", "fa4", "git_sha", "date", "scale")
NOTE_FIELDS = ("workload", "op", "provider", "kind", "reason")  # kind: skipped, failed, error
ENV_FIELDS = ("gpu", "torch", "triton", "cuda", "fa4", "git_sha", "date")
OPS = ("fwd", "bwd", "jvp", "jvp_hinted")
# Op names that older results.csv / notes.csv files under bench/results/ hold, and what they are now
# (jvp_zt: the hinted JVP). load() reads them under the current name.
OLD_OP_NAMES = {"jvp_zt": "jvp_hinted"}
_FLOATS = ("ms_p20", "ms_p50", "ms_p80", "tflops", "peak_mem_mib")


def _num(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def csv_row(r: dict) -> dict:
    """A measurement as written to results.csv."""
    out = {k: r.get(k, "") for k in CSV_FIELDS}
    for k in ("ms_p20", "ms_p50", "ms_p80", "tflops"):
        out[k] = f"{r[k]:.4f}"
    mem = r["peak_mem_mib"]
    out["peak_mem_mib"] = f"{mem:.0f}" if mem == mem else ""
    return out


def load(dirs) -> tuple[list[dict], list[tuple]]:
    rows, notes = [], []
    for d in map(Path, dirs):
        with open(d / "results.csv", newline="") as f:
            for r in csv.DictReader(f):
                for k in _FLOATS:
                    r[k] = float(r[k]) if r[k] != "" else float("nan")
                for k in ("sq", "sk", "batch", "heads", "d_qk", "d_v", "pairs"):
                    r[k] = int(r[k])
                r["op"] = OLD_OP_NAMES.get(r["op"], r["op"])
                rows.append(r)
        if (d / "notes.csv").exists():
            with open(d / "notes.csv", newline="") as f:
                for n in csv.DictReader(f):
                    n["op"] = OLD_OP_NAMES.get(n["op"], n["op"])
                    notes.append(tuple(n[k] for k in NOTE_FIELDS))
    return rows, notes


def write(out: Path, rows, notes):
    with open(out / "results.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        wr.writeheader()
        wr.writerows(csv_row(r) for r in rows)
    write_notes(out / "notes.csv", notes)


def write_notes(path, notes):
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(NOTE_FIELDS)
        wr.writerows(notes)


def _order(rows):
    wl = lambda r: int(r["workload"][1:]) if r["workload"][1:].isdigit() else 0
    return sorted(rows, key=lambda r: (OPS.index(r["op"]) if r["op"] in OPS else 9, wl(r)))


# the rest are peers; cuda-plain is the sm_90a cp.async forward as older runs under bench/results/ name it
OURS = ("cuda", "cuda-fused", "cuda-deterministic", "cuda-two-kernel", "cuda-plain", "triton", "reference")

# performance goals: (op, workloads, what, target); "vs peer" is the fastest peer's p50 / ours.
ALL = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8")
GOALS = (("fwd", ALL, "vs peer", 1.0),
         ("bwd", ALL, "vs peer", 1.0),
         ("jvp", ("W1", "W2", "W3", "W4"), "TFLOP/s", 700.0),
         ("jvp_hinted", ("W1",), "ms", 22.0))


def fastest_peers(rows) -> dict:
    """(op, workload) -> (provider, ms p50) of the fastest peer (any provider not ours)."""
    best = {}
    for r in rows:
        key = (r["op"], r["workload"])
        if r["provider"] not in OURS and (key not in best or r["ms_p50"] < best[key][1]):
            best[key] = (r["provider"], r["ms_p50"])
    return best


def _flex(rows) -> dict:
    return {(r["op"], r["workload"]): r["ms_p50"] for r in rows if r["provider"] == "flex"}


def goals(rows) -> list[str]:
    """Markdown lines: each of our measurements that a performance goal covers, met or not."""
    peers = fastest_peers(rows)
    out = []
    for op, wls, what, target in GOALS:
        for r in _order(rows):
            if r["op"] != op or r["workload"] not in wls or r["provider"] not in OURS:
                continue
            if what == "vs peer":
                if (op, r["workload"]) not in peers:
                    continue
                name, ms = peers[(op, r["workload"])]
                value = ms / r["ms_p50"]
                met = value >= target
                shown, goal = f"{value:.2f}x {name}", f">= {target}x fastest peer"
            elif what == "TFLOP/s":
                value = r["tflops"]
                met, shown, goal = value >= target, f"{value:.0f} TFLOP/s", f">= {target:.0f} TFLOP/s"
            else:
                value = r["ms_p50"]
                met, shown, goal = value <= target, f"{value:.1f} ms", f"<= {target:.0f} ms"
            out.append(f"| {op} | {r['workload']} | {r['provider']} | {shown} | {goal} | "
                       f"{'met' if met else 'missed'} |")
    return out


def peer_summary(rows, ours: str = "cuda") -> list[str]:
    """Markdown table: per op (rows) and workload (columns), ``ours`` p50 against the fastest
    peer's, as 'ratio (peer)'; above 1 means ours is faster."""
    peers = fastest_peers(rows)
    mine = {(r["op"], r["workload"]): r["ms_p50"] for r in rows if r["provider"] == ours}
    wls = [w for w in ALL if any(k[1] == w for k in mine)]
    out = []
    for op in OPS:
        cells = []
        for w in wls:
            if (op, w) in mine and (op, w) in peers:
                name, ms = peers[(op, w)]
                cells.append(f"{ms / mine[(op, w)]:.2f} ({name})")
            else:
                cells.append("-")
        if any(c != "-" for c in cells):
            out.append(f"| {op} | " + " | ".join(cells) + " |")
    if not out:
        return []
    return [f"| {ours} / fastest peer | " + " | ".join(wls) + " |", "|---" * (len(wls) + 1) + "|", *out]


def markdown(rows, notes, env: dict, scale, interrupted: bool = False) -> str:
    flex, peers = _flex(rows), fastest_peers(rows)
    head = ", ".join(f"{k} {env[k]}" for k in ENV_FIELDS if env.get(k))
    out = [f"# Benchmark, {env.get('date', '')}", "",
           f"{head}, scale {scale}. Method: top of bench/run.py. TFLOP/s from exact allowed pairs "
           "at p50. 'vs fastest peer' = the fastest other provider's p50 / this p50, that provider "
           "named; 'vs flex' = FlexAttention (Triton) p50 / this p50. Above 1: this row is faster. "
           "No peer has a JVP.", ""]
    summary = peer_summary(rows)
    if summary:
        out += summary + [""]
    out += ["| op | workload | Sq x Sk | provider | ms p50 (p20-p80) | TFLOP/s | peak MiB | vs fastest peer | vs flex |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in _order(rows):
        key = (r["op"], r["workload"])
        fx = flex.get(key)
        vs_flex = f"{fx / r['ms_p50']:.2f}x" if fx and r["provider"] != "flex" else "-"
        vs_peer = "-"
        if r["provider"] in OURS and key in peers:
            vs_peer = f"{peers[key][1] / r['ms_p50']:.2f}x {peers[key][0]}"
        mem = f"{r['peak_mem_mib']:.0f}" if r["peak_mem_mib"] == r["peak_mem_mib"] else "-"
        out.append(f"| {r['op']} | {r['workload']} | {r['sq']} x {r['sk']} | {r['provider']} | "
                   f"{r['ms_p50']:.3f} ({r['ms_p20']:.3f}-{r['ms_p80']:.3f}) | {_num(r['tflops'])} | {mem} | "
                   f"{vs_peer} | {vs_flex} |")
    if interrupted:
        out += ["", "**Stopped before the end: cases after the last row were not run.**"]
    met = goals(rows) if str(scale) in ("1", "1.0") else []
    if met:
        out += ["", "## Performance goals (docs/design/benchmarks.md)", "", "| op | workload | provider | measured | goal | |",
                "|---|---|---|---|---|---|", *met]
    for kind, title in (("failed", "Failed correctness checks (not timed)"), ("error", "Errors (not timed)"),
                        ("skipped", "Skipped")):
        these = [n for n in notes if n[3] == kind]
        if these:
            out += ["", f"## {title}", ""]
            out += [f"- {w} {op} {p}: {why}" for w, op, p, _, why in these]
    return "\n".join(out) + "\n"


# One color per provider across every panel and run (older runs' providers keep theirs).
COLORS = {"cuda": "tab:blue", "triton": "tab:orange", "reference": "tab:gray", "flex": "tab:green", "sdpa": "tab:red",
          "math-jvp": "tab:purple", "cuda-fused": "tab:cyan", "cuda-deterministic": "tab:olive",
          "cuda-two-kernel": "darkkhaki", "cuda-plain": "tab:pink", "flex-flash": "black", "cudnn": "tab:brown"}


def _color(provider: str) -> str:
    return COLORS.get(provider, "lightgray")


def chart(path, rows, env: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in OPS if any(r["op"] == op for r in rows)]
    fig, axes = plt.subplots(len(ops), 1, figsize=(12, 3.2 * max(1, len(ops))), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        rs = _order([r for r in rows if r["op"] == op])
        wls = list(dict.fromkeys(r["workload"] for r in rs))
        provs = list(dict.fromkeys(r["provider"] for r in rs))
        width = 0.8 / len(provs)
        for i, p in enumerate(provs):
            vals = {r["workload"]: r["tflops"] for r in rs if r["provider"] == p}
            xs = [j + (i - (len(provs) - 1) / 2) * width for j, wl in enumerate(wls) if wl in vals]
            ax.bar(xs, [vals[wl] for wl in wls if wl in vals], width, label=p, color=_color(p))
        ax.set_xticks(range(len(wls)), wls)
        ax.set_ylabel("TFLOP/s (exact pairs)")
        ax.set_title(op)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))  # beside, never on a bar
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(", ".join(f"{k} {env[k]}" for k in ("gpu", "torch", "triton", "git_sha") if env.get(k)),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="folders written by bench.run")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows, notes = load(args.dirs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write(out, rows, notes)
    env = {k: " / ".join(dict.fromkeys(r[k] for r in rows)) for k in ENV_FIELDS} if rows else {}
    scale = " / ".join(dict.fromkeys(r["scale"] for r in rows)) if rows else ""
    (out / "results.md").write_text(markdown(rows, notes, env, scale))
    if rows:
        chart(out / "results.png", rows, env)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
