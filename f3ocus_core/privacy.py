"""Differential privacy for F3OCUS: clipped partial updates with per-layer Gaussian noise, noised
layer scores, and the privacy ledger that accounts both (``dp.*`` run-config keys, off by default).

**Updates (central DP, client level).** A client clips its whole update, the change of all its
assigned units this round, to L2 norm ``C = dp.clip-norm`` (:func:`clip_update`); the server clips
it again (it sees the update and need not trust the client's clipping), averages every layer over
the ``n_l`` clients that trained it with *equal* weights, and adds Gaussian noise of std
``sigma * C / n_l`` to each coordinate of that layer's average (:func:`add_layer_noise`,
``sigma = dp.noise-multiplier``): noise ``N(0, sigma^2 C^2)`` on each layer's sum, as Flower's
``compute_stdv`` does for a whole model.

Why one client's whole update has sensitivity ``C`` whatever its assignment: the round releases
the vector of all layer sums ``(S_1, ..., S_L)``; a client contributes its clipped change to the
sums of the layers it trained and nothing elsewhere, so replacing its contribution by nothing (a
zero change) moves the concatenated vector by exactly its clipped change, of L2 norm ``<= C``. Each
coordinate of every sum gets independent ``N(0, sigma^2 C^2)``, so the release is one Gaussian
mechanism with L2 sensitivity ``C`` and noise multiplier ``sigma``; dividing by ``n_l`` is
post-processing of the sum with the count, which the assignment fixes. With ``q = m / N`` (``m``
clients sampled per round, ``clients-per-round``, of ``N`` connected), ``T`` rounds compose as the
Poisson-subsampled Gaussian mechanism, accounted with RDP (``dp_accounting``, the package behind
Flower's ``RdpAccountant``): epsilon at ``dp.delta`` at **client level**, for the relation
"one hospital's contribution replaced by a null one" (``REPLACE_SPECIAL``: its data changes from
anything to nothing, while its participation, its assignment and so the counts ``n_l`` stay as
they are). The RDP bound is the same number as for add/remove-one; it is not strict add/remove,
because the noise scale ``sigma C / n_l`` of a layer's average, measured over its many
coordinates, reveals ``n_l`` and so whether one more client trained it (docs/privacy.md). With
``dp.hide-participation`` every layer is divided by the number sampled and noised
(:func:`spread_over_sampled`), and the same number holds for strict add/remove-one.

Equal weights matter: with example weights ``n_k / sum n``, a client with many examples moves the
average by up to ``C * share_max`` rather than ``C / n_l``, and the share depends on the others'
counts; so DP averages the clipped updates unweighted and ``aggregation.max-client-share`` plays no
part. The coordinate-wise median or trimmed mean has no such L2 bound, so DP requires
``aggregation.robust=''``; the LoRA product mean is not linear in the factors, so DP requires
``aggregation.lora='separate'`` (the released values are then the noised factor means).

**Scores (local DP).** A client's score vector is on the simplex (non-negative, sum 1), whose L2
diameter is ``sqrt(2)``: replacing the client's data moves it by at most that. The client adds
``N(0, (tau sqrt 2)^2)`` to each score before it leaves (:func:`privatize_scores`,
``tau = dp.score-noise-multiplier``), then maps the result back to the simplex (post-processing).
The server sees each client's vector, so there is no amplification by sampling and the relation is
**replace-one of a hospital's data** (its participation is visible anyway); each round the client
is asked composes one Gaussian mechanism of multiplier ``tau``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from f3ocus_core.aggregation import PartialUpdate

if TYPE_CHECKING:
    from dp_accounting.rdp import RdpAccountant

#: L2 diameter of the probability simplex: the most a normalised score vector can change.
SCORE_SENSITIVITY = float(np.sqrt(2.0))
#: The smallest score a noised vector keeps on each layer before it is renormalised: no layer gets
#: exactly zero, so the vector stays usable (not all zero) whatever the noise drew.
SCORE_FLOOR = 1e-6


@dataclass(frozen=True)
class PrivacySettings:
    """``dp.*``: differential privacy of the updates and of the scores (all off by default).

    Parameters
    ----------
    clip_norm : float
        ``dp.clip-norm``: L2 bound ``C`` of one client's whole update per round; 0 = DP on updates off.
    noise_multiplier : float
        ``dp.noise-multiplier``: ``sigma``, the noise std on each layer's sum in units of ``C``.
    delta : float
        ``dp.delta``: the delta at which epsilon is reported.
    target_epsilon : float
        ``dp.target-epsilon``: the run stops before a round would take either epsilon above it; 0 = no limit.
    score_noise_multiplier : float
        ``dp.score-noise-multiplier``: ``tau``, the noise std on each score in units of ``sqrt 2``; 0 = off.
    hide_participation : bool
        ``dp.hide-participation``: every layer's change is the sum of the clipped changes over the
        ``m`` clients sampled (not the ``n_l`` that trained it) and every layer is noised, so that
        epsilon holds for strict add/remove of a hospital (:func:`spread_over_sampled`).
    """

    clip_norm: float = 0.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    target_epsilon: float = 0.0
    score_noise_multiplier: float = 0.0
    hide_participation: bool = False

    @property
    def updates(self) -> bool:
        """Whether updates are clipped (and, with ``noise_multiplier > 0``, noised)."""
        return self.clip_norm > 0

    @property
    def scores(self) -> bool:
        """Whether scores are noised before they are sent."""
        return self.score_noise_multiplier > 0


def update_norm(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of ``new - old`` over all keys of ``new`` together (one flattened vector)."""
    return float(np.sqrt(sum(np.sum((new[key].astype(np.float64) - old[key].astype(np.float64)) ** 2) for key in new)))


def clip_update(
    new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray], clip_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """``new`` with its change from ``old`` scaled by ``min(1, clip_norm / ||new - old||)``, the
    norm taken over all of ``new``'s keys together; and that norm before clipping.

    The same FlatClip as Flower's ``compute_clip_model_update``, over a client's assigned units
    only (keys of ``old`` that ``new`` lacks play no part). Each result is cast to its dtype.
    """
    norm = update_norm(new, old)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    if scale == 1.0:
        return dict(new), norm
    clipped = {
        key: (old[key].astype(np.float64) + scale * (value.astype(np.float64) - old[key].astype(np.float64))).astype(
            value.dtype
        )
        for key, value in new.items()
    }
    return clipped, norm


def equal_weight_clipped(
    updates: Sequence[PartialUpdate], sent: Sequence[Mapping[str, np.ndarray]], clip_norm: float
) -> list[PartialUpdate]:
    """The server's side of DP on updates before averaging: each update clipped again to
    ``clip_norm`` against the units it was sent (``sent``, one state per update; the server need
    not trust the client's clipping) and given weight 1, so that every layer's average is the
    unweighted mean."""
    return [
        PartialUpdate(update.client, clip_update(update.state, start, clip_norm)[0], 1)
        for update, start in zip(updates, sent)
    ]


def layer_noise_std(noise_multiplier: float, clip_norm: float, count: int) -> float:
    """Std of the noise on the average of a layer trained by ``count`` clients: ``sigma C / count``
    (noise ``sigma C`` on the sum, Flower's ``compute_stdv``)."""
    return float(noise_multiplier * clip_norm / count)


def add_layer_noise(
    state: Mapping[str, np.ndarray],
    layers: Sequence[Sequence[str]],
    counts: Sequence[int],
    noise_multiplier: float,
    clip_norm: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """``state`` with Gaussian noise of std :func:`layer_noise_std` added to every unit of each
    layer that ``counts[l] > 0`` clients trained; other layers are returned as they are.

    ``layers`` holds each layer's unit keys (a ``UnitMap``'s ``names``). Noise is drawn in float64
    and the sum cast back to each unit's dtype.
    """
    noised = dict(state)
    for keys, count in zip(layers, counts):
        if count <= 0 or noise_multiplier <= 0:
            continue
        std = layer_noise_std(noise_multiplier, clip_norm, int(count))
        for key in keys:
            value = state[key]
            noised[key] = (value.astype(np.float64) + rng.normal(0.0, std, value.shape)).astype(value.dtype)
    return noised


def spread_over_sampled(
    new: Mapping[str, np.ndarray],
    old: Mapping[str, np.ndarray],
    layers: Sequence[Sequence[str]],
    counts: Sequence[int],
    sampled: int,
) -> dict[str, np.ndarray]:
    """``new`` (each layer the mean over the ``counts[l]`` clients that trained it) turned into the
    mean over all ``sampled`` clients of their zero-padded changes: ``old + (new - old) n_l / m``.

    The denominator ``m`` is fixed before any data is seen (McMahan et al.'s fixed-denominator
    estimator), so a layer's release no longer depends on how many clients trained it; with noise
    ``sigma C / m`` on *every* layer (:func:`add_layer_noise` with ``counts = [m] * L``) nothing in
    the released model tells whether one more client took part.
    """
    spread = dict(new)
    for keys, count in zip(layers, counts):
        if count <= 0:
            continue
        for key in keys:
            base = old[key].astype(np.float64)
            spread[key] = (base + (new[key].astype(np.float64) - base) * count / sampled).astype(old[key].dtype)
    return spread


def privatize_scores(
    normalized: Sequence[float] | np.ndarray, score_noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """A normalised score vector (non-negative, sum 1) with Gaussian noise of std
    ``tau * sqrt(2)`` on each entry, mapped back to the simplex: floored at :data:`SCORE_FLOOR` and
    divided by its sum (post-processing, free under DP). The input is first projected onto the
    simplex (negatives to 0, divided by the sum) so that the sensitivity holds whatever it was.
    """
    values = np.clip(np.asarray(normalized, dtype=np.float64), 0.0, None)
    total = values.sum()
    values = values / total if total > 0 and np.isfinite(total) else np.full(values.shape, 1.0 / values.size)
    noisy = values + rng.normal(0.0, score_noise_multiplier * SCORE_SENSITIVITY, values.shape)
    noisy = np.maximum(noisy, SCORE_FLOOR)
    return noisy / noisy.sum()


def noise_multiplier_for(target_epsilon: float, rounds: int, sample_size: int, population: int, delta: float) -> float:
    """The smallest ``dp.noise-multiplier`` (to 0.1%) whose updates' epsilon after ``rounds`` rounds
    of ``sample_size`` of ``population`` clients stays <= ``target_epsilon`` at ``delta``: what to
    set for a budget (bisection over :class:`PrivacyLedger`)."""

    def epsilon(sigma: float) -> float:
        ledger = PrivacyLedger(
            PrivacySettings(clip_norm=1.0, noise_multiplier=sigma, delta=delta), population, [sample_size] * rounds
        )
        return ledger.epsilons()["epsilon_updates"]

    low, high = 0.05, 1.0
    while epsilon(high) > target_epsilon:
        low, high = high, 2 * high
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if epsilon(middle) > target_epsilon else (low, middle)
    return high


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """Silence ``dp_accounting``'s warnings that an RDP order failed to converge (it then leaves
    that order out, and epsilon, a minimum over orders, can only come out larger: conservative);
    with ``q < 1`` it logs them for the small fractional orders on every computation."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass
class PrivacyLedger:
    """The epsilon spent so far, per release kind, by RDP accounting (``dp_accounting``).

    ``population`` is the number of clients ``N`` the rounds sample from. Each round is recorded
    with its sample size ``m``: the updates compose a Poisson-subsampled Gaussian of multiplier
    ``sigma`` and rate ``m / N`` (client level, one hospital's contribution replaced by a null one;
    the same RDP as Flower's ``RdpAccountant`` with ``ADD_OR_REMOVE_ONE`` and ``POISSON``), the
    scores a Gaussian of multiplier ``tau`` (no amplification) per release, counted in
    ``score_releases`` (one per round by :meth:`record`; a protocol that collects scores at other
    times counts each collection with :meth:`record_scores`).
    """

    settings: PrivacySettings
    population: int
    rounds: list[int] = field(default_factory=list)
    score_releases: int = 0

    def _accountant(self, extra: int | None, scores: bool) -> RdpAccountant:
        from dp_accounting import dp_event
        from dp_accounting.privacy_accountant import NeighboringRelation
        from dp_accounting.rdp import RdpAccountant

        relation = (
            NeighboringRelation.ADD_OR_REMOVE_ONE
            if self.settings.hide_participation
            else NeighboringRelation.REPLACE_SPECIAL
        )
        accountant = RdpAccountant(neighboring_relation=relation)
        if scores:
            count = self.score_releases + (extra is not None)
            if count:
                accountant.compose(dp_event.GaussianDpEvent(self.settings.score_noise_multiplier), count)
            return accountant
        for size in self.rounds + ([] if extra is None else [extra]):
            accountant.compose(
                dp_event.PoissonSampledDpEvent(
                    size / self.population, dp_event.GaussianDpEvent(self.settings.noise_multiplier)
                )
            )
        return accountant

    def epsilons(self, extra: int | None = None) -> dict[str, float]:
        """``{"epsilon_updates": ..., "epsilon_scores": ...}`` at ``dp.delta`` after the recorded
        rounds (and one more of sample size ``extra``, if given); a kind that is off is left out,
        one that is on without noise is ``inf``."""
        s = self.settings
        result = {}
        with _quiet_absl():
            if s.updates:
                result["epsilon_updates"] = (
                    float(self._accountant(extra, False).get_epsilon(s.delta))
                    if s.noise_multiplier > 0
                    else float("inf")
                )
            if s.scores:
                result["epsilon_scores"] = float(self._accountant(extra, True).get_epsilon(s.delta))
        return result

    def describe(self, rounds: int, sample_size: int) -> str:
        """One line for the run's start: the settings, the population and the epsilons the whole run
        would reach (``rounds`` more rounds of ``sample_size`` clients)."""
        s = self.settings
        projected = PrivacyLedger(
            s, self.population, self.rounds + [sample_size] * rounds, self.score_releases + rounds
        ).epsilons()
        spent = ", ".join(f"{kind} {value:.3g}" for kind, value in projected.items())
        return (
            f"dp.clip-norm={s.clip_norm:g}, dp.noise-multiplier={s.noise_multiplier:g}, "
            f"dp.score-noise-multiplier={s.score_noise_multiplier:g}; {sample_size} of {self.population} clients "
            f"per round; after {len(self.rounds) + rounds} rounds: {spent} at delta {s.delta:g}"
            + (f" (target {s.target_epsilon:g})" if s.target_epsilon > 0 else "")
        )

    def would_exceed(self, sample_size: int) -> str | None:
        """Why one more round of ``sample_size`` clients would take an epsilon above
        ``dp.target-epsilon`` (None if it would not, or no target is set)."""
        target = self.settings.target_epsilon
        if target <= 0:
            return None
        for kind, value in self.epsilons(sample_size).items():
            if not value <= target:
                return (
                    f"dp.target-epsilon: round {len(self.rounds) + 1} would take {kind} to {value:.3g} "
                    f"(delta {self.settings.delta:g}), above the target {target:g}"
                )
        return None

    def record(self, sample_size: int, scores: bool = True) -> dict[str, float]:
        """Account one round of ``sample_size`` sampled clients (its updates and, if ``scores``, one
        score release); return the epsilons after it."""
        self.rounds.append(int(sample_size))
        self.score_releases += bool(scores)
        return self.epsilons()

    def record_scores(self) -> None:
        """Account one more release of every client's noised scores."""
        self.score_releases += 1
