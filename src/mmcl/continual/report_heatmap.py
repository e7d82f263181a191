"""The accuracy matrix of a continual-learning report as a PNG heat map (matplotlib, without
pyplot: no global state, no GUI backend). Zero-shot cells (tasks not trained yet) are grey
and italic; a staircase line separates them from the trained ones."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

HEATMAP_PNG = "accuracy_matrix.png"


def _load_matplotlib():
    """matplotlib's Figure and Agg canvas (no pyplot: no global state, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def heatmap_png(report: Mapping[str, Any]) -> bytes | None:
    """The accuracy matrix as PNG bytes; zero-shot cells (not trained yet) in grey."""
    try:
        Figure, FigureCanvasAgg = _load_matplotlib()
    except ImportError:
        warnings.warn(
            f"matplotlib is not installed, so {HEATMAP_PNG} is not written "
            f"(pip install matplotlib)",
            stacklevel=3,
        )
        return None

    names = list(report["tasks"])
    num_tasks = len(names)
    values = np.asarray(report["accuracy_matrix"], dtype=np.float64)
    trained = np.tril(np.ones((num_tasks, num_tasks), dtype=bool))
    row_labels = [f"after {i + 1}: {name}" for i, name in enumerate(names)]
    if report.get("initial_accuracy") is not None:
        values = np.vstack([report["initial_accuracy"], values])
        trained = np.vstack([np.zeros(num_tasks, dtype=bool), trained])
        row_labels.insert(0, "before training")
    top = 1.0 if values.max() <= 1.0 else 100.0
    decimals = 2 if top == 1.0 else 1
    font = max(5.0, min(10.0, 90.0 / num_tasks))

    size = (2.5 + 0.75 * num_tasks, 1.8 + 0.6 * len(row_labels))
    figure = Figure(figsize=size, dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_where(~trained, values), cmap="viridis", vmin=0, vmax=top)
    # Light greys for zero-shot cells: the darkest grey is reached at twice the top accuracy.
    axes.imshow(np.ma.masked_where(trained, values), cmap="Greys", vmin=0, vmax=2 * top)
    for (row, column), value in np.ndenumerate(values):
        if trained[row, column]:
            red, green, blue, _ = image.cmap(image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            color, style = ("white" if dark else "black"), "normal"
        else:
            color, style = "black", "italic"
        text = f"{value:.{decimals}f}"
        axes.text(
            column, row, text, ha="center", va="center", color=color, fontsize=font, fontstyle=style
        )
    axes.set_xticks(range(num_tasks), labels=names, rotation=45, ha="right", fontsize=font)
    axes.set_yticks(range(len(row_labels)), labels=row_labels, fontsize=font)
    axes.set_xlabel("evaluated on task")
    _outline_trained_cells(axes, trained)
    title = f"{report['method']}\ngrey italic: zero-shot (task not trained yet)"
    axes.set_title(title, fontsize=font + 1)
    figure.colorbar(image, ax=axes, label="accuracy on trained tasks", shrink=0.8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _outline_trained_cells(axes, trained: np.ndarray) -> None:
    """A staircase line between the trained cells (on and below the diagonal) and the rest."""
    xs, ys = [], []
    for row, width in enumerate(trained.sum(axis=1)):  # trained cells: a prefix of each row
        xs += [width - 0.5, width - 0.5]
        ys += [row - 0.5, row + 0.5]
    axes.plot(xs, ys, color="black", linewidth=1.5, scalex=False, scaley=False)
