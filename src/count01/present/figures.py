"""The one figure saver: every figure of count01 is drawn off-screen (the Agg backend, chosen
here and nowhere else), laid out once and written atomically as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from ..files import atomic_write  # noqa: E402

FORMATS = ("png", "svg")  # the files of every figure, STEM.png and STEM.svg


def save(fig, stem: Path, dpi: int) -> list[Path]:
    """Write `fig` to STEM.png and STEM.svg (stems may hold dots, lr=0.01: no with_suffix) and
    close it. The layout engine the figure was made with runs once, not once per file; SVG text
    stays text (smaller, faster)."""
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
        fig.set_layout_engine("none")
    paths = []
    with plt.rc_context({"svg.fonttype": "none"}):
        for ext in FORMATS:
            p = stem.parent / f"{stem.name}.{ext}"
            atomic_write(p, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=dpi))
            paths.append(p)
    plt.close(fig)
    return paths
