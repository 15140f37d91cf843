"""What a run leaves in ``outputs/<run-name>/``, written as the run goes so nothing is lost on failure.

- ``config.json``: the resolved settings.
- ``metrics.jsonl``: one JSON object per round (round 0 evaluates the starting model).
- ``selection.jsonl``: per round, the clients, their scores (normalised and raw), budgets, the whole
  Pareto front with its assignments, the chosen point, and the assignment sent.
- ``fronts/round_XXX.png``, ``coverage/round_XXX.png``: the front found and the per-layer coverage
  (clients' own top-b against the server's assignment).
- ``assignments.png``: heatmap of clients x layers, one panel per round.
- ``accuracy.png``: the task metric per round, overall and per client.
- ``labels/<client>.json``: each client's answer vocabulary or label set.
- ``adapter/``: the final global adapter in PEFT format (written by the server app).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np


def _jsonable(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"Cannot write {type(value).__name__} to JSON.")


class RunRecorder:
    """Appends a run's records and redraws its figures after every round.

    Parameters
    ----------
    out_dir : Path
        The run's output folder (created if missing).
    layer_names : list[str]
        Readable layer ids, for figure axes.
    """

    def __init__(self, out_dir: str | Path, layer_names: list[str]) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.layer_names = list(layer_names)
        self.rows: list[dict] = []
        self.assignments: list[tuple[int, list[str], np.ndarray]] = []

    def write_json(self, name: str, payload: object) -> Path:
        """Write ``payload`` to ``out_dir/name`` as indented JSON."""
        path = self.out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=_jsonable))
        return path

    def _append(self, name: str, row: dict) -> None:
        with open(self.out_dir / name, "a") as handle:
            handle.write(json.dumps(row, default=_jsonable) + "\n")

    def save_labels(self, client: str, kind: str, labels: list[str]) -> None:
        """Save one client's label set (once per client)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", client)
        path = self.out_dir / "labels" / f"{safe}.json"
        if not path.exists():
            self.write_json(f"labels/{safe}.json", {"client": client, "kind": kind, "labels": labels})

    def record_selection(self, server_round: int, clients: list[str], record: dict, result: object, own_masks: np.ndarray) -> None:
        """Append the round's selection record and draw its front and coverage figures."""
        from f3ocus_core.selection.figures import plot_coverage, plot_front

        self._append("selection.jsonl", {"round": server_round, "clients": clients, **record})
        (self.out_dir / "fronts").mkdir(exist_ok=True)
        (self.out_dir / "coverage").mkdir(exist_ok=True)
        plot_front(result, self.out_dir / "fronts" / f"round_{server_round:03d}.png")
        plot_coverage(own_masks, result.masks, self.out_dir / "coverage" / f"round_{server_round:03d}.png")

    def record_assignment(self, server_round: int, clients: list[str], masks: np.ndarray) -> None:
        """Remember the assignment actually sent and redraw ``assignments.png``."""
        self.assignments.append((server_round, list(clients), np.asarray(masks, dtype=bool)))
        self._plot_assignments()

    def record_round(self, row: dict) -> None:
        """Append one ``metrics.jsonl`` row and redraw ``accuracy.png``."""
        self.rows.append(row)
        self._append("metrics.jsonl", row)
        self._plot_metric()

    def _plot_assignments(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        count = len(self.assignments)
        fig, axes = plt.subplots(1, count, figsize=(2.2 + 0.35 * len(self.layer_names) * count, 3.2), squeeze=False)
        for ax, (server_round, clients, masks) in zip(axes[0], self.assignments):
            ax.imshow(masks, cmap="Greens", vmin=0, vmax=1, aspect="auto")
            ax.set_title(f"round {server_round}")
            ax.set_xticks(range(len(self.layer_names)), self.layer_names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(clients)), clients if ax is axes[0][0] else [], fontsize=7)
        axes[0][0].set_ylabel("client")
        fig.suptitle("Layers assigned to each client (green = trained)")
        fig.tight_layout()
        fig.savefig(self.out_dir / "assignments.png", dpi=110)
        plt.close(fig)

    def _plot_metric(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rounds = [row["round"] for row in self.rows]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        clients = sorted({name for row in self.rows for name in row.get("score_per_client", {})})
        for name in clients:
            values = [row.get("score_per_client", {}).get(name, np.nan) for row in self.rows]
            ax.plot(rounds, values, lw=0.8, alpha=0.5, marker=".", label=name)
        ax.plot(rounds, [row.get("score", np.nan) for row in self.rows], color="black", lw=2, marker="o", label="all (weighted)")
        ax.set_xlabel("round (0 = starting model)")
        ax.set_ylabel("accuracy / F1")
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.out_dir / "accuracy.png", dpi=110)
        plt.close(fig)
