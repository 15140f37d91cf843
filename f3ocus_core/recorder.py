"""What a run leaves in ``outputs/<run-name>/``, written as the run goes so nothing is lost on failure.

- ``config.json``: the resolved settings.
- ``metrics.jsonl``: one JSON object per round (round 0 evaluates the starting model), built by
  :func:`metrics_row` from the server's :class:`RoundRecord`.
- ``selection.jsonl``: per round, the clients, their scores (normalised and raw), budgets, the whole
  Pareto front with its assignments, the chosen point, and the assignment sent.
- ``fronts/round_XXX.png``, ``coverage/round_XXX.png``: the front found and the per-layer coverage
  (clients' own top-b against the server's assignment).
- ``assignments.png``: heatmap of clients x layers, one panel per round.
- ``coverage_diagnostics.png``: per round, the layers trained by at least one client and each
  client's distance from its own top-b (:mod:`f3ocus_core.selection.diagnostics`; the same figures
  are the ``coverage_diagnostics`` key of each ``metrics.jsonl`` row after round 0).
- ``accuracy.png``: the task metric (accuracy or F1) per round, overall and per client.
- ``labels/<client>.json``: each client's answer vocabulary or label set.
- ``adapter/``: the final global units (written by the server app with
  :func:`f3ocus_core.peft_units.save_adapter`; ``model/`` for ``peft.method=full``).
- ``checkpoint/state.npz``: the state after the last complete round (:mod:`f3ocus_core.checkpoint`).

A resumed run (:meth:`RunRecorder.import_state`) appends to the same files after cutting off what
an interrupted round had already written, so no round appears twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from f3ocus_core.aggregation import capped_shares
from f3ocus_core.checkpoint import atomic_file

if TYPE_CHECKING:
    from f3ocus_core.selection.result import SelectionResult

PHASES = ("query", "train", "evaluate")
"""The message exchanges, the keys of a row's ``bytes_down``: a round has ``train`` and ``evaluate``
(which also carries the next round's scores); ``query`` only the first round of a resumed run."""


def _jsonable(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"Cannot write {type(value).__name__} to JSON.")


@dataclass
class RoundRecord:
    """What the server measures in one round, keyed by node id until :func:`metrics_row` names clients.

    Round 0 (evaluating the starting model, and scoring it for round 1) fills only
    ``bytes_down["evaluate"]``, ``seconds_eval`` and ``failed``. ``seconds_eval`` is the evaluate
    exchange, the clients' scoring for the next round included; ``seconds_query`` and
    ``bytes_down["query"]`` stay 0 but in the first round of a resumed run.
    """

    server_round: int
    started: float = field(default_factory=time.perf_counter)
    seconds_query: float = 0.0
    seconds_select: float = 0.0
    seconds_train: float = 0.0
    seconds_eval: float = 0.0
    bytes_down: dict[str, dict[int, int]] = field(default_factory=lambda: {phase: {} for phase in PHASES})
    bytes_up: dict[int, int] = field(default_factory=dict)
    trainable_params: dict[int, int] = field(default_factory=dict)
    train_gflop: dict[int, float] = field(default_factory=dict)
    assignment: dict[int, list[int]] = field(default_factory=dict)
    coverage: list[int] = field(default_factory=list)
    train_loss: float | None = None
    failed: list[dict[str, str]] = field(default_factory=list)
    privacy: dict[str, float] = field(default_factory=dict)
    """The epsilons spent after this round and ``dp_delta`` (:mod:`f3ocus_core.privacy`); empty with DP off."""

    def count_down(self, phase: str, node: int, num_bytes: int) -> None:
        """Add ``num_bytes`` sent to ``node`` in ``phase`` (one of :data:`PHASES`)."""
        self.bytes_down[phase][node] = self.bytes_down[phase].get(node, 0) + int(num_bytes)

    def fail(self, phase: str, client: str, reason: str) -> None:
        """Note that ``client`` was left out of ``phase`` and why."""
        self.failed.append({"phase": phase, "client": client, "reason": reason})


def metrics_row(
    record: RoundRecord, evaluations: dict[str, dict[str, float]], name_of: Callable[[int], str], max_share: float = 1.0
) -> dict:
    """The round's ``metrics.jsonl`` row.

    Parameters
    ----------
    record : RoundRecord
        What the server measured this round.
    evaluations : dict[str, dict[str, float]]
        Per client name, its evaluate reply: ``loss``, ``metric``, ``accuracy`` or ``f1``, ``num-examples``.
    name_of : Callable[[int], str]
        The client name of a node id.

    The task metric is ``metric`` (named by ``metric_name``: ``accuracy``, ``f1`` or ``accuracy/f1``
    when the clients' tasks differ), example-weighted over the clients that evaluated, no client's
    share above ``max_share`` (``aggregation.max-client-share``,
    :func:`~f3ocus_core.aggregation.capped_shares`); None when no client evaluated (the row still
    keeps the round's assignment and failures).
    ``mbit_train_per_client`` is what training moves per client: the mean, over the clients sent a
    ``train`` message, of (bytes of units sent to it + bytes of its accepted update) x 8 / 1e6.
    ``trainable_params`` and ``train_gflop`` are, per client whose update was accepted, the
    parameters it trained (units and head) and the estimated GFLOP of its local training
    (:mod:`f3ocus_core.accounting`).
    """

    def weighted(key: str, clients: list[str]) -> float | None:
        if not clients:
            return None
        shares = capped_shares([evaluations[c]["num-examples"] for c in clients], max_share)
        return float(sum(evaluations[c][key] * share for c, share in zip(clients, shares)))

    def by_name(per_node: dict[int, int]) -> dict[str, int]:
        return {name_of(node): int(value) for node, value in sorted(per_node.items())}

    names = sorted(evaluations)
    vqa = [c for c in names if "accuracy" in evaluations[c]]
    multilabel = [c for c in names if "f1" in evaluations[c]]
    trained = sorted(record.bytes_down["train"])
    row: dict[str, object] = {
        "round": record.server_round,
        "accuracy": weighted("accuracy", vqa),
        "accuracy_per_client": {c: evaluations[c]["accuracy"] for c in vqa},
        "metric_name": "/".join(name for name, group in (("accuracy", vqa), ("f1", multilabel)) if group),
        "metric": weighted("metric", names),
        "metric_per_client": {c: evaluations[c]["metric"] for c in names},
        "loss": weighted("loss", names),
        "train_loss": record.train_loss,
        "bytes_up": by_name(record.bytes_up),
        "bytes_down": {phase: by_name(per_node) for phase, per_node in record.bytes_down.items()},
        "trainable_params": by_name(record.trainable_params),
        "train_gflop": {name_of(node): float(value) for node, value in sorted(record.train_gflop.items())},
        "mbit_train_per_client": float(
            np.mean([(record.bytes_down["train"][node] + record.bytes_up.get(node, 0)) * 8 / 1e6 for node in trained])
        )
        if trained
        else None,
        "seconds_query": record.seconds_query,
        "seconds_select": record.seconds_select,
        "seconds_train": record.seconds_train,
        "seconds_eval": record.seconds_eval,
        "seconds_round": time.perf_counter() - record.started,
        "clients_evaluated": len(names),
        "failed": record.failed,
    }
    if multilabel:
        row["f1"] = weighted("f1", multilabel)
        row["f1_per_client"] = {c: evaluations[c]["f1"] for c in multilabel}
    if record.server_round > 0:
        row["assignment"] = {name_of(node): layers for node, layers in sorted(record.assignment.items())}
        row["coverage"] = record.coverage
    row.update(record.privacy)
    return row


def round_log_line(row: dict, num_rounds: int) -> str:
    """The one log line per round: task metric, loss, traffic by phase, train Mbit per client, times.

    ``eval`` includes the clients' scoring for the next round (one message does both); ``query``
    shows only in the first round of a resumed run, the one round that has that exchange.
    """
    up = sum(row["bytes_up"].values()) / 1e6
    down = {phase: sum(row["bytes_down"][phase].values()) / 1e6 for phase in PHASES}
    mbit = row["mbit_train_per_client"]
    metric, loss = (("-" if row[key] is None else f"{row[key]:.4f}") for key in ("metric", "loss"))
    query = bool(row["bytes_down"]["query"]) or row["seconds_query"] > 0
    return (
        f"Round {row['round']}/{num_rounds}: {row['metric_name'] or 'metric'} {metric}, loss {loss} | "
        f"up {up:.3f} MB, down {sum(down.values()):.3f} MB ("
        + (f"query {down['query']:.3f}, " if query else "")
        + f"train {down['train']:.3f}, evaluate {down['evaluate']:.3f}) | "
        f"train {'-' if mbit is None else f'{mbit:.3f}'} Mbit/client | {row['seconds_round']:.1f} s ("
        + (f"query {row['seconds_query']:.1f}, " if query else "")
        + f"select {row['seconds_select']:.2f}, train {row['seconds_train']:.1f}, "
        f"eval+score {row['seconds_eval']:.1f})"
    ) + privacy_text(row)


def privacy_text(row: dict) -> str:
    """The log line's privacy part: `` | epsilon updates 1.23, scores 0.456 at delta 1e-05`` (empty with DP off)."""
    spent = [f"{kind} {row[f'epsilon_{kind}']:.3g}" for kind in ("updates", "scores") if f"epsilon_{kind}" in row]
    return f" | epsilon {', '.join(spent)} at delta {row['dp_delta']:g}" if spent else ""


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
        self.listeners: list[Callable[[dict], None]] = []
        """Called with each row after it is written and the figures are drawn (experiment trackers)."""
        self._scored: dict[int, dict[str, tuple[list[float], int]]] = {}
        self._diagnostics: dict[int, dict] = {}

    def export_state(self) -> dict:
        """The rows and assignments recorded so far, as JSON (part of the server's checkpoint)."""
        return {
            "rows": json.loads(json.dumps(self.rows, default=_jsonable)),
            "assignments": [[r, clients, masks.astype(int).tolist()] for r, clients, masks in self.assignments],
        }

    def import_state(self, state: dict, last_round: int) -> None:
        """Continue after ``last_round`` from :meth:`export_state`'s ``state``: take its rows and
        assignments, and rewrite ``metrics.jsonl`` and ``selection.jsonl`` without the rows of later
        rounds (written by a round that did not complete before the crash)."""
        self.rows = list(state["rows"])
        self.assignments = [
            (int(r), list(clients), np.asarray(masks, dtype=bool)) for r, clients, masks in state["assignments"]
        ]
        with atomic_file(self.out_dir / "metrics.jsonl") as stream:
            stream.write("".join(json.dumps(row) + "\n" for row in self.rows).encode())
        selection = self.out_dir / "selection.jsonl"
        if selection.exists():
            kept = [
                line
                for line in selection.read_text().splitlines(keepends=True)
                if line.strip() and json.loads(line)["round"] <= last_round
            ]
            with atomic_file(selection) as stream:
                stream.write("".join(kept).encode())

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
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", client).lstrip(".")
        if len(safe) > 80 or safe != client.replace("/", "_"):  # long or altered: a hash keeps names apart
            safe = f"{safe[:80]}-{hashlib.sha256(client.encode()).hexdigest()[:12]}"
        path = self.out_dir / "labels" / f"{safe}.json"
        if not path.exists():
            self.write_json(f"labels/{safe}.json", {"client": client, "kind": kind, "labels": labels})

    def record_selection(
        self, server_round: int, clients: list[str], record: dict, result: SelectionResult, own_masks: np.ndarray
    ) -> None:
        """Append the round's selection record and draw its front and coverage figures."""
        from f3ocus_core.selection.figures import plot_coverage, plot_front

        self._append("selection.jsonl", {"round": server_round, "clients": clients, **record})
        if "scores" in record and "budgets" in record:
            self._scored[server_round] = {
                client: (list(np.asarray(values, dtype=float)), int(budget))
                for client, values, budget in zip(clients, record["scores"], record["budgets"])
            }
        (self.out_dir / "fronts").mkdir(exist_ok=True)
        (self.out_dir / "coverage").mkdir(exist_ok=True)
        plot_front(result, self.out_dir / "fronts" / f"round_{server_round:03d}.png")
        plot_coverage(own_masks, result.masks, self.out_dir / "coverage" / f"round_{server_round:03d}.png")

    def record_assignment(self, server_round: int, clients: list[str], masks: np.ndarray) -> None:
        """Remember the assignment actually sent and redraw ``assignments.png``."""
        from f3ocus_core.selection.diagnostics import coverage_diagnostics

        self.assignments.append((server_round, list(clients), np.asarray(masks, dtype=bool)))
        self._diagnostics[server_round] = coverage_diagnostics(clients, masks, self._scored.pop(server_round, {}))
        self._plot_assignments()

    def record_round(self, row: dict) -> None:
        """Append one ``metrics.jsonl`` row (with the round's coverage diagnostics, if it assigned
        layers), redraw ``accuracy.png`` and ``coverage_diagnostics.png``, then pass the row to
        :attr:`listeners`."""
        if row.get("round") in self._diagnostics:
            row = {**row, "coverage_diagnostics": self._diagnostics.pop(row["round"])}
        self.rows.append(row)
        self._append("metrics.jsonl", row)
        self._plot_metric()
        if "coverage_diagnostics" in row:
            self._plot_coverage_diagnostics()
        for listener in self.listeners:
            listener(row)

    def _plot_coverage_diagnostics(self) -> None:
        from f3ocus_core.selection.diagnostics import plot_coverage_diagnostics

        plot_coverage_diagnostics(self.rows, self.out_dir / "coverage_diagnostics.png")

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
        clients = sorted({name for row in self.rows for name in row.get("metric_per_client", {})})
        for name in clients:
            values = [row.get("metric_per_client", {}).get(name, np.nan) for row in self.rows]
            ax.plot(rounds, values, lw=0.8, alpha=0.5, marker=".", label=name)
        overall = [np.nan if row.get("metric") is None else row["metric"] for row in self.rows]
        ax.plot(rounds, overall, color="black", lw=2, marker="o", label="all (weighted)")
        ax.set_xlabel("round (0 = starting model)")
        ax.set_ylabel(self.rows[-1].get("metric_name") or "accuracy / F1")
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.out_dir / "accuracy.png", dpi=110)
        plt.close(fig)
