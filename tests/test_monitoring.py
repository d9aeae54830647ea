"""The Grafana dashboard and the Prometheus alert rules (docker/) against a real reader.

Every series a dashboard panel or an alert names must be one a reader started on the test
Postgres exports at /metrics (after a few requests, so that the labelled series exist);
the rules file has Prometheus's rule-file shape, and compose wires both. ``promtool`` is
not installed here (no package of it on PyPI or Debian's main archive), so PromQL syntax
is checked only for balanced brackets and known functions, not by Prometheus itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time

import pytest
import yaml

from core.settings import PROJECT_ROOT
from serve.app import create_app
from tests.test_serve import NOW, event, make_key, publish_fixture

DOCKER = PROJECT_ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "recs-reader.json"
RULES = DOCKER / "prometheus" / "alerts.yml"
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
COMPOSE = DOCKER / "compose.yaml"

# Series Prometheus makes itself for every target; the reader does not export them.
PROMETHEUS_OWN = {"up"}
PROMQL_WORDS = {
    "sum", "by", "rate", "histogram_quantile", "clamp_min", "time", "le", "unless", "on",
    "humanizeDuration", "humanizePercentage", "and", "or", "without", "absent",
}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def samples(text: str) -> dict[str, float]:
    """Prometheus text format: sample name (labels dropped) -> last value; every
    non-comment line must be a well-formed sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        out[m.group(1)] = float(m.group(3))
    return out


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers and
    strings that are not functions, keywords or label names."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)           # label matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)           # range selectors
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", bare))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"e\d*", w)}


@pytest.fixture
def exported(settings, dsn) -> set[str]:
    """Sample names of a real reader's /metrics after reads, a fallback, events and
    refused requests."""
    publish_fixture(dsn)
    app = create_app({"SETTINGS": settings, "TESTING": True})
    try:
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = make_key(dsn, ("read", "events"))
        assert client.get("/api/v1/recommendations/7?limit=3").status_code == 200
        assert client.get("/api/v1/recommendations/999?limit=3").status_code == 200  # fallback
        assert client.post("/api/v1/events", json=event(7, 20)).status_code == 201
        bad = {**event(7, 20), "timestamp": (NOW - dt.timedelta(days=400)).isoformat()}
        assert client.post("/api/v1/events", json=bad).status_code == 422  # too old
        assert app.test_client().get("/api/v1/recommendations/7").status_code == 401
        text = client.get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["recs"].store.close()
    # A key over its rate (a second app whose keys may make one request).
    app = create_app({"SETTINGS": dataclasses.replace(settings, key_burst=1,
                                                      key_rate_per_s=0.01), "TESTING": True})
    try:
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = make_key(dsn, ("read",))
        assert client.get("/api/v1/trending").status_code == 200
        assert client.get("/api/v1/trending").status_code == 429
        text += client.get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["recs"].store.close()
    return set(samples(text))


def test_every_series_named_by_the_dashboard_and_rules_is_exported(exported):
    exprs = dashboard_exprs() + rule_exprs()
    assert len(exprs) >= 15
    named = set().union(*(series_names(e) for e in exprs))
    missing = named - exported - PROMETHEUS_OWN
    assert not missing, f"named but not exported by the reader: {sorted(missing)}"
    # What the issue asks the dashboard to show: latency, fallbacks by cause, events,
    # publish age.
    dash = " ".join(dashboard_exprs())
    for needle in ("recs_http_request_duration_seconds_bucket", "recs_fallbacks_total",
                   "recs_events_total", "recs_live_version_published_timestamp_seconds"):
        assert needle in dash
    assert "by (cause)" in dash


def test_the_publish_gauges_carry_the_live_versions_times(settings, dsn):
    publish_fixture(dsn)
    app = create_app({"SETTINGS": settings, "TESTING": True})
    try:
        text = app.test_client().get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["recs"].store.close()
    values = samples(text)
    published = values["recs_live_version_published_timestamp_seconds"]
    assert abs(published - time.time()) < 120  # publish_fixture switched it just now
    data_until = values["recs_live_data_until_timestamp_seconds"]
    assert abs(data_until - (NOW - dt.timedelta(hours=1)).timestamp()) < 1


def test_no_live_version_leaves_the_gauges_out(settings, dsn):
    app = create_app({"SETTINGS": settings, "TESTING": True})
    try:
        text = app.test_client().get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["recs"].store.close()
    assert "# TYPE recs_live_version_published_timestamp_seconds gauge" in text
    assert "\nrecs_live_version_published_timestamp_seconds " not in text


def test_rules_file_has_the_prometheus_rule_schema():
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"} and doc["groups"]
    names = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations",
                                 "keep_firing_for"}, rule
            assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Za-z_]\w*",
                                                                  rule["alert"])
            assert rule["alert"] not in names
            names.add(rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in ("page", "warn")
            assert {"summary", "description"} <= set(rule["annotations"])
            expr = rule["expr"]
            for pair in ("()", "[]", "{}"):
                assert expr.count(pair[0]) == expr.count(pair[1]), (rule["alert"], pair)


def test_compose_wires_prometheus_and_grafana():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    prom = services["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"] if v.startswith(".")}
    assert (DOCKER / mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS
    assert (DOCKER / mounts["/etc/prometheus/alerts.yml"]).resolve() == RULES
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["reader:8000"]
    assert "reader" in services and re.search(r":8000\b", str(services["reader"]["ports"]))
    graf = services["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in graf["volumes"] if v.startswith(".")}
    provisioning = DOCKER / mounts["/etc/grafana/provisioning"]
    dashboards = (DOCKER / mounts["/var/lib/grafana/dashboards"]).resolve()
    assert dashboards == DASHBOARD.parent
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [ds] = source["datasources"]
    assert ds["url"] == "http://prometheus:9090" and ds["type"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards" / "recs.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    # Every panel queries the provisioned data source.
    doc = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in doc["panels"]} == {ds["uid"]}
