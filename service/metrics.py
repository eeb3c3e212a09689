"""Prometheus metrics of the service (one registry per app, so tests can create several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: HTTP methods that get their own ``method`` label; any other (WebDAV's PROPFIND, MKCOL...) is ``other``,
#: so a client cannot create label sets at will
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The ``method`` label of a request: the method when it is a known one, else ``"other"``."""
    return method if method in KNOWN_METHODS else "other"


class Metrics:
    """Request counts and latencies, inference batch sizes, gallery size."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "whaleid_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "whaleid_request_seconds",
            "HTTP request latency in seconds",
            ["route", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.stage = Histogram(
            "whaleid_identify_stage_seconds",
            "Time per /identify stage in seconds",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "whaleid_inference_batch_boxes",
            "Boxes per onnxruntime call",
            buckets=(1, 2, 5, 10, 20, 40, 80, 160),
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "whaleid_inference_batch_requests",
            "Requests per onnxruntime call",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=self.registry,
        )
        self.rejected_uploads = Counter(
            "whaleid_rejected_uploads", "Bodies refused while streaming (413)", ["route"], registry=self.registry
        )
        self.gallery_identities = Gauge(
            "whaleid_gallery_identities", "Identities in the gallery", registry=self.registry
        )
        self.gallery_images = Gauge("whaleid_gallery_images", "Photos in the gallery", registry=self.registry)

    def on_batch(self, rows: int, requests: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)
