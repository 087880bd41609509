"""Benchmarks (docs/design/benchmarks.md): workloads, providers, the runner (bench.run) and mask-build timing.

Importing ``bench`` makes the in-tree package importable when it is not installed, so
``python -m bench.run`` and ``python bench/run.py`` work from a plain checkout.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

try:
    import jvp_flash_attn  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))
