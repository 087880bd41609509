"""Host-side mask building, timed: ``pytest bench/bench_masks.py`` or ``python bench/bench_masks.py``.

What is timed is a fresh build, as a training step that misses the cache would pay it:
the builders' lru caches are cleared and a new FramePattern is made on every call, then
the SegmentMask, its exact pair count and its 128 x 128 TileDescription (on the host)
are built. Equal masks share their caches, so no mask of an earlier call may stay alive:
a build returns only the pair count. The median must stay under LIMIT_MS (goal: under 5 ms for W1, docs/design/benchmarks.md); a slower
build fails the test and makes the script exit with status 1. The same limit guards the
other workloads against regressions, except W5 (1.5x the tokens and 2.25x the tiles of W1,
no goal set), which is timed and printed only. Time it on a quiet machine: a loaded
host (other jobs on few cores) can multiply the numbers.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script or collected by pytest from bench/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest

import bench  # noqa: F401
from bench import workloads
from jvp_flash_attn.masks import builders

LIMIT_MS = 5.0
UNLIMITED = {"W5"}
TILE = 128
_CACHED = (builders._full, builders._block_causal, builders._teacher_forcing, builders._kv_cache,
           builders._from_segments)


def fresh_build(workload: workloads.Workload, scale: float = 1.0) -> int:
    """Build ``workload``'s mask and tile description with every cache emptied first; return
    the pair count (the mask is dropped, so the next build finds no equal mask alive)."""
    for f in _CACHED:
        f.cache_clear()
    mask = workload.mask(scale)
    mask.tiles(TILE, TILE, "cpu")
    return mask.num_pairs


def median_ms(fn, repeats: int = 50, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def describe(mask, tiles) -> str:
    n = tiles.num_q_tiles * tiles.num_k_tiles
    empty = n - tiles.num_full - tiles.num_partial
    return (f"{mask!r}\n  {TILE}x{TILE} tiles: {tiles.num_q_tiles} x {tiles.num_k_tiles} = {n}; "
            f"full {tiles.num_full}, partial {tiles.num_partial}, empty {empty} "
            f"({empty / n:.1%} never visited); most tiles in a query row {tiles.max_tiles_per_q_tile()}")


@pytest.mark.parametrize("wid", list(workloads.WORKLOADS))
def test_mask_build(benchmark, wid):
    w = workloads.WORKLOADS[wid]
    pairs = benchmark.pedantic(fresh_build, args=(w,), rounds=50, warmup_rounds=3)
    assert pairs == w.mask().num_pairs > 0
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median * 1e3 if stats is not None else median_ms(lambda: fresh_build(w))
    assert wid in UNLIMITED or median < LIMIT_MS, f"{wid} mask + tile build median {median:.2f} ms >= {LIMIT_MS} ms"


def main() -> int:
    status = 0
    for wid in sys.argv[1:] or ["W1"]:
        w = workloads.WORKLOADS[wid.upper()]
        ms = median_ms(lambda: fresh_build(w))
        mask = w.mask()
        tiles = mask.tiles(TILE, TILE, "cpu")
        ok = w.id in UNLIMITED or ms < LIMIT_MS
        status |= not ok
        limit = "no limit" if w.id in UNLIMITED else f"limit {LIMIT_MS} ms"
        print(f"{w.id} ({w.description}) fresh mask + tile build: median {ms:.3f} ms "
              f"({limit}) {'ok' if ok else 'TOO SLOW'}")
        print(describe(mask, tiles))
    return status


if __name__ == "__main__":
    sys.exit(main())
