"""``GET /metrics``: Prometheus text format, correct under gunicorn's several workers.

Two sources, one page:

* **farm state from the database at scrape time** (``control.farm.telemetry``): tasks,
  queues, nodes, outcomes, each dispatcher's rounds, the change feed and each provider's
  position in it. Whichever worker answers, the figures are the same.
* **in-process instruments** (API request duration, callback latency): histograms of
  ``prometheus-client``. Under gunicorn they live in its multiprocess mode:
  ``control.web.server`` sets ``PROMETHEUS_MULTIPROC_DIR`` (emptied on start) before the
  workers fork, each worker writes its own files, and a scrape sums them. Without it (tests'
  in-process server, a single process) they are plain in-memory metrics.

``prometheus_client`` is imported lazily: it chooses its value class on import, from the
environment, so it must not be imported before the server has set the directory.

Protected by ``metrics_token`` (Bearer, compared in constant time); empty turns it off (404).
Every series is listed in docs/metrics.md, and a test checks they all appear.
"""

from __future__ import annotations

import functools
import hmac
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from control.core.config import Settings
from control.core.db import connection
from control.core.errors import error_body
from control.farm import retention, telemetry
from control.registry import feed
from control.registry.identity import bearer
from control.registry.models import Provider

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CALLBACK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@functools.cache
def _instruments() -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, Histogram

    # Not in the global registry: a scrape builds its own (see ``render``).
    registry = CollectorRegistry(auto_describe=True)
    return {
        "registry": registry,
        "request": Histogram(
            "zonefarm_api_request_duration_seconds", "API request duration, by route template, method "
            "and status", ["route", "method", "status"], buckets=REQUEST_BUCKETS, registry=registry),
        "callback": Histogram(
            "zonefarm_callback_latency_seconds", "Signed node callbacks: from the node signing the "
            "request to the API's answer (includes the clocks' difference)", ["route"],
            buckets=CALLBACK_BUCKETS, registry=registry),
    }


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    _instruments()["request"].labels(route, method, str(status)).observe(seconds)


def observe_callback(route: str, signed_at: float) -> None:
    _instruments()["callback"].labels(route).observe(max(0.0, time.time() - signed_at))


class FarmCollector:
    """Farm figures read from the database on each scrape (see ``control.farm.telemetry``)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with connection():
            tasks = GaugeMetricFamily("zonefarm_tasks", "Tasks by state and queue (broadcast parents "
                                      "left out: their children are the tasks that run)",
                                      labels=["state", "queue"])
            for state, queue, n in telemetry.tasks_by_state_and_queue():
                tasks.add_metric([state, queue], n)
            yield tasks
            age = GaugeMetricFamily("zonefarm_queue_oldest_queued_age_seconds",
                                    "Seconds the longest-waiting queued task of each queue has waited",
                                    labels=["queue"])
            for queue, seconds in sorted(telemetry.oldest_queued_age().items()):
                age.add_metric([queue], seconds)
            yield age
            nodes = GaugeMetricFamily("zonefarm_nodes", "Nodes by state", labels=["state"])
            for state, n in sorted(telemetry.nodes_by_state().items()):
                nodes.add_metric([state], n)
            yield nodes
            free = GaugeMetricFamily("zonefarm_queue_free_slots", "Free slots on the nodes serving each "
                                     "queue that take work (online, not cordoned or draining)",
                                     labels=["queue"])
            for queue, n in sorted(telemetry.free_slots().items()):
                free.add_metric([queue], n)
            yield free
            outcomes = CounterMetricFamily("zonefarm_task_outcomes", "Finished tasks by type and outcome "
                                           "(including those the pruner deleted)", labels=["type", "outcome"])
            for (name, outcome), n in sorted(telemetry.outcomes().items()):
                outcomes.add_metric([name, outcome], n)
            yield outcomes
            yield from self._dispatchers()
            yield from self._feed()

    def _dispatchers(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        last = GaugeMetricFamily("zonefarm_dispatcher_last_round_timestamp_seconds",
                                 "When each dispatcher last recorded a round (epoch seconds)",
                                 labels=["dispatcher"])
        rounds = CounterMetricFamily("zonefarm_dispatcher_rounds", "Dispatch rounds, idle ones included",
                                     labels=["dispatcher"])
        errors = CounterMetricFamily("zonefarm_dispatcher_errors", "Dispatch rounds that failed",
                                     labels=["dispatcher"])
        duration = HistogramMetricFamily("zonefarm_dispatch_round_duration_seconds",
                                         "Duration of the dispatch rounds that ran a job",
                                         labels=["dispatcher"])
        hosts = HistogramMetricFamily("zonefarm_dispatch_round_hosts",
                                      "Hosts in each dispatch round that ran a job", labels=["dispatcher"])
        for row in telemetry.dispatchers():
            last.add_metric([row.ident], row.last_round_at)
            rounds.add_metric([row.ident], row.rounds)
            errors.add_metric([row.ident], row.errors)
            for family, bounds, data in ((duration, telemetry.DURATION_BUCKETS, row.duration),
                                         (hosts, telemetry.HOSTS_BUCKETS, row.hosts)):
                h = telemetry.Histogram.load(bounds, data)
                family.add_metric([row.ident], h.cumulative(), h.sum)
        yield from (last, rounds, errors, duration, hosts)

    def _feed(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        head = feed.last_seq()
        yield GaugeMetricFamily("zonefarm_feed_head_seq", "Newest change number of the change feed", value=head)
        yield GaugeMetricFamily("zonefarm_feed_pruned_seq", "Highest change number the pruner deleted "
                                "(a provider resuming from before it must resynchronise)",
                                value=retention.feed_pruned_seq())
        acked = GaugeMetricFamily("zonefarm_provider_feed_acked_seq", "Last change number each provider "
                                  "acknowledged (the `since` of its latest GET /changes)",
                                  labels=["provider"])
        lag = GaugeMetricFamily("zonefarm_provider_feed_lag", "Changes each provider has not acknowledged "
                                "yet (feed head minus its acknowledged number)", labels=["provider"])
        for provider in Provider.select(Provider.name, Provider.feed_acked_seq).order_by(Provider.name):
            seq = provider.feed_acked_seq or 0
            acked.add_metric([provider.name], seq)
            lag.add_metric([provider.name], max(0, head - seq))
        yield acked
        yield lag


def render() -> bytes:
    """The whole page: the farm from the database, the instruments of every worker."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector())
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess
        _instruments()  # this worker's files exist even before its first request
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Local())
    return generate_latest(registry)


class _Local:
    """This process's instruments, when not in multiprocess mode."""

    def collect(self) -> Iterator[Any]:
        yield from _instruments()["registry"].collect()


def prepare_multiprocess_dir(path: str) -> None:
    """An empty directory for the workers' metric files (the files of a previous run would
    add up): called by the server before the workers fork."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
    os.environ[MULTIPROC_ENV] = path


class MetricsApp:
    """WSGI for ``/metrics`` (``control.web.app.Site`` sends that path here)."""

    def __init__(self, settings: Settings) -> None:
        self.token = settings.metrics_token

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.token:
            return _error(start_response, 404, "no route /metrics (metrics_token is not set)")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _error(start_response, 405, "method not allowed on /metrics", [("Allow", "GET")])
        given = bearer(environ.get("HTTP_AUTHORIZATION")) or ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return _error(start_response, 401, "missing or wrong metrics token",
                          [("WWW-Authenticate", 'Bearer realm="zonefarm-metrics"')])
        environ["zonefarm.principal"] = "metrics"
        body = render()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body]


def _error(start_response: Callable[..., Any], status: int, message: str,
           headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = error_body(status, message).encode()
    reason = {401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body))), *(headers or [])])
    return [body]


__all__ = ["MetricsApp", "observe_callback", "observe_request", "prepare_multiprocess_dir", "render"]
