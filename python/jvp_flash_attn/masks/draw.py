"""Pictures of masks: allowed pairs, with the kernel tile grid drawn over them."""
from __future__ import annotations

import numpy as np

from .tiles import EMPTY, FULL, PARTIAL

_MAX_PIXELS = 1024  # beyond this many tokens a side the picture shows tile states only


def draw(mask, path: str, block_m: int = 8, block_n: int = 8, title: str | None = None) -> str:
    """Write a PNG of ``mask``: element-wise when small, tile states (full/partial/empty) when large."""
    from .._optional import require

    matplotlib = require("matplotlib", "drawing a mask")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    tiles = mask.tiles(block_m, block_n)
    fig, ax = plt.subplots(figsize=(6, 6 * max(mask.sq / mask.sk, 0.25)), dpi=150)
    if max(mask.sq, mask.sk) <= _MAX_PIXELS:
        # colour = (allowed?, state of the element's tile)
        allowed = mask.dense().numpy()
        state = tiles.state[np.arange(mask.sq)[:, None] // block_m, np.arange(mask.sk)[None, :] // block_n]
        palette = np.array([[0.96, 0.96, 0.96], [0.99, 0.86, 0.70], [0.12, 0.37, 0.60], [0.85, 0.45, 0.05]])
        image = palette[np.where(allowed, np.where(state == FULL, 2, 3), np.where(state == PARTIAL, 1, 0))]
        ax.imshow(image, interpolation="nearest", extent=(0, mask.sk, mask.sq, 0))
        for r in range(0, mask.sq + 1, block_m):
            ax.axhline(r, color="#777", lw=0.5)
        for c in range(0, mask.sk + 1, block_n):
            ax.axvline(c, color="#777", lw=0.5)
        legend = (f"{block_m}x{block_n} tiles. blue: allowed, full tile; dark orange: allowed, "
                  "partial tile;\nlight orange: masked in a partial tile; grey: skipped tile")
    else:
        colours = ListedColormap(["#f4f4f4", "#e08a1e", "#1f5f99"])  # EMPTY, PARTIAL, FULL
        ax.imshow(tiles.state, cmap=colours, vmin=EMPTY, vmax=FULL, interpolation="nearest",
                  extent=(0, mask.sk, mask.sq, 0))
        legend = f"{block_m}x{block_n} tiles: blue full, orange partial, grey skipped"
    ax.set_xlabel(f"key token (Sk={mask.sk})")
    ax.set_ylabel(f"query token (Sq={mask.sq})")
    density = mask.num_pairs / (mask.sq * mask.sk)
    ax.set_title(title or f"{mask.name}: {mask.num_pairs} pairs ({density:.1%})\n{legend}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
