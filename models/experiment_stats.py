"""Statistics of an A/B experiment, from per-user metric arrays to a decision (pure compute).

- :func:`welch`: difference in means (treatment - control) with Welch's t interval
  (``scipy.stats.ttest_ind(equal_var=False)``); the unit is the user, so a user's many
  impressions are one observation (per-user CTR = the user's clicks / impressions).
- :func:`cuped`: CUPED (Deng, Xu, Kohavi and Walker, WSDM 2013). With a pre-period
  covariate ``x`` (the same metric before the experiment), ``y' = y - theta (x - mean x)``,
  ``theta = cov(x, y) / var(x)`` pooled over both arms; the difference of ``y'`` means
  is unbiased for the same effect (randomisation makes ``x`` balanced) with variance
  reduced by ``corr(x, y)^2``. Reported with the variance reduction achieved.
- :func:`confidence_sequence`: an always-valid interval for the average treatment effect,
  the asymptotic confidence sequence of Waudby-Smith, Arnold, Wu and Ramdas
  ("Time-uniform central limit theory and asymptotic confidence sequences", Annals of
  Statistics 2024, arXiv:2103.06476). Users in arrival order ``i = 1..t`` give
  ``psi_i = (Z_i / pi - (1 - Z_i) / (1 - pi)) (Y_i - c_i)``, where ``pi`` is the design's
  treatment share and ``c_i`` the mean of ``Y`` over the users before ``i`` (a predictable
  centring: it leaves ``E psi = ATE`` and removes most of the variance plain IPW has when
  the metric's mean is far from 0). With ``psi_bar_t`` and ``s_t`` their mean and standard
  deviation, the two-sided (1 - alpha) sequence is

      psi_bar_t +- s_t * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) ),

  with ``rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / t_star``, which makes it
  tightest near the planned sample ``t_star`` (a design choice fixed in advance; the
  sequence is valid for every ``t`` whatever it is). Coverage holds uniformly over time
  (asymptotically), so the interval may be looked at every day and the experiment stopped
  as soon as it excludes 0, without inflating the false-positive rate.
- :func:`adjust`: Holm or Benjamini-Hochberg over several metrics
  (``statsmodels.stats.multitest.multipletests``).
- :func:`srm`: sample-ratio mismatch, chi-square goodness of fit of the users per variant
  against the design's weights (``scipy.stats.chisquare``), flagged at p < 0.001.
- :func:`decide`: ship, stop or keep running, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

SRM_THRESHOLD = 0.001
SHIP, STOP, KEEP = "ship", "stop", "keep running"


@dataclass(frozen=True)
class Interval:
    """Treatment minus control: the difference, its interval and (where the method has
    one) the p-value; the arms' sizes and means; the method's name."""

    diff: float
    low: float
    high: float
    p_value: float | None
    n_control: int
    n_treatment: int
    mean_control: float
    mean_treatment: float
    method: str
    metric: str = ""

    @property
    def relative(self) -> float:
        """The difference relative to the control mean."""
        return self.diff / self.mean_control if self.mean_control else float("nan")


def _vec(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype="float64")
    if a.ndim != 1 or len(a) < 2:
        raise ValueError(f"{name}: needs a 1-D array of at least 2 users, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: has NaN or infinite values")
    return a


def welch(control, treatment, alpha: float = 0.05, metric: str = "") -> Interval:
    """Difference in means with Welch's t interval and two-sided p-value."""
    c, t = _vec(control, "control"), _vec(treatment, "treatment")
    res = stats.ttest_ind(t, c, equal_var=False)
    ci = res.confidence_interval(1 - alpha)
    return Interval(float(t.mean() - c.mean()), float(ci.low), float(ci.high),
                    float(res.pvalue), len(c), len(t), float(c.mean()), float(t.mean()),
                    "welch", metric)


@dataclass(frozen=True)
class Cuped:
    """The CUPED interval, theta, the variance reduction ``1 - var(y') / var(y)`` and the
    unadjusted interval for comparison."""

    interval: Interval
    theta: float
    variance_reduction: float
    unadjusted: Interval


def cuped_theta(y: np.ndarray, x: np.ndarray) -> float:
    """``cov(x, y) / var(x)`` (0 when ``x`` is constant)."""
    vx = float(np.var(x, ddof=1))
    return float(np.cov(x, y, ddof=1)[0, 1] / vx) if vx > 0 else 0.0


def cuped(control_y, control_x, treatment_y, treatment_x, alpha: float = 0.05,
          metric: str = "") -> Cuped:
    """Welch's interval on CUPED-adjusted metrics (``x``: each user's pre-period value)."""
    cy, ty = _vec(control_y, "control_y"), _vec(treatment_y, "treatment_y")
    cx, tx = _vec(control_x, "control_x"), _vec(treatment_x, "treatment_x")
    if len(cx) != len(cy) or len(tx) != len(ty):
        raise ValueError("control_x / treatment_x: one pre-period value per user")
    y, x = np.concatenate([cy, ty]), np.concatenate([cx, tx])
    theta = cuped_theta(y, x)
    mx = x.mean()
    adj_c, adj_t = cy - theta * (cx - mx), ty - theta * (tx - mx)
    raw = welch(cy, ty, alpha, metric)
    adj = welch(adj_c, adj_t, alpha, metric)
    adj = Interval(adj.diff, adj.low, adj.high, adj.p_value, adj.n_control, adj.n_treatment,
                   raw.mean_control, raw.mean_treatment, "cuped", metric)
    var_raw = np.var(cy, ddof=1) / len(cy) + np.var(ty, ddof=1) / len(ty)
    var_adj = np.var(adj_c, ddof=1) / len(cy) + np.var(adj_t, ddof=1) / len(ty)
    return Cuped(adj, theta, float(1 - var_adj / var_raw) if var_raw > 0 else 0.0, raw)


def cs_radius(t: np.ndarray, sd: np.ndarray, alpha: float, t_star: float) -> np.ndarray:
    """Half-width of the asymptotic confidence sequence at sample sizes ``t``."""
    t = np.asarray(t, dtype="float64")
    la = -2 * math.log(alpha)
    rho2 = (la + math.log(la + 1)) / t_star
    return sd * np.sqrt(2 * (t * rho2 + 1) / (t ** 2 * rho2)
                        * np.log(np.sqrt(t * rho2 + 1) / alpha))


def _psi(y: np.ndarray, z: np.ndarray, pi: float) -> np.ndarray:
    prev = np.concatenate([[0.0], np.cumsum(y)[:-1]])
    centre = prev / np.maximum(np.arange(len(y)), 1)
    return (z / pi - (1 - z) / (1 - pi)) * (y - centre)


def confidence_sequence_path(y, treated, pi: float = 0.5, alpha: float = 0.05,
                             t_star: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """The sequence's (low, high) after each user, users in arrival order.

    ``y`` is the per-user metric, ``treated`` 0/1, ``pi`` the design's treatment share.
    The first two points have no standard deviation and are (-inf, inf).
    """
    yv = np.asarray(y, dtype="float64")
    z = np.asarray(treated, dtype="float64")
    if yv.shape != z.shape or yv.ndim != 1:
        raise ValueError("y and treated must be 1-D arrays of one length")
    if not 0 < pi < 1:
        raise ValueError(f"pi: {pi!r} must be in (0, 1)")
    psi = _psi(yv, z, pi)
    t = np.arange(1, len(psi) + 1, dtype="float64")
    s1, s2 = np.cumsum(psi), np.cumsum(psi ** 2)
    mean = s1 / t
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.maximum(s2 - t * mean ** 2, 0) / (t - 1))
        r = cs_radius(t, sd, alpha, t_star)
    r[t < 2] = np.inf
    return mean - r, mean + r


def confidence_sequence(y, treated, pi: float = 0.5, alpha: float = 0.05,
                        t_star: int = 10_000, metric: str = "") -> Interval:
    """The sequence's interval after all the users given (valid at any look)."""
    yv = np.asarray(y, dtype="float64")
    z = np.asarray(treated).astype(bool)
    low, high = confidence_sequence_path(yv, z, pi, alpha, t_star)
    c, t = yv[~z], yv[z]
    psi_mean = float(_psi(yv, z.astype("float64"), pi).mean())
    return Interval(psi_mean, float(low[-1]), float(high[-1]), None, len(c), len(t),
                    float(c.mean()) if len(c) else float("nan"),
                    float(t.mean()) if len(t) else float("nan"), "confidence sequence",
                    metric)


def adjust(p_values: Sequence[float], method: str = "holm",
           alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(reject, adjusted p-values) by Holm (``"holm"``) or Benjamini-Hochberg
    (``"fdr_bh"``)."""
    if method not in ("holm", "fdr_bh"):
        raise ValueError(f"method: {method!r} must be 'holm' or 'fdr_bh'")
    reject, p_adj, _, _ = multipletests(np.asarray(p_values, dtype="float64"), alpha=alpha,
                                        method=method)
    return reject, p_adj


@dataclass(frozen=True)
class SRM:
    """Users per variant, the expected counts, chi-square, p-value and the flag."""

    counts: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    flagged: bool


def srm(counts: Sequence[int], weights: Sequence[float],
        threshold: float = SRM_THRESHOLD) -> SRM:
    """Chi-square test of the users per variant against the design's weights."""
    n = np.asarray(counts, dtype="float64")
    w = np.asarray(weights, dtype="float64")
    if n.shape != w.shape or len(n) < 2:
        raise ValueError("counts and weights: one per variant, at least two")
    if abs(w.sum() - 1) > 1e-9:
        raise ValueError(f"weights: sum to {w.sum()!r}, must be 1")
    expected = n.sum() * w
    res = stats.chisquare(n, expected)
    return SRM(tuple(int(x) for x in n), tuple(float(x) for x in expected),
               float(res.statistic), float(res.pvalue), bool(res.pvalue < threshold))


def multiple_exposure(user_ids: Sequence, variants: Sequence) -> tuple[int, int, float]:
    """(users, users seen in more than one variant, their share): a routing or
    identity bug when not ~0."""
    u = np.asarray(user_ids)
    v = np.asarray(variants)
    pairs = np.unique(np.stack([u.astype(str), v.astype(str)]), axis=1)
    users, per_user = np.unique(pairs[0], return_counts=True)
    multi = int((per_user > 1).sum())
    return len(users), multi, multi / len(users) if len(users) else 0.0


@dataclass(frozen=True)
class Decision:
    action: str  # "ship", "stop" or "keep running"
    reason: str


def _fmt(iv: Interval) -> str:
    rel = f" ({iv.relative:+.2%} relative)" if math.isfinite(iv.relative) else ""
    return f"{iv.diff:+.4g} [{iv.low:+.4g}, {iv.high:+.4g}]{rel} by {iv.method}"


def decide(primary: Interval, *, srm_check: SRM | None = None,
           guardrails: Sequence[Interval] = (), higher_is_better: bool = True,
           min_effect: float = 0.0, min_users: int = 100, planned_users: int | None = None,
           alpha: float = 0.05) -> Decision:
    """Ship, stop or keep running, and why.

    ``primary`` should be a :func:`confidence_sequence` interval when the experiment is
    looked at repeatedly (a fixed-horizon Welch interval is only valid at the planned
    sample). Guardrails (higher is better for all of them, pass negated metrics
    otherwise) are Holm-adjusted among themselves. In order: a sample-ratio mismatch
    stops everything (the comparison is not randomised any more); too few users keeps
    running; a guardrail significantly worse stops; the primary interval above 0 ships,
    below 0 stops; an interval whose best case is under ``min_effect`` stops for
    futility; reaching ``planned_users`` without an answer stops; else keep running.
    """
    if srm_check is not None and srm_check.flagged:
        return Decision(STOP, f"sample ratio mismatch: users per variant {srm_check.counts} "
                              f"against expected {tuple(round(e) for e in srm_check.expected)}"
                              f" (p={srm_check.p_value:.2g} < {SRM_THRESHOLD}); assignment "
                              "or logging is broken, the metrics cannot be trusted")
    n = primary.n_control + primary.n_treatment
    if n < min_users:
        return Decision(KEEP, f"only {n} users so far (minimum {min_users})")
    sign = 1.0 if higher_is_better else -1.0
    if guardrails:
        ps = [g.p_value if g.p_value is not None else (0.0 if g.high < 0 else 1.0)
              for g in guardrails]
        reject, p_adj = adjust(ps, "holm", alpha)
        for g, rej, p in zip(guardrails, reject, p_adj, strict=True):
            if rej and g.diff < 0:
                return Decision(STOP, f"guardrail {g.metric or '?'} is worse: {_fmt(g)}, "
                                      f"Holm-adjusted p={p:.2g}")
    lo, hi = sorted((sign * primary.low, sign * primary.high))
    name = primary.metric or "primary metric"
    if lo > 0:
        return Decision(SHIP, f"{name} better: {_fmt(primary)}; interval excludes 0")
    if hi < 0:
        return Decision(STOP, f"{name} worse: {_fmt(primary)}; interval excludes 0")
    if hi < min_effect:
        return Decision(STOP, f"{name}: {_fmt(primary)}; an effect of {min_effect:+.4g} or "
                              "more is ruled out (futility)")
    if planned_users is not None and n >= planned_users:
        return Decision(STOP, f"{name}: {_fmt(primary)}; planned {planned_users} users "
                              "reached with no significant effect")
    return Decision(KEEP, f"{name}: {_fmt(primary)}; interval includes 0 with {n} users")
