"""Where a kernel's warps wait, from ncu's per-instruction stall samples.

    ncu --set full --import-source yes -o rep python bench/profile_kernels.py W3 bwd --backends cuda
    ncu --import rep.ncu-rep --page source --csv --print-source sass > sass.csv
    python bench/ncu_stalls.py sass.csv                 # the kernel with the most samples
    python bench/ncu_stalls.py sass.csv --top 40 --kernel sm90

Prints the stall reasons over all samples, the samples per opcode, and the instructions with the
most samples (offset from the kernel's start, the two main reasons). `bench/gpu.sh ncu` takes
the report; this reads the source page that ncu exports from it (bench/NOTES_cuda.md uses it to
compare our backward with FlashAttention-4's).
"""
from __future__ import annotations

import argparse
import collections
import csv
import sys

SAMPLES = "Warp Stall Sampling (All Samples)"


def kernels(path: str) -> dict[str, list[list[str]]]:
    """Kernel name -> its rows (header first); the page holds one section per kernel."""
    out, name = {}, None
    for row in csv.reader(open(path)):
        if row and row[0] == "Kernel Name":
            name = row[1]
            out[name] = []
        elif name is not None and row:
            out[name].append(row)
    return out


def summary(rows: list[list[str]], top: int) -> str:
    header, data = rows[0], [r for r in rows[1:] if len(r) >= len(rows[0])]
    col = {n: i for i, n in enumerate(header)}
    reasons = [n for n in header if n.startswith("stall_") and "Not Issued" not in n]
    num = lambda r, n: int(r[col[n]] or 0)  # noqa: E731
    total = sum(num(r, SAMPLES) for r in data) or 1
    by_reason, by_op = collections.Counter(), collections.Counter()
    for r in data:
        words = r[col["Source"]].split()
        op = words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "?")
        by_op[op.split(".")[0]] += num(r, SAMPLES)
        for n in reasons:
            by_reason[n[len("stall_"):]] += num(r, n)
    lines = [f"samples {total}", "stall reasons:"]
    lines += [f"  {n:20} {v:9} {100 * v / total:5.1f} %" for n, v in by_reason.most_common(12)]
    lines.append("samples by opcode:")
    lines += [f"  {n:14} {v:9} {100 * v / total:5.1f} %" for n, v in by_op.most_common(15)]
    lines.append("instructions with the most samples (offset from the kernel's start):")
    start = int(data[0][col["Address"]], 16)
    for r in sorted(data, key=lambda r: -num(r, SAMPLES))[:top]:
        main = sorted(((num(r, n), n[len("stall_"):]) for n in reasons), reverse=True)[:2]
        why = ", ".join(f"{n} {v}" for v, n in main if v)
        lines.append(f"  {num(r, SAMPLES):8} {100 * num(r, SAMPLES) / total:5.1f} %  +{int(r[col['Address']], 16) - start:#07x}"
                     f"  {r[col['Source']].strip()[:62]:62}  {why}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="ncu --page source --csv --print-source sass output")
    ap.add_argument("--kernel", default="", help="a substring of the kernel's name (default: the most sampled)")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    found = {k: v for k, v in kernels(args.csv).items() if args.kernel in k and len(v) > 1}
    if not found:
        print(f"no kernel matching {args.kernel!r} with source rows in {args.csv}", file=sys.stderr)
        return 1
    name = max(found, key=lambda k: sum(int(r[found[k][0].index(SAMPLES)] or 0) for r in found[k][1:]
                                         if len(r) >= len(found[k][0])))
    print(f"kernel {name[:150]}")
    print(summary(found[name], args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
