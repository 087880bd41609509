"""A model of the fused backward's schedule on one GPU, to rank arrangements of the ordered
(deterministic) form before spending GPU time on them.

    python bench/simulate_ordered_dq.py                  # W1-W8, every arrangement
    python bench/simulate_ordered_dq.py W3 W5 --add-us 1.5
    python bench/simulate_ordered_dq.py --groups 2,4     # today's form with the key tiles in dQ groups

The ordered form adds each dQ tile in a fixed key-tile order: a block waits for its turn, adds,
and the next block may add once that add is complete. Three things decide what the waits cost:
the order the blocks are launched in, the order each block walks its query tiles, and the turn
order, which must follow the launch order (a block may only wait for blocks launched before it).
The model:
  - blocks are dispatched in launch order to `sms` SMs, one block each, as an SM frees;
  - a block's consumers take `step_us` per query tile (`partial_extra` more on a PARTIAL tile);
    they cannot stage a tile's dQ before the previous one was handed to the TMA unit;
  - the dQ add of a tile starts once it is staged and the previous turn's add is complete, and
    takes `add_us` (at d = 64 the two warpgroups' adds, one after the other: taken as one; each
    is 32 KB there, 128 query rows x 64 columns, against 16 KB per add at d = 128, so `add_us`
    fitted at d = 128 understates W8's);
  - the fast form adds without waiting;
  - with dQ groups each group of key tiles has its own turns per query tile (its own buffer).
Because every wait is on an earlier-launched block, the blocks can be simulated one by one in
launch order. `step_us` comes from the fast form's measured time; `add_us` is the one free
parameter (bench/NOTES_cuda.md item 19 compares the arrangements measured so far).
"""
from __future__ import annotations

import argparse
import heapq
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):   # run as a script: the repository root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench  # noqa: F401,E402  (makes jvp_flash_attn importable from a checkout)
from bench.workloads import select  # noqa: E402

BLOCK_N = 128   # the fused backward's key tiles (jfa/tile_shapes.h, Walk::kBwdFused)


def block_m(head_dim: int) -> int:
    """The fused backward's query rows per step at a tile head dim (the larger of q/k's and v's):
    128 at d = 64, 64 at d = 128 (jfa/tile_shapes.h, Walk::kBwdFused)."""
    return 128 if head_dim <= 64 else 64

# Fast-form backward times measured on the H200 (ms; h200_runs_ordered_dq_2026-11-30/
# same_run_with_fa4): they set the model's time per step (W8's with 64-query steps, spread here
# over its 128-query steps).
FAST_MS = {"W1": 32.665, "W2": 35.574, "W3": 16.131, "W4": 17.656, "W5": 50.807, "W6": 30.540, "W7": 4.543,
           "W8": 15.052}


@dataclass(frozen=True)
class Arrangement:
    """launch: key tiles 'ascending' or 'descending' per (batch, head) row; walk: each key tile's
    query tiles 'full_first' (FULL ones, then PARTIAL, each ascending), 'ascending' or
    'descending'; release: when the dQ warp counts a tile's semaphore up, 'at_once' (it waits for
    the add to complete before the next step: it handles a step per add at most), 'next_step'
    (at its next step, once that step is staged: the add completes meanwhile), 'two_warps' (two
    warps take the steps in turn, each counting its own adds up once complete) or None (the
    fast form: no turns)."""
    name: str
    launch: str
    walk: str
    release: str | None = "at_once"
    groups: int = 1          # dQ buffers, each with its own turns (key_tile_groups)
    group_layout: str = "interleaved"   # key_tile_groups: 'interleaved' (u mod G, the kernel's), 'contiguous', 'cyclic'


ARRANGEMENTS = (
    Arrangement("fast", "ascending", "full_first", release=None),
    Arrangement("lowest-first, full-first walk (item 19 a)", "ascending", "full_first"),
    Arrangement("highest-first, ascending walk (item 19 d, now)", "descending", "ascending"),
    Arrangement("lowest-first, descending walk", "ascending", "descending"),
    Arrangement("highest-first, ascending walk, release at the next step", "descending", "ascending", "next_step"),
    Arrangement("highest-first, ascending walk, two dQ warps", "descending", "ascending", "two_warps"),
)


def key_tile_groups(num_k_tiles: int, groups: int, layout: str, longest: int) -> np.ndarray:
    """The dQ group (buffer and turns) of each key tile. 'contiguous': G runs of ceil(K / G) key
    tiles; 'cyclic': runs of ceil(longest chain / G) key tiles dealt to the groups in turn (a
    banded mask's chain then spans every group); 'interleaved': key tile u to group u mod G (what
    the kernel does, csrc/jfa/params.h dq_groups)."""
    if groups <= 1:
        return np.zeros(num_k_tiles, np.int64)
    run = {"contiguous": -(-num_k_tiles // groups), "cyclic": max(1, -(-longest // groups)), "interleaved": 1}[layout]
    return (np.arange(num_k_tiles) // run) % groups


def key_tile_walks(mask, walk: str, bm: int) -> list[list[tuple[int, bool]]]:
    """Per key tile, its (query tile, partial) steps in the walk's order, query tiles of bm rows."""
    t = mask.tiles(bm, BLOCK_N)
    fp, fi = t.k_full_ptr.numpy(), t.k_full_idx.numpy()
    pp, pi = t.k_part_ptr.numpy(), t.k_part_idx.numpy()
    out = []
    for u in range(t.num_k_tiles):
        full = [(int(m), False) for m in fi[fp[u]:fp[u + 1]]]
        part = [(int(m), True) for m in pi[pp[u]:pp[u + 1]]]
        if walk == "full_first":
            steps = full + part
        else:
            steps = sorted(full + part, reverse=walk == "descending")
        out.append(steps)
    return out


def simulate(walks, heads: int, arrangement: Arrangement, step_us: float, add_us: float, partial_extra: float,
             sms: int, group_of=None) -> float:
    """The modelled time (µs) of one backward: every (head, key tile) block in launch order."""
    order = range(len(walks)) if arrangement.launch == "ascending" else range(len(walks) - 1, -1, -1)
    free = [0.0] * sms
    done: dict[tuple[int, int, int], float] = {}   # (group, head, query tile) -> when its last add completed
    if group_of is None:
        group_of = np.zeros(len(walks), np.int64)
    end_all = 0.0
    for h in range(heads):
        for u in order:
            start = heapq.heappop(free)
            g = int(group_of[u])
            staged = issued = start
            warp_free = [start, start]   # when each dQ warp may take a step (two_warps uses both)
            held = None   # next_step: the tile whose add was issued last and is not yet counted up
            for s, (m, partial) in enumerate(walks[u]):
                # the consumers stage a tile once it is computed and the previous one was read
                staged = max(staged + step_us * (1 + partial_extra * partial), issued)
                if arrangement.release is None:
                    issued = staged
                    continue
                warp = s % 2 if arrangement.release == "two_warps" else 0
                ready = max(staged, warp_free[warp])
                if arrangement.release == "next_step" and held is not None:
                    ready = max(ready, issued + add_us)   # the previous add completes, then its turn passes
                    done[held] = ready
                issued = max(ready, done.get((g, h, m), 0.0))
                if arrangement.release == "next_step":
                    held = (g, h, m)
                else:
                    done[(g, h, m)] = warp_free[warp] = issued + add_us
            if held is not None:
                done[held] = max(staged, issued + add_us)
            end = max(staged, issued + add_us)
            end_all = max(end_all, end)
            heapq.heappush(free, end)
    return end_all


NOW = Arrangement("highest-first, ascending walk, two dQ warps", "descending", "ascending", "two_warps")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workloads", nargs="*", default=list(FAST_MS))
    ap.add_argument("--add-us", type=float, default=3.0,
                    help="one dQ tile's add, issue to completion (µs); 3 reproduces the measured W6")
    ap.add_argument("--partial-extra", type=float, default=0.1, help="extra time of a PARTIAL step (fraction)")
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--groups", default=None,
                    help="e.g. 1,2,3,4: instead of the arrangements, today's (two dQ warps) with the key tiles "
                         "split into that many dQ buffers, contiguous and cyclic")
    args = ap.parse_args(argv)
    if args.groups:
        arrangements = [NOW]
        arrangements += [Arrangement(f"G = {g} {lay}", NOW.launch, NOW.walk, NOW.release, g, lay)
                         for g in (int(x) for x in args.groups.split(",")) if g > 1 for lay in ("contiguous", "interleaved")]
    else:
        arrangements = list(ARRANGEMENTS)
    names = ["fast"] + [a.name for a in arrangements if a.release is not None]
    if arrangements[0].release is not None:
        arrangements.insert(0, ARRANGEMENTS[0])
    print(f"modelled time relative to the fast form (add {args.add_us} µs, partial step +{args.partial_extra:.0%})")
    print("| workload | " + " | ".join(names[1:]) + " |")
    print("|---|" + "---|" * (len(names) - 1))
    for w in select(",".join(args.workloads)):
        mask = w.mask()
        bm = block_m(max(w.d_qk, w.d_v))
        walks = {a.walk: key_tile_walks(mask, a.walk, bm) for a in arrangements}
        t = mask.tiles(bm, BLOCK_N)
        longest = int((t.state != 0).sum(axis=1).max())
        steps = sum(len(s) for s in walks["full_first"]) * w.heads
        partial = sum(p for s in walks["full_first"] for _, p in s) * w.heads
        # the fast form's measured time spread over the SMs' steps
        step_us = FAST_MS[w.id] * 1e3 * args.sms / (steps + args.partial_extra * partial)
        times = [simulate(walks[a.walk], w.heads, a, step_us, args.add_us, args.partial_extra, args.sms,
                          key_tile_groups(t.num_k_tiles, a.groups, a.group_layout, longest))
                 for a in arrangements]
        print(f"| {w.id} | " + " | ".join(f"{times[0] / t:.2f}" for t in times[1:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
