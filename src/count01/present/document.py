"""The report's document: sections of paragraphs, bullet lists, tables and figures, which
`count01.present.report` renders as HTML and Markdown and each question module (`count01.questions`)
fills with its prose and captions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Count01Error


class ReportError(Count01Error):
    """Saved results the report cannot read."""


@dataclass
class Figure:
    path: Path  # a PNG file
    caption: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Bullets:
    items: list[str]


Block = str | Table | Figure | Bullets


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    status: str | None = None  # a verdict, shown as a badge


def rel(path: Path | None, root: Path) -> str:
    if path is None:
        return "-"
    if path == root:
        return path.name
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def analysis_figures(ev: Any, names: list[tuple[str, str]]) -> list[Block]:
    """Analysis figures of the report's evidence `ev` by name (analysis/figures/NAME.png); a
    missing one is said so."""
    if ev.analysis is None:
        return []
    d = ev.run_dir / "analysis" / "figures"
    return [Figure(d / f"{n}.png", c) if (d / f"{n}.png").exists()
            else f"(Figure `{n}.png` was not found in `{rel(d, ev.root)}`.)" for n, c in names]
