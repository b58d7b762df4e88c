"""Prometheus metrics, in a registry of the app's own (two apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .engine import Engine, JobRecord


class Metrics:
    def __init__(self, engine: Engine):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("textdiffusion_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=registry)
        self.latency = Histogram("textdiffusion_request_seconds", "time to the full response, by route", ["route"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=registry)
        self.jobs = Counter("textdiffusion_jobs", "finished sampling/scoring jobs by outcome", ["status"],
                            registry=registry)
        self.steps = Counter("textdiffusion_steps", "sampler steps run", registry=registry)
        self.tokens = Counter("textdiffusion_generated_tokens", "tokens generated", registry=registry)
        self.rejected = Counter("textdiffusion_rejected", "requests refused with 429 (queue full)", registry=registry)
        self.forwards = Counter("textdiffusion_forward_passes", "model forward passes", registry=registry)
        self.calls = Counter("textdiffusion_forward_calls", "sampler forward calls served (several share a pass "
                             "when batched)", registry=registry)
        self.batch_calls = Histogram("textdiffusion_forward_batch_calls", "sampler calls per forward pass",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=registry)
        Gauge("textdiffusion_running", "requests sampling now", registry=registry).set_function(
            lambda: engine.running)
        Gauge("textdiffusion_queued", "requests waiting for a slot", registry=registry).set_function(
            lambda: engine.queued)
        stats = engine.batcher.stats
        for name, doc in (("solo", "sampler calls that ran alone (a kind no other call may share a pass with)"),
                          ("shared_cached", "sampler calls with a KV cache that shared a pass"),
                          ("shared_padded", "sampler calls that shared a pass with a longer call, padded")):
            Gauge(f"textdiffusion_forward_calls_{name}", doc, registry=registry).set_function(
                lambda name=name: getattr(stats, name))
        engine.on_finish = self.job_finished
        engine.batcher.stats.on_forward = self.forward

    def job_finished(self, record: JobRecord) -> None:
        self.jobs.labels(record.status).inc()
        self.steps.inc(max(record.frames - 1, 0))

    def forward(self, calls: int, rows: int) -> None:
        self.forwards.inc()
        self.calls.inc(calls)
        self.batch_calls.observe(calls)

    def render(self) -> bytes:
        return generate_latest(self.registry)
