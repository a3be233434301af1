"""manifests/monitoring: the Grafana dashboard and the PrometheusRule name only metrics the services
export (read from the live /metrics of the agent, the extender and a serving app, each started in
process by its create_app), the rules pass ``promtool check rules`` and ``promtool test rules``
(alerts-test.yaml: a test per alert), and the PrometheusRule and the dashboard's ConfigMap are
accepted by the upstream CRD / the real API server with strict field validation. The agent's
pinned-bytes and high-watermark gauges (the "cache full of pins" alert) carry real values."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from kubernetes.client import ApiException
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Settings as AgentSettings
from agent.face.app import MANAGER
from agent.face.app import create_app as agent_app
from locality.identity import model_ref
from scheduler_extender.app import create_app as extender_app
from scheduler_extender.config import Settings as ExtenderSettings
from serving.app import Deps as ServingDeps
from serving.app import create_app as serving_app
from serving.config import Settings as ServingSettings
from tests.fixtures.kustomize import load_one, render
from tests.fixtures.models import synthetic_model
from tests.fixtures.polling import eventually
from tests.fixtures.realkube import RealKube
from tests.fixtures.s3server import S3Server

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
CRDS = ROOT.parent / "shared" / "crds"
RULES_CRD = "prometheus-operator_monitoring.coreos.com_prometheusrules.yaml"
MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]

# Series Prometheus makes itself for every target (not exported by our services).
PROMETHEUS_OWN = {"up"}
# Named by the dashboard's marked panels before the services export them (the peer work): the
# lead empties this set once they land; the test fails as soon as one of them is exported.
EXPECTED_NOT_YET_EXPORTED: set[str] = set()
# PromQL's words that are not metric names.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "histogram_quantile", "by", "without",
    "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "humanize", "humanizePercentage",
}  # fmt: skip
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
REQUIRED_PANELS = (
    "Cache fill per node",
    "Fetch throughput per node",
    "Fetches by outcome",
    "Time to ready: warm vs fetching vs cold (p50, p99)",
    "Bytes from origin vs peers",
    "Extender latency p50 / p99 by verb",
    "Extender decisions by verb and code",
    "Webhook results",
    "Queue depth",
    "Request latency p99",
)
ALERTS = {
    "ModelLocalityAgentDown",
    "ModelLocalityAgentNotReady",
    "ModelLocalityFetchesFailing",
    "ModelLocalityCachePinnedFull",
    "ModelLocalityDistributionShortOfNodes",
    "ModelLocalityWebhookNotInjecting",
    "ModelLocalityExtenderErrors",
    "ModelLocalityExtenderDown",
}


def series_names(text: str) -> set[str]:
    """Every series name a /metrics text can yield (families without children included)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (strings, label matchers, grouping clauses,
    ranges, numbers and PromQL's own words removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    words = set(re.findall(r"(?<![$\w.])[A-Za-z_:][A-Za-z0-9_:]*", text))
    return words - PROMQL_WORDS


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "dashboard.json").read_text())
    return loaded


def rule_object() -> dict[str, Any]:
    return load_one((MONITORING / "prometheusrule.yaml").read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    return [r["expr"] for g in rule_object()["spec"]["groups"] for r in g["rules"]]


async def metrics_text(client: TestClient[Any, Any]) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return await resp.text()


@pytest.fixture()
async def exported(aiohttp_client: MakeClient, tmp_path: Path) -> set[str]:
    """The series names of the three services' live /metrics."""
    agent = agent_app(
        AgentSettings(cache_dir=tmp_path / "cache", token="t0ken", quota_bytes=1 << 30).validate()
    )
    never = asyncio.Event()

    async def resolve() -> Path:
        await never.wait()  # the model never arrives: /metrics answers all the same
        return tmp_path

    def load(_: Path) -> Any:
        raise AssertionError("not loaded in this test")

    serving = serving_app(ServingSettings(model_dir=tmp_path, model_name="m"), ServingDeps(resolve, load))
    names: set[str] = set()
    for app in (agent, extender_app(ExtenderSettings(token="t0ken")), serving):
        names |= series_names(await metrics_text(await aiohttp_client(app)))
    return names


def test_the_name_reader_sees_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, verb) (rate(a_seconds_bucket{job="x-y", code=~"5.."}'
        "[$__rate_interval]))) / ignoring(pod) b_total > 0.05 unless on(node) c offset 5m"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}


async def test_every_query_names_an_exported_metric(exported: set[str]) -> None:
    assert "model_locality_agent_cache_used_bytes" in exported  # the reader reads live names
    named = {name: source for source, exprs in (("dashboard", dashboard_exprs()), ("rules", rule_exprs()))
             for e in exprs for name in metric_names(e)}  # fmt: skip
    unknown = sorted(n for n in named if n not in exported | PROMETHEUS_OWN | EXPECTED_NOT_YET_EXPORTED)
    assert not unknown, f"named but not exported: {[(n, named[n]) for n in unknown]}"
    landed = sorted(EXPECTED_NOT_YET_EXPORTED & exported)
    assert not landed, f"now exported: remove {landed} from EXPECTED_NOT_YET_EXPORTED"
    assert set(named) >= EXPECTED_NOT_YET_EXPORTED, "an expected name no query uses any more"


def test_the_dashboard_has_its_panels_and_one_datasource_variable() -> None:
    board = dashboard()
    titles = [p["title"] for p in board["panels"]]
    assert [t for t in REQUIRED_PANELS if t not in titles] == []
    assert len(titles) == len(set(titles)), "panel titles are unique"
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def component_objects(tmp_path: Path) -> list[dict[str, Any]]:
    """What an overlay using the component renders (kustomize, or the fixture's subset)."""
    (tmp_path / "kustomization.yaml").write_text(f"components: [{os.path.relpath(MONITORING, tmp_path)}]\n")
    return render(tmp_path)


def test_the_component_renders_the_rule_and_the_labelled_dashboard(tmp_path: Path) -> None:
    objs = {o["kind"]: o for o in component_objects(tmp_path)}
    assert set(objs) == {"ConfigMap", "PrometheusRule"}
    config_map = objs["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["model-locality.json"]) == dashboard()
    rules = {r["alert"] for g in objs["PrometheusRule"]["spec"]["groups"] for r in g["rules"]}
    assert rules == ALERTS


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: scripts/test.sh installs it (Debian's prometheus package)"
    return path


@pytest.fixture()
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's spec as a plain rules file beside the unit tests."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_object()["spec"]))
    shutil.copy(MONITORING / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    return tmp_path


def test_promtool_checks_the_rules(rules_dir: Path) -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", "rules.yaml"],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_cover_every_alert(rules_dir: Path) -> None:
    tests = yaml.safe_load((rules_dir / "alerts-test.yaml").read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a.get("exp_alerts")}
    assert fired == ALERTS, "every alert has a test where it fires"
    done = subprocess.run(
        [promtool(), "test", "rules", "alerts-test.yaml"],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_test_can_fail(rules_dir: Path) -> None:
    """The unit tests are not vacuous: a rule that never fires fails them."""
    spec = rule_object()["spec"]
    spec["groups"][0]["rules"][0]["expr"] = 'up{job="model-locality-agent"} == 2'
    (rules_dir / "rules.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [promtool(), "test", "rules", "alerts-test.yaml"],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "ModelLocalityAgentDown" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def monitoring_kube(real_kube: RealKube) -> Iterator[RealKube]:
    if not (CRDS / RULES_CRD).is_file():
        pytest.skip(f"the upstream CRDs are not beside the checkout ({CRDS})")
    real_kube.apply_manifests(
        [yaml.load((CRDS / RULES_CRD).read_bytes(), Loader=yaml.CSafeLoader)], timeout=60.0
    )
    try:  # shared with other tests: created when missing, never replaced (its labels stay)
        real_kube.request("GET", "/api/v1/namespaces/model-locality")
    except ApiException:
        real_kube.create_namespace("model-locality")
    yield real_kube


def test_the_upstream_crd_and_the_api_server_accept_both_objects(
    monitoring_kube: RealKube, tmp_path: Path
) -> None:
    for obj in component_objects(tmp_path):
        meta = obj["metadata"]
        base = monitoring_kube.collection_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        with contextlib.suppress(ApiException):  # left by an earlier run of this module
            monitoring_kube.request("DELETE", f"{base}/{meta['name']}")
        created = monitoring_kube.request("POST", f"{base}?fieldValidation=Strict", obj)
        monitoring_kube.request("DELETE", f"{base}/{meta['name']}")
        assert created["metadata"]["name"] == meta["name"]
        if obj["kind"] == "PrometheusRule":
            assert created["spec"] == obj["spec"], "nothing pruned by the CRD's schema"
    bad = rule_object()
    bad["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"  # not a Prometheus duration
    bad["metadata"]["name"] = f"bad-{uuid.uuid4().hex[:6]}"
    base = monitoring_kube.collection_path(bad["apiVersion"], bad["kind"], "model-locality")
    with pytest.raises(ApiException) as refused:
        monitoring_kube.request("POST", f"{base}?fieldValidation=Strict", bad)
    assert refused.value.status == 422


async def test_agent_exports_pinned_bytes_and_its_high_watermark(
    aiohttp_client: MakeClient, tmp_path: Path, s3_server: S3Server, s3_env: dict[str, str]
) -> None:
    local = synthetic_model(tmp_path / "src", shards=2, shard_bytes=128 << 10)
    prefix = f"monitoring/{uuid.uuid4().hex[:8]}/tiny"
    s3_server.upload_dir(local, "models", prefix)
    ref = model_ref(f"s3://models/{prefix}")
    app = agent_app(
        AgentSettings(cache_dir=tmp_path / "cache", token="t0ken", quota_bytes=10 << 20).validate()
    )
    client = await aiohttp_client(app)
    auth = {"Authorization": "Bearer t0ken"}
    assert (await client.post("/v1/models", json={"uri": ref.uri}, headers=auth)).status == 202

    async def ready() -> bool:
        return (await (await client.get(f"/v1/models/{ref.id}", headers=auth)).json()).get("state") == "ready"

    await eventually(ready, within=30, what="the model fetched")
    size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())

    async def gauges() -> dict[str, float]:
        text = await metrics_text(client)
        return {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if "cache_" in s.name
        }

    assert (await gauges())["model_locality_agent_cache_pinned_bytes"] == 0
    app[MANAGER].cache.pin(ref.id, "manual:monitoring-test")

    async def pinned() -> bool:
        return (await gauges())["model_locality_agent_cache_pinned_bytes"] == size

    await eventually(pinned, what="the pinned bytes on /metrics")
    assert (await gauges())["model_locality_agent_cache_high_watermark_bytes"] == int((10 << 20) * 0.9)
