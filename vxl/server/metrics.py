"""Prometheus metrics of one server (its own registry, no global state): requests by status, latency and
time-to-first-token histograms, generated tokens and frames, and gauges read at scrape time from the
engine (running and waiting requests, KV pages used and free, video-cache entries and pages, step faults)."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    def __init__(self, engine, llm, video_cache=None):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("vxl_requests", "Chat requests answered, by HTTP status", ["status"],
                                registry=registry)
        self.latency = Histogram("vxl_request_latency_seconds", "Seconds from request to last token",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram("vxl_time_to_first_token_seconds", "Seconds from request to first token",
                              buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("vxl_generated_tokens", "Tokens generated", registry=registry)
        self.frames = Counter("vxl_frames", "Video frames encoded", registry=registry)
        core = llm.core
        gauges = {"vxl_requests_running": ("Requests running in the engine", lambda: core.load()["num_running"]),
                  "vxl_requests_waiting": ("Requests waiting for KV pages", lambda: core.load()["num_waiting"]),
                  "vxl_kv_pages_used": ("KV cache pages in use", lambda: core.kv_cache_usage()["num_used_pages"]),
                  "vxl_kv_pages_free": ("KV cache pages free", lambda: core.kv_cache_usage()["num_free_pages"]),
                  "vxl_step_faults": ("Steps whose forward or sampling raised (their requests failed)",
                                      lambda: engine.stats["step_faults"]),
                  "vxl_engine_steps": ("Engine steps run", lambda: engine.stats["steps"]),
                  "vxl_engine_windows": ("Visual windows encoded", lambda: engine.stats["windows"])}
        if video_cache is not None:
            gauges["vxl_video_cache_entries"] = ("Encoded videos in the cache", lambda: len(video_cache))
            gauges["vxl_video_cache_pages"] = ("KV pages the video cache holds", video_cache.num_pages)
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, registry=registry).set_function(read)

    def count(self, response):
        self.requests.labels(str(response.status_code)).inc()
        return response

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, output, seconds: float) -> None:
        self.latency.observe(seconds)
        self.tokens.inc(len(output.token_ids))
        self.frames.inc(output.metrics.get("num_frames", 0) or 0)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
