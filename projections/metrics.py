"""The read side's Prometheus metrics: the projector's (rows landed, lag) and the HTTP
API's (requests by route and status, their duration). Both are served by the API's
`/metrics` (projections/api.py), with the circuits and fleet health of its history
(faultstream/metrics.py). Updated once per landed batch, lag measure or request.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PROJECTOR_ROWS = Counter(
    "faultstream_projector_rows",
    "Rows landed in the DuckDB history (inputs, derived records, dead letters)",
)
PROJECTOR_BATCHES = Counter(
    "faultstream_projector_batches", "Transactions landed in the DuckDB history"
)
PROJECTOR_LAG_RECORDS = Gauge(
    "faultstream_projector_lag_records",
    "Records on the projector's topics that have not landed yet",
)
PROJECTOR_LAG_SECONDS = Gauge(
    "faultstream_projector_lag_seconds",
    "0 when every record has landed; otherwise the age of the newest landed frame",
)
API_REQUESTS = Counter(
    "faultstream_api_requests", "HTTP API requests, by route and status", ["route", "status"]
)
API_LATENCY = Histogram(
    "faultstream_api_request_duration_seconds",
    "HTTP API request duration in the app, by route",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
