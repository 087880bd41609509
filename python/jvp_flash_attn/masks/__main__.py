"""Draw a mask to a PNG: python -m jvp_flash_attn.masks teacher_forcing --frames 4 --tokens-per-frame 6 --out tf.png"""
from __future__ import annotations

import argparse

from . import block_causal, full, kv_cache, teacher_forcing
from .draw import draw
from .pattern import FramePattern

KINDS = ("full", "block_causal", "teacher_forcing", "kv_cache")


def build(args):
    if args.kind == "full":
        n = args.frames * args.tokens_per_frame
        return full(n, n)
    p = FramePattern(args.tokens_per_frame, args.frames, args.frames_per_chunk, args.first_chunk_frames)
    if args.kind == "block_causal":
        return block_causal(p, args.window, args.sink)
    if args.kind == "teacher_forcing":
        return teacher_forcing(p, args.window, args.sink)
    if args.kind == "kv_cache":
        qc = p.num_chunks - 1 if args.query_chunk is None else args.query_chunk
        return kv_cache(p, qc, args.window, args.sink)
    raise ValueError(f"kind must be one of {KINDS}, got {args.kind!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m jvp_flash_attn.masks", description=__doc__)
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--tokens-per-frame", type=int, default=6)
    ap.add_argument("--frames-per-chunk", type=int, default=1)
    ap.add_argument("--first-chunk-frames", type=int, default=None)
    ap.add_argument("--window", type=int, default=None, help="chunks visible, counting the query's own")
    ap.add_argument("--sink", type=int, default=0, help="first chunks always visible")
    ap.add_argument("--query-chunk", type=int, default=None, help="kv_cache: the query chunk (default last)")
    ap.add_argument("--block-m", type=int, default=8, help="tile rows drawn as a grid")
    ap.add_argument("--block-n", type=int, default=8, help="tile columns drawn as a grid")
    ap.add_argument("--out", default=None, help="PNG path (default <kind>.png)")
    args = ap.parse_args(argv)
    try:
        mask = build(args)
    except (ValueError, TypeError) as e:
        ap.error(str(e))
    out = draw(mask, args.out or f"{args.kind}.png", args.block_m, args.block_n)
    tiles = mask.tiles(args.block_m, args.block_n)
    print(f"{mask!r}\ntiles {args.block_m}x{args.block_n}: {tiles.num_full} full, "
          f"{tiles.num_partial} partial, {tiles.state.size - tiles.num_full - tiles.num_partial} skipped\n"
          f"wrote {out}")


if __name__ == "__main__":
    main()
