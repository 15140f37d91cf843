"""Coverage diagnostics of one round's assignment: how much of the model is trained, and how far each
client's layers are from the ones its own scores rank highest.

F3OCUS trades each client's own importance for balanced layer coverage. Whether that trade helps
depends on whether clients need different layers, so every round records both sides of it
(``metrics.jsonl``, key ``coverage_diagnostics``; figure ``coverage_diagnostics.png``):

- ``layers_trained``: layers at least one client trains (of ``num_layers``), and ``untrained_layers``;
- per client with usable scores, ``missed_top_b``: how many of its own top-b layers (by its scores,
  ties to the lower index as :func:`~f3ocus_core.selection.problem.top_b_masks`) it was not given;
- per client with usable scores, ``importance_share``: the score of the layers it was given over the
  score of its own top-b, 1.0 when it got its best layers (above 1 only if it got more than b).

Clients without scores this round (a rejected reply: their fall-back layers; ``control='heads-only'``)
are left out of the per-client figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from f3ocus_core.selection.problem import top_b_masks


def coverage_diagnostics(
    clients: Sequence[str], assigned: np.ndarray, scores: Mapping[str, tuple[Sequence[float], int]]
) -> dict:
    """The diagnostics of one round (see the module docstring).

    Parameters
    ----------
    clients : Sequence[str]
        Client names, one per row of ``assigned``.
    assigned : np.ndarray
        ``(N, L)`` bool: the layers sent to each client.
    scores : Mapping[str, tuple[Sequence[float], int]]
        Per client name that had usable scores: (its ``L`` scores, its budget ``b``).
    """
    masks = np.asarray(assigned, dtype=bool)
    if masks.ndim != 2 or masks.shape[0] != len(clients):
        raise ValueError(f"assigned must be (clients x layers) with {len(clients)} rows; got {masks.shape}.")
    counts = masks.sum(axis=0)
    missed: dict[str, int] = {}
    share: dict[str, float] = {}
    for client, row in zip(clients, masks):
        if client not in scores:
            continue
        values, budget = scores[client]
        values = np.asarray(values, dtype=float)
        if values.shape != row.shape:
            raise ValueError(f"{client}: {values.size} scores for {row.size} layers.")
        own = top_b_masks(values[None, :], [int(budget)])[0]
        missed[client] = int((own & ~row).sum())
        best = float(values[own].sum())
        share[client] = float(values[row].sum()) / best if best > 0 else 1.0
    return {
        "layers_trained": int((counts > 0).sum()),
        "num_layers": int(masks.shape[1]),
        "untrained_layers": np.flatnonzero(counts == 0).tolist(),
        "missed_top_b": missed,
        "importance_share": share,
    }


def plot_coverage_diagnostics(rows: Sequence[dict], path: str | Path) -> None:
    """``coverage_diagnostics.png``: per round, layers trained by >= 1 client (of L), and each client's
    importance share and missed top-b layers; from ``metrics.jsonl`` rows with ``coverage_diagnostics``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in rows if row.get("coverage_diagnostics")]
    if not rows:
        return
    rounds = [row["round"] for row in rows]
    diags = [row["coverage_diagnostics"] for row in rows]
    clients = sorted({name for d in diags for name in d["importance_share"]})
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(rounds, [d["layers_trained"] for d in diags], marker="o", color="black")
    axes[0].axhline(diags[-1]["num_layers"], color="grey", ls="--", lw=0.8, label="all layers")
    axes[0].set_ylim(0, diags[-1]["num_layers"] + 0.5)
    axes[0].set_title("layers trained by >= 1 client")
    axes[0].legend(fontsize=7)
    for name in clients:
        axes[1].plot(rounds, [d["importance_share"].get(name, np.nan) for d in diags], marker=".", label=name)
        axes[2].plot(rounds, [d["missed_top_b"].get(name, np.nan) for d in diags], marker=".", label=name)
    axes[1].set_title("share of own top-b importance given")
    top = max([1.0] + [v for d in diags for v in d["importance_share"].values()])
    axes[1].set_ylim(0, top + 0.05)
    axes[2].set_title("own top-b layers not given")
    axes[2].yaxis.get_major_locator().set_params(integer=True)
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
    if clients:
        axes[2].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
