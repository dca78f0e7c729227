"""Grafana's provisioning (issue 5): the data source and dashboard provider files in the format
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
    return {p["title"] for d in dashboards().values() for p in panels(d) if p.get("targets")}


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
