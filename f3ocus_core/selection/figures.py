"""Pictures of one round's selection: the front found, and per-layer coverage before and after.

Both functions draw with matplotlib's Agg backend (no display needed) and write a PNG, creating the
parent folder if needed.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from f3ocus_core.selection.result import SelectionResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_front(result: SelectionResult, path: str | Path) -> Path:
    """Scatter the non-dominated set (coverage variance vs total importance), chosen point marked."""
    plt = _pyplot()
    front = np.asarray(result.front, dtype=float).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    order = np.argsort(front[:, 1], kind="stable")
    ax.step(front[order, 1], front[order, 0], where="post", color="0.7", linewidth=1, zorder=1)
    ax.scatter(front[:, 1], front[:, 0], s=14, color="tab:blue", label=f"front ({len(front)} points)", zorder=2)
    chosen = front[result.chosen]
    ax.scatter(
        [chosen[1]],
        [chosen[0]],
        s=90,
        marker="*",
        color="tab:red",
        zorder=3,
        label=f"chosen ({result.pick}): I={chosen[0]:.3f}, V={chosen[1]:.3f}",
    )
    ax.set_xlabel("coverage variance (minimise)")
    ax.set_ylabel("total importance (maximise)")
    ax.set_title(f"Pareto front, {result.algorithm}, {result.seconds:.2f} s")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_coverage(own_masks: np.ndarray, server_masks: np.ndarray, path: str | Path) -> Path:
    """Bars of ``n_l`` (clients training layer ``l``): clients' own top-b next to the server's choice."""
    plt = _pyplot()
    own = np.asarray(own_masks, dtype=bool)
    server = np.asarray(server_masks, dtype=bool)
    if own.shape != server.shape or own.ndim != 2:
        raise ValueError(
            f"own_masks and server_masks must both be (clients x layers) and of equal shape; "
            f"got {own.shape} and {server.shape}."
        )
    own_counts, server_counts = own.sum(axis=0), server.sum(axis=0)
    layers = np.arange(own.shape[1])
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(5.5, 0.22 * len(layers) + 2), 3.6), dpi=120)
    ax.bar(
        layers - width / 2,
        own_counts,
        width,
        color="tab:gray",
        label=f"own top-b: {int((own_counts > 0).sum())} layers covered, var {own_counts.var():.2f}",
    )
    ax.bar(
        layers + width / 2,
        server_counts,
        width,
        color="tab:orange",
        label=f"server: {int((server_counts > 0).sum())} layers covered, var {server_counts.var():.2f}",
    )
    ax.set_xlabel("layer")
    ax.set_ylabel("clients training it (n_l)")
    ax.set_xticks(layers if len(layers) <= 40 else layers[:: int(np.ceil(len(layers) / 40))])
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Per-layer coverage")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
