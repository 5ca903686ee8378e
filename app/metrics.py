"""Prometheus metrics, one registry per app (so several apps can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("akool_relay_jobs", "Tracked jobs by status", ["status"], registry=r)
        self.deliveries_by_state = Gauge(
            "akool_relay_events", "Callback events by delivery state", ["state"], registry=r
        )
        self.polls = Counter("akool_relay_polls_total", "Polls of Akool by outcome", ["outcome"], registry=r)
        self.upstream_latency = Histogram(
            "akool_relay_upstream_latency_seconds",
            "Latency of Akool answers",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.deliveries = Counter(
            "akool_relay_delivery_attempts_total", "Callback attempts by outcome", ["outcome"], registry=r
        )
        self.delivery_latency = Histogram(
            "akool_relay_delivery_latency_seconds",
            "Time a callback receiver took to answer",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 30),
            registry=r,
        )
        self.transitions = Counter("akool_relay_transitions_total", "Job state changes", ["to"], registry=r)
        self.pushes = Counter(
            "akool_relay_pushes_total",
            "Akool pushes received, by outcome (verified, bad_signature, undecryptable, unknown_id)",
            ["outcome"],
            registry=r,
        )
        self.push_callback_latency = Histogram(
            "akool_relay_push_to_callback_seconds",
            "From Akool's push to the callback it led to being delivered",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
