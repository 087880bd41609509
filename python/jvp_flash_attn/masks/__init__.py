"""Frame/chunk attention masks, built from their structure, never from an S x S matrix."""
from .builders import block_causal, from_segments, full, kv_cache, teacher_forcing
from .pattern import FramePattern
from .segments import CAUSAL, FULL, NONE, SegmentMask
from .tiles import TileDescription

Mask = SegmentMask

__all__ = ["FramePattern", "Mask", "SegmentMask", "TileDescription", "full", "block_causal",
           "teacher_forcing", "kv_cache", "from_segments", "NONE", "FULL", "CAUSAL"]
