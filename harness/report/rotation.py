"""When to rotate a session on purpose: the age-replacement policy over a lifetime model.

Pure maths (numpy and scipy; no files, no sockets). A session is replaced at age T by a planned
make-before-break rotation (cost ``c_rotate``), or earlier by an unplanned drop (cost
``c_drop``), and the next one starts fresh (a renewal process). The long-run cost per unit of
session time is

    C(T) = [c_rotate · S(T) + c_drop · F(T)] / ∫₀ᵀ S(t) dt,    C(∞) = c_drop / mean lifetime,

with S the survival function and F = 1 − S. `optimal_rotation` finds the T that minimises it,
or says why rotating will not help; `rotation_effect` puts 95 % CIs on what the recommended
and the current setting give, from a fitted Weibull's uncertainty; `cost_chart` draws C(T).
docs/diagnosis.md ("The rotation maths") states the assumptions.

Costs are in any unit the caller picks (seconds of service lost, say); every rate here is per
connection-hour of session time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import optimize, special

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "Estimate",
    "FixedLimit",
    "Lifetimes",
    "PiecewiseHazard",
    "PolicyEffect",
    "Rates",
    "Recommendation",
    "RotationEffect",
    "Weibull",
    "WeibullEstimate",
    "cost_chart",
    "cost_per_hour",
    "drops_per_hour",
    "exponential",
    "optimal_rotation",
    "rates",
    "rotation_effect",
    "rotations_per_hour",
]

HOUR = 3600.0
# A rotation age must beat never rotating by more than this share of C(∞) to be recommended:
# a smaller saving is within what the lifetime model's error can produce.
MIN_SAVING = 0.01
GRID_POINTS = 241


class Lifetimes(Protocol):
    """A session lifetime distribution, in seconds of connection age."""

    def survival(self, t: np.ndarray) -> np.ndarray:
        """S(t) = P(lifetime > t)."""

    def survival_integral(self, t: np.ndarray) -> np.ndarray:
        """∫₀ᵗ S(u) du: the expected session time per cycle when rotating at age t."""

    def mean(self) -> float:
        """The mean lifetime ∫₀^∞ S (math.inf when the hazard ends at zero)."""

    def trend(self) -> str:
        """How the hazard moves with age: 'rising', 'flat', 'falling' or 'mixed'."""

    def span(self) -> tuple[float, float]:
        """Ages (s) between which the optimum can lie: C(T) beyond them is C(∞) in all but
        rounding, and below them no drop has happened yet."""

    def describe(self) -> str:
        """A few words naming the distribution, for reasons and chart titles."""


@dataclass(frozen=True, slots=True)
class Weibull:
    """S(t) = exp(-(t/scale)^shape). shape > 1: the hazard rises with age (wear-out);
    shape = 1: exponential (no memory); shape < 1: it falls (infant mortality)."""

    shape: float
    scale: float

    def __post_init__(self) -> None:
        if not (self.shape > 0 and self.scale > 0 and math.isfinite(self.shape * self.scale)):
            raise ValueError(
                f"Weibull needs shape > 0 and scale > 0, got {self.shape}, {self.scale}"
            )

    def survival(self, t: np.ndarray) -> np.ndarray:
        return _weibull_survival(np.asarray(t, float), self.shape, self.scale)

    def survival_integral(self, t: np.ndarray) -> np.ndarray:
        return _weibull_survival_integral(np.asarray(t, float), self.shape, self.scale)

    def mean(self) -> float:
        return self.scale * math.gamma(1 + 1 / self.shape)

    def trend(self) -> str:
        return "rising" if self.shape > 1 else "flat" if self.shape == 1 else "falling"

    def span(self) -> tuple[float, float]:
        # Cumulative hazard from 1e-8 (almost no drops yet) to 30 (S = 1e-13).
        return self.scale * 1e-8 ** (1 / self.shape), self.scale * 30.0 ** (1 / self.shape)

    def describe(self) -> str:
        return f"Weibull(k = {self.shape:.3g}, λ = {self.scale:.4g} s)"


def exponential(mean: float) -> Weibull:
    """Memoryless lifetimes: a Weibull with shape 1."""
    return Weibull(1.0, mean)


def _weibull_survival(t: np.ndarray, k, lam) -> np.ndarray:
    return np.exp(-((t / lam) ** k))


def _weibull_survival_integral(t: np.ndarray, k, lam) -> np.ndarray:
    # ∫₀ᵀ exp(-(u/λ)^k) du = λ Γ(1 + 1/k) P(1/k, (T/λ)^k), P the regularised lower gamma.
    return lam * special.gamma(1 + 1 / k) * special.gammainc(1 / k, (t / lam) ** k)


@dataclass(frozen=True, slots=True)
class FixedLimit:
    """Every session ends at exactly `limit` seconds (a service's maximum session length) and
    never before. The optimum is to rotate `margin` seconds before it (default: 5 % of the limit,
    at most 10 s), early enough for the new session to be up when the old one is cut."""

    limit: float
    margin: float | None = None

    def __post_init__(self) -> None:
        if not (0 < self.limit < math.inf):
            raise ValueError(f"FixedLimit needs a finite limit > 0, got {self.limit}")
        if self.margin is not None and not (0 < self.margin < self.limit):
            raise ValueError(f"FixedLimit's margin must lie in (0, limit), got {self.margin}")

    @property
    def rotate_at(self) -> float:
        return self.limit - (
            self.margin if self.margin is not None else min(10.0, 0.05 * self.limit)
        )

    def survival(self, t: np.ndarray) -> np.ndarray:
        return np.where(np.asarray(t, float) < self.limit, 1.0, 0.0)

    def survival_integral(self, t: np.ndarray) -> np.ndarray:
        return np.minimum(np.asarray(t, float), self.limit)

    def mean(self) -> float:
        return self.limit

    def trend(self) -> str:
        return "rising"  # zero, then certain death at the limit

    def span(self) -> tuple[float, float]:
        return self.limit / 100, self.limit

    def describe(self) -> str:
        return f"a fixed limit of {self.limit:.4g} s"


@dataclass(frozen=True, slots=True)
class PiecewiseHazard:
    """A hazard (drops per second of age) constant between breakpoints, given as
    ``((until, rate), ...)`` with `until` increasing: `rate` holds from the previous `until`
    (or 0) up to this one. The last piece's rate holds forever after its `until`, which may be
    math.inf."""

    pieces: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        pieces = tuple((float(u), float(r)) for u, r in self.pieces)
        object.__setattr__(self, "pieces", pieces)
        ends = [u for u, _ in pieces]
        if not pieces or any(r < 0 or not math.isfinite(r) for _, r in pieces):
            raise ValueError("PiecewiseHazard needs at least one piece, each rate finite and >= 0")
        if ends[0] <= 0 or np.any(np.diff(ends) <= 0):
            raise ValueError(f"PiecewiseHazard's `until`s must be > 0 and increasing, got {ends}")

    def _starts(self) -> np.ndarray:
        return np.array([0.0] + [u for u, _ in self.pieces[:-1]])

    def _rates(self) -> np.ndarray:
        return np.array([r for _, r in self.pieces])

    def _cumulative_at_starts(self) -> np.ndarray:
        starts, rates = self._starts(), self._rates()
        return np.concatenate([[0.0], np.cumsum(rates[:-1] * np.diff(starts))])

    def _locate(self, t: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._starts(), t, side="right") - 1

    def survival(self, t: np.ndarray) -> np.ndarray:
        t = np.maximum(np.asarray(t, float), 0.0)
        i = self._locate(t)
        cum = self._cumulative_at_starts()[i] + self._rates()[i] * (t - self._starts()[i])
        return np.exp(-np.nan_to_num(cum, nan=np.inf))

    def survival_integral(self, t: np.ndarray) -> np.ndarray:
        t = np.maximum(np.asarray(t, float), 0.0)
        starts, rates, cum = self._starts(), self._rates(), self._cumulative_at_starts()
        lengths = np.append(np.diff(starts), np.inf)
        # ∫ over a whole piece: e^{-H(a)} (1 - e^{-r·len}) / r, or e^{-H(a)} · len when r = 0.
        whole = np.exp(-cum) * _expm1_over(rates, lengths)
        done = np.concatenate([[0.0], np.cumsum(whole[:-1])])
        i = self._locate(t)
        part = np.exp(-cum[i]) * _expm1_over(rates[i], t - starts[i])
        return done[i] + part

    def mean(self) -> float:
        if self.pieces[-1][1] == 0:
            return math.inf
        return float(self.survival_integral(np.array(math.inf)))

    def trend(self) -> str:
        steps = np.diff(self._rates())
        if not np.any(steps):
            return "flat"
        if np.all(steps >= 0):
            return "rising"
        return "falling" if np.all(steps <= 0) else "mixed"

    def span(self) -> tuple[float, float]:
        starts, rates, cum = self._starts(), self._rates(), self._cumulative_at_starts()
        finite = [u for u, _ in self.pieces if math.isfinite(u)]
        last = max(finite[-1] if finite else 0.0, starts[-1])

        def age_at(h: float) -> float:  # the age where the cumulative hazard reaches h
            ends = np.append(cum[1:], np.inf if rates[-1] > 0 else cum[-1])
            i = int(np.searchsorted(ends, h))
            if i >= len(rates):
                return last * 10
            return starts[i] + (h - cum[i]) / rates[i] if rates[i] > 0 else starts[i]

        low, high = age_at(1e-8), age_at(30.0)
        return max(low, 1e-3 * max(high, 1.0)), max(high, 1.5 * last)

    def describe(self) -> str:
        return f"a piecewise-constant hazard of {len(self.pieces)} pieces"


def _expm1_over(rate, length):
    """(1 - exp(-rate · length)) / rate, which is `length` at rate 0."""
    rate, length = np.broadcast_arrays(np.asarray(rate, float), np.asarray(length, float))
    safe = np.where(rate > 0, rate, 1.0)
    with np.errstate(invalid="ignore"):
        return np.where(rate > 0, -np.expm1(-safe * length) / safe, length)


# ---- rates at one rotation age ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rates:
    """What rotating at `age` seconds (None: never) gives, per connection-hour."""

    age: float | None
    cost_per_hour: float
    drops_per_hour: float
    rotations_per_hour: float


def _never(age) -> bool:
    """None or a scalar infinity: never rotating. (An array may hold infinities: S = 0 and
    ∫S = mean lifetime there, which gives the same rates.)"""
    return age is None or (np.ndim(age) == 0 and not math.isfinite(float(age)))


def drops_per_hour(dist: Lifetimes, age) -> np.ndarray:
    """D(T) = F(T) / ∫₀ᵀ S · 3600; at T = ∞ (or None), 3600 / mean lifetime."""
    if _never(age):
        return np.float64(HOUR / dist.mean())
    age = np.asarray(age, float)
    return (1 - dist.survival(age)) / dist.survival_integral(age) * HOUR


def rotations_per_hour(dist: Lifetimes, age) -> np.ndarray:
    """R(T) = S(T) / ∫₀ᵀ S · 3600; 0 when never rotating."""
    if _never(age):
        return np.float64(0.0)
    age = np.asarray(age, float)
    return dist.survival(age) / dist.survival_integral(age) * HOUR


def cost_per_hour(dist: Lifetimes, age, c_drop: float, c_rotate: float) -> np.ndarray:
    """C(T) · 3600 = [c_rotate · S(T) + c_drop · F(T)] / ∫₀ᵀ S · 3600: expected cost per
    connection-hour when rotating at age T; c_drop / mean lifetime · 3600 when never."""
    return c_rotate * rotations_per_hour(dist, age) + c_drop * drops_per_hour(dist, age)


def rates(dist: Lifetimes, age: float | None, c_drop: float, c_rotate: float) -> Rates:
    """Cost, drops and rotations per connection-hour when rotating at `age` (None: never)."""
    age = None if _never(age) else float(age)
    return Rates(
        age,
        float(cost_per_hour(dist, age, c_drop, c_rotate)),
        float(drops_per_hour(dist, age)),
        float(rotations_per_hour(dist, age)),
    )


# ---- the optimum -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recommendation:
    """`rotate_at` is T* in seconds, or None when rotating will not help; `reason` says why
    in a sentence. `at_best` is what the best finite age found gives (None when the hazard's
    shape rules rotation out without a search), `never` what not rotating gives."""

    rotate_at: float | None
    reason: str
    never: Rates
    at_best: Rates | None

    @property
    def chosen(self) -> Rates:
        """What following the recommendation gives: rotating at T*, or never."""
        return self.at_best if self.rotate_at is not None and self.at_best else self.never

    @property
    def saving(self) -> float:
        """The share of C(∞) that rotating at the best age saves (0 when nothing was searched)."""
        if self.at_best is None or self.never.cost_per_hour == 0:
            return 0.0
        return 1 - self.at_best.cost_per_hour / self.never.cost_per_hour


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.3g} min"


def optimal_rotation(
    dist: Lifetimes, c_drop: float, c_rotate: float, *, min_saving: float = MIN_SAVING
) -> Recommendation:
    """The rotation age T* minimising C(T), or None with the reason rotating will not help: a
    flat or falling hazard, a rotation costing no less than a drop, or no age saving more than
    `min_saving` of C(∞). The search runs on log T over `dist.span()`: a grid, then a bounded
    scalar minimisation between the best grid point's neighbours."""
    if not (c_drop > 0 and c_rotate >= 0):
        raise ValueError(f"costs must be c_drop > 0 and c_rotate >= 0, got {c_drop}, {c_rotate}")
    never = rates(dist, None, c_drop, c_rotate)
    if c_rotate >= c_drop:
        reason = (
            f"A planned rotation costs no less than a drop ({c_rotate:g} >= {c_drop:g}): "
            "rotating only replaces drops by something as costly, and sooner."
        )
        return Recommendation(None, reason, never, None)
    trend = dist.trend()
    if trend in ("flat", "falling"):
        why = {
            "flat": "the hazard is flat: an old session is no likelier to drop than a new one, "
            "so rotating adds rotations and saves no drops",
            "falling": "the hazard is falling: old sessions drop less than new ones, so "
            "rotating would swap survivors for riskier new sessions",
        }[trend]
        return Recommendation(
            None, f"Rotation will not help: {why} ({dist.describe()}).", never, None
        )

    if isinstance(dist, FixedLimit):
        best_age = dist.rotate_at
    else:
        best_age = _minimise(dist, c_drop, c_rotate)
    best = rates(dist, best_age, c_drop, c_rotate)
    recommendation = Recommendation(None, "", never, best)
    saving = recommendation.saving
    if saving <= min_saving:
        reason = (
            f"Rotation will not help enough: the best age, {_minutes(best_age)}, saves "
            f"{saving:.2%} of the cost of never rotating (less than {min_saving:.0%})."
        )
        return Recommendation(None, reason, never, best)
    cause = (
        f"every session ends at {_minutes(dist.limit)}, so rotating just before replaces "
        "each drop by a rotation"
        if isinstance(dist, FixedLimit)
        else f"the hazard rises with age ({dist.describe()})"
    )
    reason = (
        f"Rotate at {_minutes(best_age)}: {cause}; drops go from {never.drops_per_hour:.3g} to "
        f"{best.drops_per_hour:.3g} per connection-hour for {best.rotations_per_hour:.3g} "
        f"rotations, cutting the cost per hour by {saving:.1%}."
    )
    return Recommendation(best_age, reason, never, best)


def _minimise(dist: Lifetimes, c_drop: float, c_rotate: float) -> float:
    low, high = dist.span()
    grid = np.linspace(math.log(low), math.log(high), GRID_POINTS)

    def cost(log_age):
        return cost_per_hour(dist, np.exp(log_age), c_drop, c_rotate)

    costs = cost(grid)
    i = int(np.nanargmin(costs))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    refined = optimize.minimize_scalar(
        cost, bounds=(a, b), method="bounded", options={"xatol": 1e-6}
    )
    best = refined.x if refined.success and refined.fun <= costs[i] else grid[i]
    return float(math.exp(best))


# ---- uncertainty: a parametric bootstrap over a fitted Weibull -------------------------------


@dataclass(frozen=True, slots=True)
class WeibullEstimate:
    """A fitted Weibull and the covariance of (log shape, log scale): the scale on which the
    maximum-likelihood estimate is close to normal, and draws stay positive."""

    shape: float
    scale: float
    log_cov: tuple[tuple[float, float], tuple[float, float]]

    @property
    def weibull(self) -> Weibull:
        return Weibull(self.shape, self.scale)

    @classmethod
    def from_covariance(cls, shape: float, scale: float, cov) -> WeibullEstimate:
        """From the covariance of (shape, scale) on their own scale, by the delta method."""
        jac = np.diag([1 / shape, 1 / scale])
        log_cov = jac @ np.asarray(cov, float) @ jac
        return cls(shape, scale, tuple(map(tuple, log_cov.tolist())))

    @classmethod
    def from_intervals(
        cls,
        shape: float,
        scale: float,
        shape_ci: tuple[float, float],
        scale_ci: tuple[float, float],
    ) -> WeibullEstimate:
        """From 95 % CIs of shape and scale, taken as symmetric on the log scale and, for want
        of their correlation, independent."""
        z = 1.959963984540054
        sds = [(math.log(hi) - math.log(lo)) / (2 * z) for lo, hi in (shape_ci, scale_ci)]
        return cls(shape, scale, ((sds[0] ** 2, 0.0), (0.0, sds[1] ** 2)))

    @classmethod
    def from_fitter(cls, fitter) -> WeibullEstimate:
        """From a fitted lifelines WeibullFitter: `rho_` is the shape, `lambda_` the scale and
        `variance_matrix_` their covariance (natural scale, labelled)."""
        var = fitter.variance_matrix_
        order = ["rho_", "lambda_"]
        cov = np.asarray(var.loc[order, order], float)
        return cls.from_covariance(float(fitter.rho_), float(fitter.lambda_), cov)

    def draw(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` (shape, scale) pairs from the asymptotic normal of (log shape, log scale)."""
        rng = np.random.default_rng(seed)
        mean = [math.log(self.shape), math.log(self.scale)]
        logs = rng.multivariate_normal(mean, np.asarray(self.log_cov), size=n, method="cholesky")
        return np.exp(logs[:, 0]), np.exp(logs[:, 1])


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate and its confidence interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class PolicyEffect:
    """Drops and cost per connection-hour when rotating at `age` (None: never), with CIs."""

    age: float | None
    drops_per_hour: Estimate
    cost_per_hour: Estimate


@dataclass(frozen=True, slots=True)
class RotationEffect:
    """The recommended setting against the current one. The savings (current minus
    recommended) come from the same draws, so their CIs account for the two being correlated."""

    recommendation: Recommendation
    recommended: PolicyEffect
    current: PolicyEffect
    drops_saved_per_hour: Estimate
    cost_saved_per_hour: Estimate
    draws: int
    seed: int
    level: float


def _weibull_rates(age: float | None, k: np.ndarray, lam: np.ndarray, c_drop, c_rotate):
    """Drops and cost per hour at a fixed age, for arrays of Weibull parameters."""
    if _never(age):
        drops = HOUR / (lam * special.gamma(1 + 1 / k))
        return drops, c_drop * drops
    integral = _weibull_survival_integral(np.float64(age), k, lam)
    survival = _weibull_survival(np.float64(age), k, lam)
    drops = (1 - survival) / integral * HOUR
    return drops, drops * c_drop + survival / integral * HOUR * c_rotate


def rotation_effect(
    estimate: WeibullEstimate,
    c_drop: float,
    c_rotate: float,
    current_age: float | None = None,
    *,
    draws: int = 4000,
    seed: int = 0,
    level: float = 0.95,
    min_saving: float = MIN_SAVING,
) -> RotationEffect:
    """T* from the point estimate, then CIs on drops and cost per hour at T* and at
    `current_age` (None: never rotating), by a parametric bootstrap: `draws` parameter pairs
    from the asymptotic normal of (log shape, log scale), seeded. The ages stay fixed across
    draws: the question is what these two settings would give, not where T* might lie."""
    recommendation = optimal_rotation(estimate.weibull, c_drop, c_rotate, min_saving=min_saving)
    k, lam = estimate.draw(draws, seed)
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(point: float, sample: np.ndarray) -> Estimate:
        low, high = np.percentile(sample, tails)
        return Estimate(float(point), float(low), float(high))

    point = {}
    sampled = {}
    for name, age in (("recommended", recommendation.rotate_at), ("current", current_age)):
        at = rates(estimate.weibull, age, c_drop, c_rotate)
        point[name] = at
        sampled[name] = _weibull_rates(at.age, k, lam, c_drop, c_rotate)

    def effect(name: str) -> PolicyEffect:
        return PolicyEffect(
            point[name].age,
            interval(point[name].drops_per_hour, sampled[name][0]),
            interval(point[name].cost_per_hour, sampled[name][1]),
        )

    return RotationEffect(
        recommendation,
        effect("recommended"),
        effect("current"),
        interval(
            point["current"].drops_per_hour - point["recommended"].drops_per_hour,
            sampled["current"][0] - sampled["recommended"][0],
        ),
        interval(
            point["current"].cost_per_hour - point["recommended"].cost_per_hour,
            sampled["current"][1] - sampled["recommended"][1],
        ),
        draws,
        seed,
        level,
    )


# ---- the chart -------------------------------------------------------------------------------


def cost_chart(
    ax: Axes,
    dist: Lifetimes,
    c_drop: float,
    c_rotate: float,
    optimum: Recommendation | float | None,
    current: float | None = None,
) -> Axes:
    """Expected cost per connection-hour against the rotation age (minutes, log scale), with
    never rotating as a horizontal line, the optimum and the current setting marked. Matplotlib
    is imported only here (through report/charts.py, which picks the Agg backend)."""
    from matplotlib.ticker import FuncFormatter

    from harness.report import charts

    if isinstance(optimum, Recommendation):
        optimum = optimum.rotate_at
    never = float(cost_per_hour(dist, None, c_drop, c_rotate))
    marked = [a for a in (optimum, current) if a is not None and math.isfinite(a)]
    centre = dist.mean() if math.isfinite(dist.mean()) else dist.span()[1] / 2
    low = min([centre, *marked]) / 30
    high = max([centre, *marked]) * 5
    if isinstance(dist, FixedLimit):
        high = min(high, dist.limit * 1.5)
    ages = np.geomspace(low, high, 400)
    curve = cost_per_hour(dist, ages, c_drop, c_rotate)

    ax.plot(ages / 60, curve, color="#1f77b4", lw=1.5, label="rotate at this age")
    ax.axhline(never, color="#7f7f7f", ls="--", lw=1, label=f"never rotate: {never:.3g}/h")
    if optimum is not None and math.isfinite(optimum):
        at = float(cost_per_hour(dist, optimum, c_drop, c_rotate))
        ax.plot(
            [optimum / 60],
            [at],
            "o",
            color="#2ca02c",
            label=f"optimum: {_minutes(optimum)}, {at:.3g}/h",
        )
        ax.axvline(optimum / 60, color="#2ca02c", ls=":", lw=1)
    if current is not None and math.isfinite(current):
        at = float(cost_per_hour(dist, current, c_drop, c_rotate))
        ax.plot(
            [current / 60],
            [at],
            "s",
            color="#ff7f0e",
            label=f"current: {_minutes(current)}, {at:.3g}/h",
        )
        ax.axvline(current / 60, color="#ff7f0e", ls=":", lw=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    top = (
        max(never, *(float(cost_per_hour(dist, a, c_drop, c_rotate)) for a in marked))
        if marked
        else never
    )
    ax.set_ylim(0, 2.5 * top if top > 0 else 1.0)
    ax.set_xlabel("rotation age (min, log scale)")
    ax.set_ylabel("expected cost / connection-hour")
    ax.set_title(
        f"Planned rotation: cost per hour against rotation age ({dist.describe()})", fontsize=9
    )
    ax.grid(alpha=0.3, which="both")
    charts._legend_outside(ax, f"c_drop = {c_drop:g}, c_rotate = {c_rotate:g}")
    return ax
