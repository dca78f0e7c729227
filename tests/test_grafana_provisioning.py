"""Grafana's provisioning: the data source and dashboard provider files in the format
Grafana reads, the compose service, the dashboards' JSON, the macro expansion these tests use
(against Grafana's own expectations), and that every panel with a query is run by some test."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from grafana_support import (
    DATASOURCE_UID,
    GRAFANA,
    REPO,
    alert_rules,
    annotation_queries,
    dashboards,
    expand,
    go_float,
    go_rfc3339nano,
    panels,
    run_panel_titles,
)


def test_macro_expansion_matches_grafana():
    # Expected strings from Grafana's own macros_test.go.
    t0 = datetime(2018, 4, 12, 18, 0, tzinfo=UTC)
    t1 = t0 + timedelta(minutes=5)
    iv = timedelta(minutes=10)
    assert expand("select $__time(time_column)", t0, t1, iv) == 'select time_column AS "time"'
    assert (
        expand("WHERE $__timeFilter(time_column)", t0, t1, iv)
        == "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    )
    assert expand("select $__timeFrom()", t0, t1, iv) == "select '2018-04-12T18:00:00Z'"
    assert expand("select $__timeTo()", t0, t1, iv) == "select '2018-04-12T18:05:00Z'"
    assert (
        expand("SELECT $__timeGroup(time_column,'5m')", t0, t1, iv)
        == "SELECT floor(extract(epoch from time_column)/300)*300"
    )
    assert (
        expand("$__timeGroupAlias(time_column , '5m')", t0, t1, iv)
        == 'floor(extract(epoch from time_column)/300)*300 AS "time"'
    )
    assert expand("SELECT $__interval", t0, t1, iv) == "SELECT 10m"
    assert expand("$__interval_ms", t0, t1, iv) == "600000"
    half = datetime(1960, 2, 1, 7, 0, 0, 500000, tzinfo=UTC)
    assert go_rfc3339nano(half) == "1960-02-01T07:00:00.5Z"
    assert go_float(86400.0) == "86400" and go_float(1036800.0) == "1.0368e+06"


def every_panel_title() -> set[str]:
    """Every panel with a query, and every annotation query (by its name)."""
    titles = {p["title"] for d in dashboards().values() for p in panels(d) if p.get("targets")}
    return titles | {a["name"] for d in dashboards().values() for a in annotation_queries(d)}


def test_every_panel_is_tested():
    # The panels the other test modules run (grafana_support.run_panel_titles).
    assert every_panel_title() == run_panel_titles()


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def compose_service() -> dict:
    return load_yaml(REPO / "docker-compose.yaml")["services"]["grafana"]


DATASOURCE_KEYS = {
    "name", "type", "access", "orgId", "uid", "url", "user", "database", "basicAuth",
    "basicAuthUser", "withCredentials", "isDefault", "jsonData", "secureJsonData", "version",
    "editable",
}  # fmt: skip


def test_datasource_provisioning():
    doc = load_yaml(GRAFANA / "provisioning" / "datasources" / "energy-worker.yaml")
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert set(ds) <= DATASOURCE_KEYS
    assert ds["uid"] == DATASOURCE_UID
    assert ds["type"] == "grafana-postgresql-datasource"
    assert ds["access"] == "proxy"
    assert ds["jsonData"]["database"] == "${POSTGRES_DB}"
    assert ds["secureJsonData"] == {"password": "${GRAFANA_DB_PASSWORD}"}  # never a literal
    assert ds["user"] == "${GRAFANA_DB_USER}"
    # Every variable it uses is given to the container.
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", json.dumps(ds)))
    assert used <= set(compose_service()["environment"])


def test_dashboard_provider_points_at_the_mounted_dashboards():
    doc = load_yaml(GRAFANA / "provisioning" / "dashboards" / "energy-worker.yaml")
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert set(provider) <= {
        "name", "orgId", "folder", "folderUid", "type", "disableDeletion",
        "updateIntervalSeconds", "allowUiUpdates", "options",
    }  # fmt: skip
    assert provider["type"] == "file"
    mounts = dict(v.split(":")[:2][::-1] for v in compose_service()["volumes"])
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    home = compose_service()["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()


def test_compose_service_is_pinned():
    # (tests/test_container_lint.py parses the whole compose file with the real compose parser)
    service = compose_service()
    assert re.fullmatch(r"grafana/grafana-oss:\d+\.\d+\.\d+", service["image"])
    assert set(service["depends_on"]) == {"postgres-db", "energy-worker"}


def test_dashboards_have_the_shape_grafana_reads():
    docs = dashboards()
    assert len({d["uid"] for d in docs.values()}) == len(docs)
    for name, d in docs.items():
        assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int), name
        assert "id" not in d or d["id"] is None  # provisioned: Grafana assigns ids
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for p in panels(d):
            g = p["gridPos"]
            assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["title"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24
            mine = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not cells & mine, f"{p['title']} overlaps another panel"
            cells |= mine
            if p["type"] == "row":
                continue
            assert p["type"] in {"timeseries", "table", "stat", "barchart", "gauge"}
            assert p["datasource"] == {
                "type": "grafana-postgresql-datasource",
                "uid": DATASOURCE_UID,
            }
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == DATASOURCE_UID
                assert t["format"] in {"time_series", "table"}
                assert t["rawSql"].strip() and t["refId"]
                assert "--" not in t["rawSql"] and "/*" not in t["rawSql"]  # Grafana strips them


# Grafana's file format for alert rules (pkg/services/provisioning/alerting/rules_types.go:
# AlertRuleGroupV1, AlertRuleV1, QueryV1) and what its threshold expression reads
# (pkg/expr/threshold.go).
GROUP_KEYS = {"orgId", "name", "folder", "interval", "rules"}
RULE_KEYS = {
    "uid", "title", "condition", "data", "dashboardUid", "panelId", "noDataState",
    "execErrState", "for", "keepFiringFor", "annotations", "labels", "isPaused",
    "notification_settings", "record",
}  # fmt: skip
QUERY_KEYS = {"refId", "queryType", "relativeTimeRange", "datasourceUid", "model"}
THRESHOLD_TYPES = {"gt", "lt", "eq", "ne", "gte", "lte"}
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")  # Prometheus's model.ParseDuration


def test_alert_rules_have_the_shape_grafana_provisions():
    files = sorted((GRAFANA / "provisioning" / "alerting").iterdir())
    assert [f.suffix for f in files] == [".yaml"] * len(files) and files
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "energy-worker.yaml")
    (dashboard_folder,) = {p["folder"] for p in provider["providers"]}
    for path in files:
        text = path.read_text()
        # Grafana expands environment variables in provisioning files: $ would be lost.
        assert "$" not in text, path.name
        doc = yaml.safe_load(text)
        # Rules only: no contact point or notification policy, so nothing is sent by default.
        assert set(doc) == {"apiVersion", "groups"} and doc["apiVersion"] == 1
        for group in doc["groups"]:
            assert set(group) <= GROUP_KEYS and group["name"].strip()
            # Alerting is provisioned before the dashboards: a folder it creates by the
            # dashboards' title would clash with their folder's uid.
            assert group["folder"].strip() and group["folder"] != dashboard_folder
            assert DURATION.fullmatch(group["interval"])
            for rule in group["rules"]:
                check_rule(rule)
    assert len(alert_rules()) == 3  # and each is run against data (test_grafana_operator.py)


def check_rule(rule: dict) -> None:
    uid = rule["uid"]
    assert set(rule) <= RULE_KEYS, uid
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid) and rule["title"].strip()
    assert rule["noDataState"] in {"NoData", "Alerting", "OK"}
    assert rule["execErrState"] in {"Error", "Alerting", "OK"}
    assert DURATION.fullmatch(rule["for"]) and rule["isPaused"] is False
    assert all(isinstance(v, str) for v in {**rule["annotations"], **rule["labels"]}.values())
    queries = {q["refId"]: q for q in rule["data"]}
    assert len(queries) == len(rule["data"]) and rule["condition"] in queries
    for ref, q in queries.items():
        assert set(q) <= QUERY_KEYS and q["model"]["refId"] == ref, uid
        model = q["model"]
        if q["datasourceUid"] == "__expr__":
            assert model["datasource"] == {"type": "__expr__", "uid": "__expr__"}
            assert model["type"] == "threshold" and model["expression"] in queries
            assert model["expression"] != ref
            (condition,) = model["conditions"]  # exactly one
            evaluator = condition["evaluator"]
            assert evaluator["type"] in THRESHOLD_TYPES
            assert len(evaluator["params"]) == 1
            assert all(isinstance(p, int | float) for p in evaluator["params"])
        else:
            assert q["datasourceUid"] == DATASOURCE_UID, uid
            assert model["datasource"] == {
                "type": "grafana-postgresql-datasource",
                "uid": DATASOURCE_UID,
            }
            # A table of one number per row, text columns as labels: alerting's numeric data.
            assert model["format"] == "table" and model["rawQuery"] is True
            assert model["rawSql"].strip() and "--" not in model["rawSql"]
            span = q["relativeTimeRange"]
            assert span["from"] > span["to"] >= 0
    assert queries[rule["condition"]]["datasourceUid"] == "__expr__"


def test_dashboards_follow_the_default_time_zone_which_is_tz():
    """Hours and days as the pusher counts them: the dashboards declare Grafana's default zone,
    and the compose file sets that to TZ (test_grafana_operator.py compares the days)."""
    assert {d["timezone"] for d in dashboards().values()} == {""}
    env = compose_service()["environment"]
    assert env["GF_DATE_FORMATS_DEFAULT_TIMEZONE"] == env["TZ"] == "${TZ:-Europe/Copenhagen}"
