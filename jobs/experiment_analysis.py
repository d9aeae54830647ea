"""The daily analysis of experiments (issue 13, item 6): from the exposure log and the events
to results, a decision and a plot per experiment.

For a day ``D`` (run by ``dags/experiments.py`` for the day that ended, or by ``recs
experiments analyse``), every experiment that was running on ``D`` or stopped less than
``recent_days`` before its end is analysed **cumulatively**: all its exposures from its
start up to the end of ``D`` (UTC), and the events that answer them (``interactions``
joined to ``exposures`` by ``request_id``, counted only for items that list showed, each
(request, item, kind) once).

A/B experiments, per user (the unit; a heavy user is one observation):

- ``ctr``: clicked items / items shown; ``conversion``: purchased items / lists served;
- per treatment against the control (the first variant): Welch's interval
  (``welch``), CUPED (``cuped``) with the user's pre-period value (the number of events of
  the metric's kind, clicks or purchases, in the ``pre_days`` before the experiment's
  start; the variance reduction is in ``details``), and the confidence sequence
  (``sequential``, users in order of first exposure, valid at every daily look); Holm (or
  Benjamini-Hochberg) over the metrics, per treatment and method, into ``p_adjusted``;
- the sample-ratio check (users per variant against the weights, flagged at p < 0.001)
  and the multiple-exposure check (users seen in more than one variant: left out of the
  metrics, and a share above ``max_multiple_exposure`` stops the experiment);
- QA users with an override are left out.

Interleaving experiments: each impression with clicks is won by the team (the variant
index in ``exposures.teams``) with more clicked items, per pair (control, treatment); per
user, the preference for the treatment ``Δ = (wins_T + ties/2) / (wins_T + wins_C + ties)
− 0.5`` with a seeded bootstrap interval of mean Δ; the wins test (a t-test over users of
the net wins per user, ``models.interleaving.wins_test``) gives the p-value, the sign test
over users is reported beside it.

Decisions: ``models.experiment_stats.decide`` on the primary metric's confidence sequence
(the other metric's Welch interval as a guardrail); for interleaving, the wins test.
A re-run of a day replaces that day's rows of that experiment in one transaction; the
plot goes to ``<lake>/experiments/<key>/dt=<D>/plot.png``, written beside and renamed.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import db, lake
from jobs import experiments as registry
from models import experiment_stats as st
from models import interleaving as il

log = logging.getLogger(__name__)

METRIC_EVENTS = {"ctr": "click", "conversion": "purchase"}
PLOT_DPI = 100


@dataclass(frozen=True)
class AnalysisConfig:
    """Settings of the analysis; every field is checked at construction."""

    alpha: float = 0.05
    pre_days: int = 28
    recent_days: int = 7
    t_star: int = 10_000          # the confidence sequence is tightest near this many users
    planned_users: int | None = None
    min_users: int = 100
    multitest: str = "holm"       # or "fdr_bh"
    max_multiple_exposure: float = 0.01
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: {self.alpha!r} must be in (0, 1)")
        for name in ("pre_days", "recent_days", "min_users", "n_boot"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: {getattr(self, name)!r} must be >= 0")
        if self.t_star < 1:
            raise ValueError(f"t_star: {self.t_star!r} must be >= 1")
        if self.multitest not in ("holm", "fdr_bh"):
            raise ValueError(f"multitest: {self.multitest!r} must be 'holm' or 'fdr_bh'")
        if not 0 <= self.max_multiple_exposure <= 1:
            raise ValueError(f"max_multiple_exposure: {self.max_multiple_exposure!r} "
                             "must be in [0, 1]")


@dataclass
class Analysis:
    """One experiment on one day: the rows for ``experiment_results``, the decision and
    what the plot shows."""

    key: str
    day: dt.date
    kind: str
    rows: list[dict] = field(default_factory=list)
    action: str = st.KEEP
    reason: str = ""
    srm_p_value: float | None = None
    details: dict = field(default_factory=dict)


def _clean(x):
    """NaN and infinities as None, numpy scalars as Python ones (for SQL and JSON)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    return start, start + dt.timedelta(days=1)


# --- which experiments -----------------------------------------------------------------------

def experiments_for(dsn: str, day: dt.date, config: AnalysisConfig = AnalysisConfig()
                    ) -> list[str]:
    """Keys of the experiments to analyse for ``day``: started before its end, and running
    or stopped less than ``recent_days`` before its end."""
    _, until = _bounds(day)
    with db.transaction(dsn) as cur:
        cur.execute("SELECT experiment_key FROM experiments "
                    "WHERE starts_at < %(until)s AND (status = 'running' OR "
                    "(status = 'stopped' AND stopped_at >= %(until)s - %(recent)s))"
                    " ORDER BY experiment_key",
                    {"until": until, "recent": dt.timedelta(days=config.recent_days)})
        return [r[0] for r in cur.fetchall()]


# --- reading ---------------------------------------------------------------------------------

# The experiment's exposures, by (user, variant), with the events that answer them; each
# (request, item, kind) counted once, only for items the list showed.
def _exposed(a: str) -> str:
    return (f"{a}.experiment_key = %(key)s AND {a}.served_at >= %(since)s "
            f"AND {a}.served_at < %(until)s AND NOT {a}.user_id = ANY(%(qa)s)")



AB_SQL = f"""
SELECT e.user_id, e.variant, min(e.served_at), count(*), sum(cardinality(e.items)),
       coalesce(sum(c.clicks), 0), coalesce(sum(c.purchases), 0)
FROM exposures e
LEFT JOIN (
    SELECT x.request_id,
           count(DISTINCT i.item_id) FILTER (WHERE i.event_type = 'click') AS clicks,
           count(DISTINCT i.item_id) FILTER (WHERE i.event_type = 'purchase') AS purchases
    FROM interactions i JOIN exposures x ON x.request_id = i.request_id
    WHERE i."timestamp" >= %(since)s AND i."timestamp" < %(until)s
      AND i.item_id = ANY(x.items) AND {_exposed('x')}
    GROUP BY x.request_id
) c ON c.request_id = e.request_id
WHERE {_exposed('e')} AND e.variant IS NOT NULL
GROUP BY e.user_id, e.variant
"""

PRE_SQL = """
SELECT user_id, count(*) FILTER (WHERE event_type = 'click'),
       count(*) FILTER (WHERE event_type = 'purchase')
FROM interactions
WHERE "timestamp" >= %(from)s AND "timestamp" < %(since)s AND user_id = ANY(%(users)s)
GROUP BY user_id
"""

# Interleaving: per request and team, how many of the team's shown items were clicked.
IL_SQL = f"""
SELECT e.user_id, e.request_id::text, t.team, count(c.item_id)
FROM exposures e
CROSS JOIN LATERAL unnest(e.items, e.teams) AS t(item, team)
LEFT JOIN (
    SELECT DISTINCT x.request_id, i.item_id
    FROM interactions i JOIN exposures x ON x.request_id = i.request_id
    WHERE i.event_type = 'click' AND i."timestamp" >= %(since)s AND i."timestamp" < %(until)s
      AND {_exposed('x')}
) c ON c.request_id = e.request_id AND c.item_id = t.item
WHERE {_exposed('e')} AND e.teams IS NOT NULL
GROUP BY e.user_id, e.request_id, t.team
"""


# --- A/B ---------------------------------------------------------------------------------------

def _row(variant: str, metric: str, method: str, users: int, exposures: int, mean=None,
         diff=None, low=None, high=None, p_value=None, details=None) -> dict:
    return {"variant": variant, "metric": metric, "method": method, "users": users,
            "exposures": exposures, "mean": mean, "diff": diff, "low": low, "high": high,
            "p_value": p_value, "p_adjusted": None, "details": details or {}}


def analyse_ab(stored: registry.Stored, day: dt.date, per_user: list[tuple],
               pre: dict[int, tuple[int, int]], config: AnalysisConfig) -> Analysis:
    """The A/B analysis from per (user, variant) rows ``(user, variant, first_seen,
    exposures, slots, clicks, purchases)`` and pre-period ``{user: (clicks, purchases)}``
    (pure compute over what :func:`analyse` read)."""
    exp = stored.experiment
    out = Analysis(exp.key, day, stored.kind)
    names = [v.key for v in exp.variants]
    weights = {v.key: v.weight for v in exp.variants}
    users = [r[0] for r in per_user]
    variants = [r[1] for r in per_user]
    n_users, n_multi, share = st.multiple_exposure(users, variants) if per_user else (0, 0, 0.0)
    seen: dict[int, int] = defaultdict(int)
    for u in users:
        seen[u] += 1
    arms: dict[str, list[tuple]] = {k: [] for k in names}
    unknown = 0
    for r in sorted(per_user, key=lambda r: (r[2], r[0])):  # arrival order
        if seen[r[0]] > 1:
            continue
        if r[1] not in arms:
            unknown += 1
            continue
        arms[r[1]].append(r)
    counts = {k: len(v) for k, v in arms.items()}
    out.details.update(users=n_users, users_per_variant=counts,
                       multiple_exposure_users=n_multi, multiple_exposure_share=share,
                       unknown_variant_users=unknown)

    def metric(rows: list[tuple], m: str) -> np.ndarray:
        if m == "ctr":
            return np.array([r[5] / r[4] if r[4] else 0.0 for r in rows], dtype="float64")
        return np.array([r[6] / r[3] for r in rows], dtype="float64")

    def pre_value(rows: list[tuple], m: str) -> np.ndarray:
        j = 0 if m == "ctr" else 1
        return np.array([pre.get(r[0], (0, 0))[j] for r in rows], dtype="float64")

    control = names[0]
    c_rows = arms[control]
    compared = {k for k in names[1:] if len(c_rows) >= 2 and len(arms[k]) >= 2}
    for m in METRIC_EVENTS:  # the control's (and any uncompared variant's) own figures
        for k in (k for k in names if k not in compared):
            rows = arms[k]
            y = metric(rows, m)
            out.rows.append(_row(k, m, "welch", len(rows), sum(r[3] for r in rows),
                                 mean=float(y.mean()) if len(y) else None))
    # SRM over the variants that should get traffic.
    live = [k for k in names if weights[k] > 0]
    srm = None
    if sum(counts[k] for k in live) > 0 and len(live) >= 2:
        total_w = sum(weights[k] for k in live)
        srm = st.srm([counts[k] for k in live], [weights[k] / total_w for k in live])
        out.srm_p_value = srm.p_value
        out.details.update(srm_chi2=srm.chi2, srm_flagged=srm.flagged,
                           srm_expected=dict(zip(live, srm.expected, strict=True)))
    decisions: dict[str, st.Decision] = {}
    for k in names[1:]:
        t_rows = arms[k]
        if k not in compared:
            decisions[k] = st.Decision(st.KEEP, f"{k}: only {len(c_rows)} control and "
                                                f"{len(t_rows)} treatment users so far")
            continue
        intervals: dict[str, dict[str, st.Interval]] = defaultdict(dict)
        row_of: dict[tuple[str, str], dict] = {}
        exposures_t = sum(r[3] for r in t_rows)
        for m in METRIC_EVENTS:
            yc, yt = metric(c_rows, m), metric(t_rows, m)
            w = st.welch(yc, yt, config.alpha, m)
            cu = st.cuped(yc, pre_value(c_rows, m), yt, pre_value(t_rows, m), config.alpha, m)
            both = sorted(c_rows + t_rows, key=lambda r: (r[2], r[0]))
            z = np.array([r[1] == k for r in both])
            pi = weights[k] / (weights[k] + weights[control])
            seq = st.confidence_sequence(metric(both, m), z, pi, config.alpha,
                                         config.t_star, m)
            intervals[m] = {"welch": w, "cuped": cu.interval, "sequential": seq}
            for method, iv in intervals[m].items():
                det = {"control_mean": iv.mean_control, "relative": iv.relative}
                if method == "cuped":
                    det.update(theta=cu.theta, variance_reduction=cu.variance_reduction,
                               pre_days=config.pre_days)
                if method == "sequential":
                    det.update(pi=pi, t_star=config.t_star)
                row = _row(k, m, method, len(t_rows), exposures_t, mean=iv.mean_treatment,
                           diff=iv.diff, low=iv.low, high=iv.high, p_value=iv.p_value,
                           details=det)
                row_of[(m, method)] = row
                out.rows.append(row)
        for method in ("welch", "cuped"):
            ps = [intervals[m][method].p_value for m in METRIC_EVENTS]
            if all(p is not None and math.isfinite(p) for p in ps):
                _, p_adj = st.adjust(ps, config.multitest, config.alpha)
                for m, p in zip(METRIC_EVENTS, p_adj, strict=True):
                    row_of[(m, method)]["p_adjusted"] = float(p)
        primary = intervals[exp.primary_metric]["sequential"]
        guards = [intervals[m]["welch"] for m in METRIC_EVENTS if m != exp.primary_metric]
        decisions[k] = st.decide(primary, srm_check=srm, guardrails=guards,
                                 min_users=config.min_users,
                                 planned_users=config.planned_users, alpha=config.alpha)
    out.details["variants"] = {k: {"action": d.action, "reason": d.reason}
                               for k, d in decisions.items()}
    out.action, out.reason = _combine(decisions, srm, share, n_multi, config)
    return out


def _combine(decisions: dict[str, st.Decision], srm, share: float, n_multi: int,
             config: AnalysisConfig) -> tuple[str, str]:
    """One action for the experiment from each treatment's decision."""
    if srm is not None and srm.flagged:
        return st.STOP, (f"sample ratio mismatch: users per variant {srm.counts} against "
                         f"expected {tuple(round(e) for e in srm.expected)} "
                         f"(p={srm.p_value:.2g} < {st.SRM_THRESHOLD}); assignment or "
                         "logging is broken, the metrics cannot be trusted")
    if share > config.max_multiple_exposure:
        return st.STOP, (f"multiple exposure: {n_multi} users ({share:.2%}) were served more "
                         f"than one variant (limit {config.max_multiple_exposure:.2%}); "
                         "routing or identity is broken, the metrics cannot be trusted")
    ships = [k for k, d in decisions.items() if d.action == st.SHIP]
    if ships:
        return st.SHIP, "; ".join(f"{k}: {decisions[k].reason}" for k in ships)
    if decisions and all(d.action == st.STOP for d in decisions.values()):
        return st.STOP, "; ".join(f"{k}: {d.reason}" for k, d in decisions.items())
    keep = {k: d for k, d in decisions.items() if d.action == st.KEEP} or decisions
    return st.KEEP, "; ".join(f"{k}: {d.reason}" for k, d in keep.items())


# --- interleaving ------------------------------------------------------------------------------

def analyse_interleaving(stored: registry.Stored, day: dt.date, credits: list[tuple],
                         config: AnalysisConfig) -> Analysis:
    """The interleaving analysis from ``(user, request, team, clicked items)`` rows (one
    per team shown in a request; pure compute)."""
    exp = stored.experiment
    out = Analysis(exp.key, day, stored.kind)
    names = [v.key for v in exp.variants]
    per_request: dict[str, dict[int, int]] = defaultdict(dict)
    user_of: dict[str, int] = {}
    for user, request, team, clicks in credits:
        per_request[request][team] = clicks
        user_of[request] = user
    requests = sorted(per_request)
    all_users = {user_of[r] for r in requests}
    out.details.update(users=len(all_users), exposures=len(requests))
    results, pvals = [], []
    for j, k in enumerate(names[1:], start=1):
        uids, outcomes = [], []
        for r in requests:
            c, t = per_request[r].get(0, 0), per_request[r].get(j, 0)
            uids.append(user_of[r])
            # +1: the treatment won the impression (it is "team A" of the preference).
            outcomes.append(None if c + t == 0 else (t > c) - (t < c))
        prefs = il.user_preferences(uids, outcomes) if uids else None
        delta = prefs.delta if prefs is not None else np.array([])
        sign = il.sign_test(delta, config.alpha)
        empty = np.array([], dtype="int64")
        wins = il.wins_test(prefs.wins_a if prefs is not None else empty,
                            prefs.wins_b if prefs is not None else empty,
                            prefs.ties if prefs is not None else empty, config.alpha)
        mean, lo, hi = il.bootstrap_ci(delta, config.alpha, config.n_boot, config.seed)
        det = {"prefer_treatment": sign.prefer_a, "prefer_control": sign.prefer_b,
               "sign_test_p": sign.p_value, "mean_net_wins": wins.mean_net_wins,
               "wins_t": wins.t,
               "users_with_clicks": int(len(delta)),
               "wins_treatment": int(prefs.wins_a.sum()) if prefs is not None else 0,
               "wins_control": int(prefs.wins_b.sum()) if prefs is not None else 0,
               "ties": int(prefs.ties.sum()) if prefs is not None else 0,
               "bootstrap": config.n_boot, "seed": config.seed}
        row = _row(k, "preference", "interleaving", len(all_users), len(requests), mean=mean,
                   diff=mean, low=lo, high=hi, p_value=wins.p_value, details=det)
        out.rows.append(row)
        results.append((k, row, sign, wins))
        pvals.append(wins.p_value)
    if pvals:
        _, p_adj = st.adjust(pvals, config.multitest, config.alpha)
        for (_, row, _, _), p in zip(results, p_adj, strict=True):
            row["p_adjusted"] = float(p)
    decisions = {}
    for k, row, sign, wins in results:
        n = row["details"]["users_with_clicks"]
        share = (f"net wins per user {_num(wins.mean_net_wins)} for {k}, wins test "
                 f"p={row['p_value']:.2g} (adjusted {row['p_adjusted']:.2g}); "
                 f"{sign.prefer_a} of {sign.prefer_a + sign.prefer_b} users prefer {k} "
                 f"(sign test p={sign.p_value:.2g}), "
                 f"mean Δ {_num(row['mean'])} [{_num(row['low'])}, {_num(row['high'])}]")
        if n < config.min_users:
            decisions[k] = st.Decision(st.KEEP, f"only {n} users with clicks so far "
                                                f"(minimum {config.min_users}); {share}")
        elif row["p_adjusted"] < config.alpha and wins.mean_net_wins > 0:
            decisions[k] = st.Decision(st.SHIP, f"{k} preferred: {share}")
        elif row["p_adjusted"] < config.alpha:
            decisions[k] = st.Decision(st.STOP, f"{names[0]} preferred: {share}")
        else:
            decisions[k] = st.Decision(st.KEEP, f"no significant preference: {share}")
    out.details["variants"] = {k: {"action": d.action, "reason": d.reason}
                               for k, d in decisions.items()}
    out.action, out.reason = _combine(decisions, None, 0.0, 0, config)
    return out


def _num(x) -> str:
    return f"{x:+.4f}" if isinstance(x, float) and math.isfinite(x) else "n/a"


# --- one experiment, one day -------------------------------------------------------------------

def analyse(dsn: str, key: str, day: dt.date,
            config: AnalysisConfig = AnalysisConfig()) -> Analysis:
    """Read the experiment's log up to the end of ``day`` and analyse it (writes nothing)."""
    _, until = _bounds(day)
    with db.transaction(dsn) as cur:
        stored = registry.get(cur, key)
        since = stored.experiment.start
        if since is None:
            raise ValueError(f"experiment {key!r}: starts_at: not started, nothing to analyse")
        qa = sorted(registry.overrides(cur, key))
        # Joins of whole days of exposures and events: hash joins. A nested loop chosen on
        # stale statistics (a log loaded since the last ANALYZE looks like one row) scans
        # the events once per exposure; this transaction only reads.
        cur.execute("SET LOCAL enable_nestloop = off")
        params = {"key": key, "since": since, "until": until, "qa": qa}
        if stored.kind == "interleaving":
            cur.execute(IL_SQL, params)
            return analyse_interleaving(stored, day, cur.fetchall(), config)
        cur.execute(AB_SQL, params)
        per_user = cur.fetchall()
        cur.execute(PRE_SQL, {"from": since - dt.timedelta(days=config.pre_days),
                              "since": since, "users": sorted({r[0] for r in per_user})})
        pre = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
    return analyse_ab(stored, day, per_user, pre, config)


def write(dsn: str, a: Analysis) -> None:
    """Replace ``a``'s day of its experiment in experiment_results / experiment_decisions,
    in one transaction."""
    with db.transaction(dsn) as cur:
        cur.execute("DELETE FROM experiment_results WHERE experiment_key = %s AND day = %s",
                    (a.key, a.day))
        cur.execute("DELETE FROM experiment_decisions WHERE experiment_key = %s AND day = %s",
                    (a.key, a.day))
        for r in a.rows:
            r = _clean(r)
            cur.execute(
                "INSERT INTO experiment_results (experiment_key, day, variant, metric, method, "
                "users, exposures, mean, diff, low, high, p_value, p_adjusted, details) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (a.key, a.day, r["variant"], r["metric"], r["method"], r["users"],
                 r["exposures"], r["mean"], r["diff"], r["low"], r["high"], r["p_value"],
                 r["p_adjusted"], json.dumps(r["details"])))
        cur.execute("INSERT INTO experiment_decisions (experiment_key, day, action, reason, "
                    "srm_p_value, details) VALUES (%s, %s, %s, %s, %s, %s)",
                    (a.key, a.day, a.action, a.reason, _clean(a.srm_p_value),
                     json.dumps(_clean(a.details))))


def plot_path(key: str, day: dt.date, base: Path | None = None) -> Path:
    return lake.partition(f"experiments/{key}", day, base) / "plot.png"


def plot(a: Analysis, path: Path) -> Path:
    """Each treatment's difference against the control, by metric and method, with its
    interval (interleaving: the mean preference and its bootstrap interval); the
    decision in the title. Written beside ``path`` and renamed into place."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = [r for r in a.rows if r["diff"] is not None and r["low"] is not None
            and math.isfinite(r["low"]) and math.isfinite(r["high"])]
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(8.0, 1.6 + 0.35 * max(len(bars), 1)), dpi=PLOT_DPI,
                     layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for i, r in enumerate(bars):
            y = len(bars) - 1 - i
            colour = "tab:green" if r["low"] > 0 else "tab:red" if r["high"] < 0 else "tab:gray"
            ax.errorbar([r["diff"]], [y], xerr=[[r["diff"] - r["low"]], [r["high"] - r["diff"]]],
                        fmt="o", color=colour, capsize=3)
        ax.set_yticks(range(len(bars)))
        ax.set_yticklabels([f"{r['variant']} {r['metric']} {r['method']}" for r in bars][::-1])
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel("preference for the treatment (Δ)" if a.kind == "interleaving"
                      else "treatment − control (per user)")
        ax.set_title(f"{a.key} through {a.day}: {a.action}", fontsize=10)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    tmp = lake.atomic_file(path)
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def run_one(dsn: str, key: str, day: dt.date, *, lake_root: Path | None = None,
            config: AnalysisConfig = AnalysisConfig()) -> dict:
    """Analyse ``key`` for ``day``, store the results and the decision, draw the plot."""
    a = analyse(dsn, key, day, config)
    write(dsn, a)
    path = plot(a, plot_path(key, day, lake_root))
    log.info("experiment %s on %s: %s (%s)", key, day, a.action, a.reason)
    return {"key": key, "day": day.isoformat(), "action": a.action, "reason": a.reason,
            "rows": len(a.rows), "plot": str(path)}


def run(day: dt.date, *, dsn: str | None = None, lake_root: Path | None = None,
        config: AnalysisConfig = AnalysisConfig()) -> list[dict]:
    """Every experiment due on ``day`` (:func:`experiments_for`), one after the other."""
    from core import settings as settings_mod

    dsn = dsn or settings_mod.get().dsn
    return [run_one(dsn, k, day, lake_root=lake_root, config=config)
            for k in experiments_for(dsn, day, config)]
