"""Tile flags of the zero-tangent hint against their per-token definition."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from jvp_flash_attn.masks.tiles import zero_tangent_tiles


@given(n=st.integers(1, 200), block=st.integers(1, 40),
       ranges=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=5))
def test_zero_tangent_tiles_match_tokens(n, block, ranges):
    ranges = [(min(a, n), min(b, n)) for a, b in ranges]
    zero = np.zeros(-(-n // block) * block, bool)
    zero[n:] = True  # tokens past n are zero-filled
    for a, b in ranges:
        zero[a:b] = True
    expect = zero.reshape(-1, block).all(axis=1).astype(np.int8)
    assert zero_tangent_tiles(ranges, n, block).tolist() == expect.tolist()
