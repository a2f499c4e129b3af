"""The age-replacement policy (report/rotation.py): T* against the optimum the first-order
condition gives, computed here independently (hazard by hand, S integrated by quad, brentq);
the cases where rotating cannot help; the bootstrap's CIs covering the truth when fitted to
samples of a known Weibull; the chart."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from lifelines import WeibullFitter  # noqa: E402
from scipy import integrate, optimize  # noqa: E402

from harness.report.rotation import (  # noqa: E402
    FixedLimit,
    PiecewiseHazard,
    Weibull,
    WeibullEstimate,
    cost_chart,
    cost_per_hour,
    drops_per_hour,
    exponential,
    optimal_rotation,
    rates,
    rotation_effect,
    rotations_per_hour,
)

# (shape, scale in s, c_drop, c_rotate): seconds of service lost per drop and per rotation.
KNOWN = [(2.5, 660.0, 30.0, 2.0), (3.0, 1200.0, 20.0, 0.5), (1.6, 900.0, 45.0, 5.0)]


def _survival(t: float, k: float, lam: float) -> float:
    return math.exp(-((t / lam) ** k))


def _hazard(t: float, k: float, lam: float) -> float:
    return k / lam * (t / lam) ** (k - 1)


def _integral(t: float, k: float, lam: float) -> float:
    return integrate.quad(_survival, 0, t, args=(k, lam), epsabs=1e-10, epsrel=1e-10)[0]


def _analytic_optimum(k: float, lam: float, c_drop: float, c_rotate: float) -> float:
    """Root of r(T)·∫₀ᵀS − F(T) = c_rotate / (c_drop − c_rotate), the condition dC/dT = 0."""
    target = c_rotate / (c_drop - c_rotate)

    def condition(t: float) -> float:
        return _hazard(t, k, lam) * _integral(t, k, lam) - (1 - _survival(t, k, lam)) - target

    return optimize.brentq(condition, lam * 1e-4, lam * 10, xtol=1e-9)


def _cost_per_hour(t: float, k: float, lam: float, c_drop: float, c_rotate: float) -> float:
    s = _survival(t, k, lam)
    return (c_rotate * s + c_drop * (1 - s)) / _integral(t, k, lam) * 3600


@pytest.mark.parametrize(("k", "lam", "c_drop", "c_rotate"), KNOWN)
def test_the_optimum_matches_the_first_order_condition(k, lam, c_drop, c_rotate) -> None:
    analytic = _analytic_optimum(k, lam, c_drop, c_rotate)
    found = optimal_rotation(Weibull(k, lam), c_drop, c_rotate)
    assert found.rotate_at is not None, found.reason
    assert found.rotate_at == pytest.approx(analytic, rel=0.10)
    assert found.rotate_at == pytest.approx(analytic, rel=1e-3)  # what the search really gives
    assert "rises" in found.reason


@pytest.mark.parametrize(("k", "lam", "c_drop", "c_rotate"), KNOWN)
def test_no_age_on_a_grid_costs_less_than_the_optimum(k, lam, c_drop, c_rotate) -> None:
    best = optimal_rotation(Weibull(k, lam), c_drop, c_rotate).rotate_at
    at_best = _cost_per_hour(best, k, lam, c_drop, c_rotate)
    grid = np.geomspace(lam / 100, lam * 5, 120)
    others = np.array([_cost_per_hour(t, k, lam, c_drop, c_rotate) for t in grid])
    assert np.all(at_best <= others * (1 + 1e-9))
    never = c_drop / (lam * math.gamma(1 + 1 / k)) * 3600
    assert at_best < never


def test_rates_at_an_age_and_at_never_agree_with_the_definitions() -> None:
    k, lam, c_drop, c_rotate = KNOWN[0]
    dist = Weibull(k, lam)
    for t in (60.0, 400.0, 2000.0):
        integral = _integral(t, k, lam)
        s = _survival(t, k, lam)
        assert drops_per_hour(dist, t) == pytest.approx((1 - s) / integral * 3600, rel=1e-8)
        assert rotations_per_hour(dist, t) == pytest.approx(s / integral * 3600, rel=1e-8)
        assert cost_per_hour(dist, t, c_drop, c_rotate) == pytest.approx(
            _cost_per_hour(t, k, lam, c_drop, c_rotate), rel=1e-8
        )
    mean = lam * math.gamma(1 + 1 / k)
    never = rates(dist, None, c_drop, c_rotate)
    assert never.age is None
    assert never.cost_per_hour == pytest.approx(c_drop / mean * 3600)
    assert never.drops_per_hour == pytest.approx(3600 / mean)
    assert never.rotations_per_hour == 0
    assert rates(dist, math.inf, c_drop, c_rotate) == never
    # Far past every lifetime, rotating at T is never rotating.
    assert cost_per_hour(dist, lam * 20, c_drop, c_rotate) == pytest.approx(never.cost_per_hour)


def test_recommendation_reports_both_settings() -> None:
    k, lam, c_drop, c_rotate = KNOWN[0]
    found = optimal_rotation(Weibull(k, lam), c_drop, c_rotate)
    assert found.chosen is found.at_best
    assert found.at_best.age == found.rotate_at
    assert found.at_best.drops_per_hour < found.never.drops_per_hour
    assert found.at_best.rotations_per_hour > 0
    assert 0.01 < found.saving < 1


def test_exponential_lifetimes_get_no_rotation_because_the_hazard_is_flat() -> None:
    found = optimal_rotation(exponential(600.0), 30.0, 2.0)
    assert found.rotate_at is None
    assert "flat" in found.reason
    assert found.chosen == found.never
    assert found.never.drops_per_hour == pytest.approx(6.0)


def test_a_falling_hazard_gets_no_rotation() -> None:
    found = optimal_rotation(Weibull(0.7, 600.0), 30.0, 2.0)
    assert found.rotate_at is None
    assert "falling" in found.reason


def test_a_barely_rising_hazard_saves_too_little_to_rotate() -> None:
    found = optimal_rotation(Weibull(1.02, 600.0), 30.0, 2.0)
    assert found.rotate_at is None
    assert "1%" in found.reason
    assert found.saving < 0.01


def test_a_rotation_as_costly_as_a_drop_never_helps() -> None:
    found = optimal_rotation(Weibull(3.0, 600.0), 5.0, 5.0)
    assert found.rotate_at is None
    assert "no less than a drop" in found.reason


def test_a_fixed_limit_is_rotated_just_before_it() -> None:
    limit = 1800.0
    found = optimal_rotation(FixedLimit(limit), 30.0, 2.0)
    assert found.rotate_at is not None
    assert limit - 10.0 <= found.rotate_at < limit
    assert found.at_best.drops_per_hour == 0
    assert found.at_best.rotations_per_hour == pytest.approx(3600 / found.rotate_at)
    assert found.never.drops_per_hour == pytest.approx(2.0)
    assert optimal_rotation(FixedLimit(limit, margin=30.0), 30.0, 2.0).rotate_at == limit - 30
    assert optimal_rotation(FixedLimit(limit), 2.0, 30.0).rotate_at is None


def test_a_piecewise_hazard_integrates_like_quad() -> None:
    dist = PiecewiseHazard(((300.0, 0.0), (900.0, 2e-4), (math.inf, 3e-3)))
    for t in (100.0, 600.0, 2500.0):
        expected = integrate.quad(lambda u: float(dist.survival(u)), 0, t, points=[300, 900])[0]
        assert float(dist.survival_integral(t)) == pytest.approx(expected, rel=1e-8)
    assert dist.mean() == pytest.approx(float(dist.survival_integral(1e6)), rel=1e-9)


def test_a_piecewise_hazard_tracing_a_weibull_finds_its_optimum() -> None:
    k, lam, c_drop, c_rotate = KNOWN[1]
    ends = np.linspace(10.0, 6 * lam, 1200)
    mids = (np.concatenate([[0.0], ends[:-1]]) + ends) / 2
    pieces = tuple(zip(ends, (_hazard(m, k, lam) for m in mids), strict=True))
    found = optimal_rotation(PiecewiseHazard(pieces), c_drop, c_rotate)
    assert found.rotate_at == pytest.approx(_analytic_optimum(k, lam, c_drop, c_rotate), rel=0.02)


def test_piecewise_hazards_that_are_flat_or_falling_get_no_rotation() -> None:
    flat = PiecewiseHazard(((600.0, 1e-3), (math.inf, 1e-3)))
    assert "flat" in optimal_rotation(flat, 30.0, 2.0).reason
    falling = PiecewiseHazard(((600.0, 2e-3), (math.inf, 1e-3)))
    assert "falling" in optimal_rotation(falling, 30.0, 2.0).reason


def test_estimates_from_a_fitter_a_covariance_and_intervals_agree() -> None:
    rng = np.random.default_rng(7)
    t = 660.0 * rng.weibull(2.5, 400)
    fitter = WeibullFitter().fit(t)
    est = WeibullEstimate.from_fitter(fitter)
    assert est.shape == pytest.approx(fitter.rho_)
    assert est.scale == pytest.approx(fitter.lambda_)
    var = fitter.variance_matrix_
    assert est.log_cov[0][0] == pytest.approx(var.loc["rho_", "rho_"] / fitter.rho_**2)
    assert est.log_cov[1][1] == pytest.approx(var.loc["lambda_", "lambda_"] / fitter.lambda_**2)
    sd_k, sd_l = math.sqrt(est.log_cov[0][0]), math.sqrt(est.log_cov[1][1])
    z = 1.959963984540054
    ci = WeibullEstimate.from_intervals(
        est.shape,
        est.scale,
        (est.shape * math.exp(-z * sd_k), est.shape * math.exp(z * sd_k)),
        (est.scale * math.exp(-z * sd_l), est.scale * math.exp(z * sd_l)),
    )
    assert ci.log_cov[0][0] == pytest.approx(est.log_cov[0][0])
    assert ci.log_cov[1][1] == pytest.approx(est.log_cov[1][1])


def test_the_bootstrap_is_seeded_and_brackets_its_point_estimates() -> None:
    est = WeibullEstimate(2.5, 660.0, ((0.01, 0.002), (0.002, 0.003)))
    one = rotation_effect(est, 30.0, 2.0, current_age=None, draws=1000, seed=3)
    assert one == rotation_effect(est, 30.0, 2.0, current_age=None, draws=1000, seed=3)
    assert one.recommended.age == one.recommendation.rotate_at
    assert one.current.age is None
    for e in (one.recommended.drops_per_hour, one.recommended.cost_per_hour):
        assert e.low < e.value < e.high
    assert one.current.drops_per_hour.value == pytest.approx(
        3600 / (660.0 * math.gamma(1 + 1 / 2.5))
    )
    assert one.cost_saved_per_hour.low > 0  # rotating at T* beats never, with confidence


def test_bootstrap_cis_cover_the_true_drops_per_hour_when_fitted_to_samples() -> None:
    """50 samples of 200 connections from Weibull(2.5, 660 s), censored by a run end, fitted
    by lifelines: the 95 % CI for drops per hour at the recommended T* (and at a current 15 min
    setting) should hold the true value at that age in most of them."""
    k, lam, c_drop, c_rotate = KNOWN[0]
    truth = Weibull(k, lam)
    current = 900.0
    covered = covered_current = 0
    for rep in range(50):
        rng = np.random.default_rng([32, rep])
        life = lam * rng.weibull(k, 200)
        end = rng.uniform(0, 2 * lam, 200)
        fitter = WeibullFitter().fit(np.minimum(life, end), life <= end)
        effect = rotation_effect(
            WeibullEstimate.from_fitter(fitter), c_drop, c_rotate, current, draws=1000, seed=rep
        )
        at = effect.recommended
        assert at.age is not None
        true_drops = float(drops_per_hour(truth, at.age))
        covered += at.drops_per_hour.low <= true_drops <= at.drops_per_hour.high
        true_current = float(drops_per_hour(truth, current))
        ci = effect.current.drops_per_hour
        covered_current += ci.low <= true_current <= ci.high
    assert covered >= 43, covered
    assert covered_current >= 43, covered_current


def test_the_cost_chart_draws_the_curve_the_optimum_and_never_rotating(tmp_path) -> None:
    k, lam, c_drop, c_rotate = KNOWN[0]
    dist = Weibull(k, lam)
    found = optimal_rotation(dist, c_drop, c_rotate)
    fig, ax = plt.subplots(figsize=(7, 4))
    assert cost_chart(ax, dist, c_drop, c_rotate, found, current=900.0) is ax
    labels = [line.get_label() for line in ax.get_lines()]
    assert any(label.startswith("optimum") for label in labels)
    assert any(label.startswith("current") for label in labels)
    never = [line for line in ax.get_lines() if line.get_label().startswith("never")]
    assert never and np.allclose(never[0].get_ydata(), found.never.cost_per_hour)
    assert ax.get_xscale() == "log"
    path = tmp_path / "rotation.png"
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    assert path.stat().st_size > 5_000
    # A fixed limit and no recommendation draw too.
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    limit = FixedLimit(1800.0)
    cost_chart(axes[0], limit, c_drop, c_rotate, optimal_rotation(limit, c_drop, c_rotate), None)
    cost_chart(axes[1], exponential(600.0), c_drop, c_rotate, None, current=900.0)
    fig.savefig(tmp_path / "more.png", dpi=60)
    plt.close(fig)
    assert (tmp_path / "more.png").stat().st_size > 5_000
