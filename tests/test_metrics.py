"""``GET /metrics``: the token, every series docs/metrics.md names after tasks ran through a
real dispatcher and node, and the request histograms summed over gunicorn's workers."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from control.core.config import Settings
from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support import registry
from tests.support.apiproc import ApiProcess, api_env
from tests.support.client import Api
from tests.support.farm import Farm
from tests.support.server import LiveServer
from tests.test_server import _start, _upgrade

DOCS = Path(__file__).resolve().parent.parent / "docs"
TOKEN = "metrics-token-for-tests-0123"
LEASE = 20


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database=db_url, root_secret=ROOT_SECRET, nodes_secret=NODES_SECRET,
                    data_dir=str(tmp_path / "data"), listen="127.0.0.1:0", changes_max_wait=10,
                    task_lease=LEASE, node_lease=120, dispatch_interval=0.2, artifacts_keep=3,
                    metrics_token=TOKEN)


@pytest.fixture
def farm(api: Api, live_server: LiveServer, settings: Settings, tmp_path: Path) -> Iterator[Farm]:
    f = Farm(api, live_server.url, settings, tmp_path, lease=LEASE, nodes_secret=NODES_SECRET)
    yield f
    f.stop()


def scrape(base: str, token: str | None = TOKEN) -> dict[str, list[tuple[dict[str, str], float, str]]]:
    """Family name -> its samples (labels, value, sample name)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = requests.get(base + "/metrics", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {f.name: [(s.labels, s.value, s.name) for s in f.samples]
            for f in text_string_to_metric_families(resp.text)}


def documented_series() -> list[str]:
    """The series of docs/metrics.md's table (first column)."""
    names = re.findall(r"^\| `(zonefarm_\w+)` \|", (DOCS / "metrics.md").read_text(), re.M)
    assert len(names) >= 15
    return names


def family(name: str) -> str:
    return name[: -len("_total")] if name.endswith("_total") else name


def test_metrics_needs_its_token(live_server: LiveServer) -> None:
    for token, status in ((None, 401), ("wrong-token-000000000000", 401), (ROOT_SECRET, 401)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = requests.get(live_server.url + "/metrics", headers=headers, timeout=10)
        assert resp.status_code == status
        assert resp.json()["error"]["code"] == "unauthorized"
        assert TOKEN not in resp.text
    assert "zonefarm_tasks" in scrape(live_server.url)


def test_metrics_off_without_a_token(tmp_path: Path, db_url: str) -> None:
    from control.web.app import build_app
    app = build_app(Settings(database=db_url, root_secret=ROOT_SECRET, nodes_secret=NODES_SECRET,
                             data_dir=str(tmp_path / "d")))
    server = LiveServer(app).start()
    try:
        resp = requests.get(server.url + "/metrics", headers={"Authorization": "Bearer x"}, timeout=10)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    finally:
        server.stop()


def test_every_documented_series_exists_after_a_few_tasks(farm: Farm, api: Api, live_server: LiveServer) -> None:
    farm.add_node("wk1", concurrency=2)
    farm.add_node("wk2", concurrency=3, queues=["default", "gpu"])
    _, ptoken = registry.provider(api, "prov1")
    assert api.get("/changes?since=0", token=ptoken).status_code == 200
    farm.start_dispatcher("d1")
    ok = farm.submit("shell", {"argv": ["true"]})
    bad = farm.submit("shell", {"argv": ["sh", "-c", "exit 3"]}, max_attempts=1)
    waiting = farm.submit("shell", {"argv": ["true"]}, queue="nobody-serves-this")
    assert farm.wait(ok["id"])["state"] == "succeeded"
    assert farm.wait(bad["id"])["state"] == "failed"

    deadline = time.monotonic() + 30
    while True:  # the dispatcher writes its health after the round that ran the job
        families = scrape(live_server.url)
        if families.get("zonefarm_dispatch_round_duration_seconds") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = [n for n in documented_series() if not families.get(family(n))]
    assert not missing, f"documented but not exposed: {missing}"

    def value(name: str, **labels: str) -> float:
        return sum(v for lab, v, sample in families[name]
                   if all(lab.get(k) == w for k, w in labels.items()) and not sample.endswith("_created"))

    assert value("zonefarm_task_outcomes", type="shell", outcome="succeeded") == 1
    assert value("zonefarm_task_outcomes", type="shell", outcome="failed") == 1
    assert value("zonefarm_tasks", state="queued", queue="nobody-serves-this") == 1
    assert value("zonefarm_queue_oldest_queued_age_seconds", queue="nobody-serves-this") >= 0
    assert value("zonefarm_nodes", state="online") == 2
    assert value("zonefarm_queue_free_slots", queue="default") == 5
    assert value("zonefarm_queue_free_slots", queue="gpu") == 3
    assert value("zonefarm_dispatcher_rounds", dispatcher="d1") >= 1
    assert value("zonefarm_dispatch_round_hosts", dispatcher="d1") >= 1  # count + sum + buckets
    head = value("zonefarm_feed_head_seq")
    assert head >= 1
    assert value("zonefarm_provider_feed_acked_seq", provider="prov1") == 0
    assert value("zonefarm_provider_feed_lag", provider="prov1") == head
    callbacks = [lab["route"] for lab, _, s in families["zonefarm_callback_latency_seconds"] if s.endswith("_count")]
    assert "/api/v1/tasks/{id}/callback" in callbacks, callbacks
    routes = {(lab["route"], lab["status"]) for lab, _, s in families["zonefarm_api_request_duration_seconds"]
              if s.endswith("_count")}
    assert ("/api/v1/tasks/{id}", "200") in routes
    assert not any(re.search(r"/tasks/\d", r) for r, _ in routes)  # templates, not ids
    del waiting

    # the audit trail names who moved the task: root submitted, the dispatcher claimed, the node ran
    trail = api.get("/audit", token=api.root, params={"kind": "task_event", "entity_id": ok["id"]}).json()
    actors = {i["action"]: i["actor"] for i in trail["items"]}
    assert actors["-->queued"] == "root"
    assert actors["queued->assigned"] == "dispatcher:d1"
    assert actors["running->succeeded"] in ("node:wk1", "node:wk2")


def test_grafana_dashboard_and_scrape_example_name_real_series() -> None:
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    documented = {family(n) for n in documented_series()}
    used = {family(re.sub(r"_(bucket|sum|count)$", "", n)) for n in re.findall(r"zonefarm_\w+", exprs)}
    assert used <= documented, used - documented
    assert documented <= used, documented - used
    assert "metrics_path: /metrics" in (DOCS / "prometheus.yml").read_text()


def test_request_histograms_add_up_across_gunicorn_workers(tmp_path: Path, started: list[ApiProcess]) -> None:
    env = api_env(tmp_path, ZONEFARM_ROOT_SECRET=ROOT_SECRET, ZONEFARM_NODES_SECRET=NODES_SECRET,
                  ZONEFARM_METRICS_TOKEN=TOKEN, ZONEFARM_API_WORKERS="2")
    stale = tmp_path / "data" / "metrics"
    stale.mkdir(parents=True)
    (stale / "histogram_999999.db").write_bytes(b"left over from a previous run")
    _upgrade(env)
    server = _start(started, tmp_path, env)
    server.wait_ready()
    base = server.url.removesuffix("/api/v1")
    def worker_files() -> set[str]:
        return {p.name for p in stale.iterdir() if p.name.startswith("histogram_")}

    made = 0
    # New connections: gunicorn spreads them over both workers. Go on until each worker has
    # served (its own histogram file exists), so the scrape must add two workers' counts.
    while made < 20 or (len(worker_files()) < 2 and made < 400):
        resp = requests.get(server.url + "/openapi.json", timeout=10, headers={"Connection": "close"})
        assert resp.status_code == 200
        made += 1
    files = worker_files()
    assert "histogram_999999.db" not in files  # emptied on start
    assert len(files) == 2, (made, files)  # one file per worker, each of which served
    families = scrape(base)
    samples = [(lab, v, s) for lab, v, s in families["zonefarm_api_request_duration_seconds"]
               if lab["route"] == "/api/v1/openapi.json"]
    assert sum(v for _, v, s in samples if s.endswith("_count")) == made
    assert next(v for lab, v, s in samples if s.endswith("_bucket") and lab["le"] == "+Inf") == made
    assert 0 < sum(v for _, v, s in samples if s.endswith("_sum")) < made * 10


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ApiProcess]]:
    procs: list[ApiProcess] = []
    yield procs
    for p in procs:
        if p.proc.poll() is None:
            p.stop()
