"""Typed settings read from ``RECS_*`` environment variables and validated at start.

Every field below can be set as ``RECS_<FIELD NAME IN CAPITALS>``. A bad value fails
at load time with :class:`SettingsError` naming the variable, so a misconfigured job
or server stops before it does any work. Plain values only: the models' configurations
built from them, and the config digest that names a model version, are in jobs/configs.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

PREFIX = "RECS_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Database roles (sql/009_roles.sql; passwords of the private instance in var/pg/pgpass).
ADMIN_ROLE = "recs"  # bootstrap superuser: creates roles and databases (recs db-up)
PIPELINE_ROLE = "recs_pipeline"  # owns the schema: jobs, loaders, migrations, Airflow
READER_ROLE = "recs_reader"  # the serving process
ANALYST_ROLE = "recs_analyst"  # the analyst views


class SettingsError(ValueError):
    """A ``RECS_*`` variable is missing, malformed or out of range."""


@dataclass(frozen=True)
class Settings:
    # Where the project keeps its state (private Postgres, lake, Airflow home).
    home: Path = PROJECT_ROOT / "var"
    # Empty: use the project's own private Postgres under ``home``.
    database_url: str = ""
    # The reader's and the analysts' connections (least privilege). Empty: the private
    # instance's recs_reader / recs_analyst roles, or database_url when that is set.
    reader_database_url: str = ""
    analyst_database_url: str = ""
    pg_port: int = 54329
    lake_root: str = ""
    # Pipeline.
    top_k: int = 100
    similar_k: int = 50
    trending_k: int = 100
    trending_days: int = 7
    window_days: int = 0  # 0: train on all history up to the logical date
    spark_master: str = "local[*]"
    spark_driver_memory: str = "2g"
    # Windows of at least this many events are summed in Spark by prepare and item_stats
    # (jobs/event_aggregates.py: the events never sit in one process); smaller ones in
    # pandas, where a JVM's start would cost more than the whole step.
    spark_aggregate_min_events: int = 5_000_000
    seed: int = 42
    als_rank: int = 32
    als_reg: float = 0.3
    als_alpha: float = 5.0
    als_iters: int = 15
    exact_index_max_items: int = 50_000
    ann_recall_floor: float = 0.9
    holdout_fraction: float = 0.25
    gate_margin: float = 0.0
    keep_versions: int = 2
    # Partition maintenance (jobs/maintenance.py): day partitions of interactions kept
    # ready this many days ahead; partitions wholly older than retention_days are
    # exported to the lake as Parquet, then dropped (0: never drop anything).
    partitions_ahead_days: int = 7
    retention_days: int = 0
    # Publishing (jobs/publish.py): each lock of the switch is waited for at most
    # publish_lock_timeout_ms, retried with back-off for publish_switch_budget_s in all;
    # old versions are detached concurrently, waiting at most publish_retire_wait_s.
    publish_lock_timeout_ms: int = 2000
    publish_switch_budget_s: float = 120.0
    publish_retire_wait_s: float = 30.0
    # Versions of at least publish_parallel_min_rows users are copied over publish_streams
    # COPY connections (one process each) into hash sub-partitions (jobs/publish.py);
    # 0: half this machine's cores (each stream's encoder takes one, and a Postgres on the
    # same machine the other), at most 8.
    publish_streams: int = 0
    publish_parallel_min_rows: int = 200_000
    # Freshness (nearline and hourly DAGs).
    nearline_every_minutes: int = 5
    nearline_chunk_users: int = 2000  # users per nearline transaction
    nearline_budget_s: float = 240.0  # a nearline run starts no chunk after this
    new_item_days: int = 14
    new_item_active_days: int = 7
    new_item_max_users: int = 100_000
    new_item_slot: int = 5
    # Reader.
    serve_limit_default: int = 20
    serve_limit_max: int = 100
    statement_timeout_ms: int = 200
    popular_refresh_s: float = 30.0
    exclude_max: int = 500
    # Events posted to the reader must fall in [now - max_age, now + max_ahead] (422
    # otherwise); loaders are not bound by this window.
    event_max_age_days: int = 30
    event_max_ahead_days: int = 1
    # Per-key token bucket in each reader worker process (0: no limit): a key gets
    # key_burst requests at once, then key_rate_per_s a second; the excess gets 429.
    key_rate_per_s: float = 500.0
    key_burst: int = 1000
    # How often each reader process re-reads the block rules (rerank_rules and the file):
    # a new block reaches every answer within this many seconds.
    blocks_refresh_s: float = 2.0
    # Experiments in the reader (issue 13; serve/experiments.py, serve/exposures.py).
    # experiments_enabled=0 turns routing, exploration and the exposure log off. Running
    # experiments and overrides are re-read every experiments_refresh_s per process; a
    # global holdout of experiment_holdout_fraction of users never sees a treatment.
    # With probability exploration_rate the top exploration_top_k items of a served list
    # are shown in a random order (propensities logged). Exposures wait on a queue of at
    # most exposure_queue_max rows (beyond: dropped and counted), written in COPY batches
    # of at most exposure_batch rows at least every exposure_flush_s seconds.
    experiments_enabled: int = 1
    experiments_refresh_s: float = 5.0
    experiment_holdout_fraction: float = 0.01
    exploration_rate: float = 0.05
    exploration_top_k: int = 5
    exposure_queue_max: int = 10_000
    exposure_batch: int = 1000
    exposure_flush_s: float = 0.5
    # The funnel (issue 3): generators, ranker, re-ranking.
    two_tower_epochs: int = 0  # 0: the model's default
    # The two-tower training budget, steps per fit (0: the model's default, 4,000; a fit
    # stops there within its last epoch, so its cost stops growing with the data).
    two_tower_max_steps: int = 0
    # The daily DAG's two fits (eval, full) train side by side up to this many pairs in
    # all, one after the other above it: a fit's memory grows with its pairs (about 140
    # bytes a pair on top of 0.8 GiB, docs/benchmarks.md), so at 50M events two side by
    # side would pass 8 GiB. 0: always one after the other.
    two_tower_parallel_max_pairs: int = 20_000_000
    two_tower_text: int = 1  # 1: the item tower reads MiniLM text embeddings
    covisit_window: int = 20
    covisit_top: int = 100
    covisit_min_count: int = 2
    ease_lambda: float = 200.0
    ease_max_items: int = 20_000  # EASE is dense (items^2 floats); off above this
    ranker_epochs: int = 20
    ranker_folds: int = 2  # the ranker is cross-fitted over this many folds of gate users
    gate_max_users: int = 5000  # the gate scores (and the ranker learns on) at most these
    rerank_diversity: float = 0.0
    rerank_freshness: float = 0.0
    rerank_max_run: int = 2
    rerank_popularity_penalty: float = 0.1  # long-tail push (coverage) in the re-ranking
    rules_file: str = ""  # business rules (CSV kind,value,slot); also the rerank_rules table

    @property
    def pg_dir(self) -> Path:
        return self.home / "pg"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def lake(self) -> str:
        return self.lake_root or str(self.home / "lake")

    @property
    def uses_private_pg(self) -> bool:
        return not self.database_url

    @property
    def dsn(self) -> str:
        """The pipeline's database URL; the private instance's (role recs_pipeline, its
        password read by libpq from the ``passfile`` named in the URL) when none is
        configured."""
        if self.database_url:
            return self.database_url
        return self._private_url(PIPELINE_ROLE)

    @property
    def reader_dsn(self) -> str:
        """The serving process's URL (role recs_reader): ``RECS_READER_DATABASE_URL``;
        else the private instance's reader; else ``dsn``."""
        if self.reader_database_url:
            return self.reader_database_url
        return self.dsn if self.database_url else self._private_url(READER_ROLE)

    @property
    def analyst_dsn(self) -> str:
        """The analysts' URL (role recs_analyst), chosen as :attr:`reader_dsn` is."""
        if self.analyst_database_url:
            return self.analyst_database_url
        return self.dsn if self.database_url else self._private_url(ANALYST_ROLE)

    def _private_url(self, role: str, dbname: str = "recs") -> str:
        from urllib.parse import quote

        passfile = quote(str(self.pg_dir / "pgpass"), safe="/")
        return f"postgresql://{role}@127.0.0.1:{self.pg_port}/{dbname}?passfile={passfile}"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_RANGES: dict[str, tuple[float, float]] = {
    "pg_port": (1024, 65535),
    "top_k": (1, 1000),
    "similar_k": (1, 1000),
    "trending_k": (1, 1000),
    "trending_days": (1, 365),
    "window_days": (0, 100_000),
    "als_rank": (1, 512),
    "als_reg": (0.0, 100.0),
    "als_alpha": (0.0, 1000.0),
    "als_iters": (1, 200),
    "exact_index_max_items": (1, 10**9),
    "ann_recall_floor": (0.0, 1.0),
    "holdout_fraction": (0.01, 0.99),
    "keep_versions": (1, 100),
    "partitions_ahead_days": (0, 366),
    "retention_days": (0, 100_000),
    "publish_lock_timeout_ms": (1, 600_000),
    "publish_switch_budget_s": (0.0, 86_400),
    "publish_retire_wait_s": (0.0, 86_400),
    "publish_streams": (0, 64),
    "publish_parallel_min_rows": (0, 10**12),
    "nearline_every_minutes": (1, 1440),
    "nearline_chunk_users": (1, 10**7),
    "nearline_budget_s": (1.0, 86_400),
    "new_item_days": (1, 3650),
    "new_item_active_days": (1, 3650),
    "new_item_max_users": (1, 10**9),
    "new_item_slot": (1, 1000),
    "serve_limit_default": (1, 100),
    "serve_limit_max": (1, 1000),
    "statement_timeout_ms": (1, 600_000),
    "popular_refresh_s": (0.1, 86_400),
    "exclude_max": (0, 100_000),
    "event_max_age_days": (1, 3650),
    "event_max_ahead_days": (0, 30),
    "key_rate_per_s": (0.0, 1e6),
    "key_burst": (1, 10**7),
    "blocks_refresh_s": (0.1, 3600),
    "experiments_enabled": (0, 1),
    "experiments_refresh_s": (0.1, 3600),
    "experiment_holdout_fraction": (0.0, 0.99),
    "exploration_rate": (0.0, 1.0),
    "exploration_top_k": (0, 100),
    "exposure_queue_max": (1, 10**7),
    "exposure_batch": (1, 100_000),
    "exposure_flush_s": (0.01, 60.0),
    "two_tower_epochs": (0, 1000),
    "two_tower_max_steps": (0, 10_000_000),
    "two_tower_parallel_max_pairs": (0, 10**15),
    "spark_aggregate_min_events": (0, 10**15),
    "two_tower_text": (0, 1),
    "covisit_window": (1, 1000),
    "covisit_top": (1, 10_000),
    "covisit_min_count": (1, 10**6),
    "ease_lambda": (0.001, 1e9),
    "ease_max_items": (0, 100_000),
    "ranker_epochs": (1, 1000),
    "ranker_folds": (2, 20),
    "gate_max_users": (10, 10**7),
    "rerank_diversity": (0.0, 1.0),
    "rerank_freshness": (0.0, 100.0),
    "rerank_max_run": (1, 1000),
    "rerank_popularity_penalty": (0.0, 10.0),
}


def _parse(name: str, raw: str, kind: Any) -> Any:
    var = PREFIX + name.upper()
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (Path, "Path"):
            return Path(raw).expanduser().resolve()
        return raw
    except ValueError:
        raise SettingsError(f"{var}={raw!r}: expected {getattr(kind, '__name__', kind)}") from None


def load(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, then ``RECS_*`` variables, then ``overrides``."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Settings):
        var = PREFIX + f.name.upper()
        if var in env and env[var] != "":
            values[f.name] = _parse(f.name, env[var], f.type)
    values.update(overrides)
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    for name, (lo, hi) in _RANGES.items():
        v = getattr(s, name)
        if not lo <= v <= hi:
            raise SettingsError(f"{PREFIX}{name.upper()}={v}: must be between {lo} and {hi}")
    if s.database_url and not s.database_url.startswith(("postgresql://", "postgres://",
                                                          "postgresql+psycopg2://")):
        raise SettingsError(f"{PREFIX}DATABASE_URL: expected a postgresql:// URL, "
                            f"got {s.database_url.split(':')[0]!r}")
    for name in ("reader_database_url", "analyst_database_url"):
        url = getattr(s, name)
        if url and not url.startswith(("postgresql://", "postgres://",
                                       "postgresql+psycopg2://")):
            raise SettingsError(f"{PREFIX}{name.upper()}: expected a postgresql:// URL, "
                                f"got {url.split(':')[0]!r}")
    if s.serve_limit_default > s.serve_limit_max:
        raise SettingsError(f"{PREFIX}SERVE_LIMIT_DEFAULT exceeds {PREFIX}SERVE_LIMIT_MAX")


_cached: Settings | None = None


def get() -> Settings:
    """Settings of this process, loaded once from the environment."""
    global _cached
    if _cached is None:
        _cached = load()
    return _cached
