"""Prometheus metrics, held in a registry per app so several apps in one process
(tests, the benchmark's baseline) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "linkcoach_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "linkcoach_http_request_seconds",
            "HTTP request duration",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.active_streams = Gauge(
            "linkcoach_active_streams",
            "Turns streaming to a client: SSE responses, turns running on a WebSocket",
            ["transport"],
            registry=r,
        )
        self.open_websockets = Gauge(
            "linkcoach_open_websockets", "Authenticated WebSockets held open", registry=r
        )
        self.active_generations = Gauge(
            "linkcoach_active_generations", "Generations running in this process", registry=r
        )
        self.ttft_seconds = Histogram(
            "linkcoach_time_to_first_chunk_seconds",
            "Time from request to first chunk",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.chunk_gap_seconds = Histogram(
            "linkcoach_inter_chunk_seconds",
            "Gap between chunks from the provider",
            ["provider"],
            buckets=_GAP_BUCKETS,
            registry=r,
        )
        self.chunk_stalls = Counter(
            "linkcoach_chunk_stalls_total",
            "Gaps between provider chunks longer than twice EXPECTED_CHUNK_GAP_MS",
            ["provider"],
            registry=r,
        )
        self.admitted_generations = Gauge(
            "linkcoach_admitted_generations",
            "Turns holding an admission slot (MAX_ACTIVE_STREAMS), from start to end",
            registry=r,
        )
        self.admission_refused = Counter(
            "linkcoach_admission_refused_total",
            "Turns refused with 503 server_busy because every slot was taken",
            registry=r,
        )
        self.llm_errors = Counter(
            "linkcoach_llm_errors_total", "LLM failures by kind", ["provider", "kind"], registry=r
        )
        self.tokens = Counter(
            "linkcoach_llm_tokens_total",
            "Tokens used by kind: prompt (cached included), completion, cached (the part of "
            "the prompt served from Gemini's implicit cache), thought",
            ["provider", "kind"],
            registry=r,
        )
        self.usage_estimated = Counter(
            "linkcoach_usage_estimated_total",
            "Turns whose recorded usage is an estimate (the stream ended before the "
            "provider's final usage)",
            ["provider"],
            registry=r,
        )
        self.cache = Counter(
            "linkcoach_report_cache_total", "Report cache lookups", ["tier", "result"], registry=r
        )
        self.api_log_dropped = Gauge(
            "linkcoach_api_log_dropped",
            "API log entries dropped (queue full or DB down)",
            registry=r,
        )
        self.stream_redis_failures = Gauge(
            "linkcoach_stream_redis_failures",
            "Redis calls of the stream hub (event log, leases, cancel) that failed since start",
            registry=r,
        )
        self.retrieval_searches = Gauge(
            "linkcoach_retrieval_searches",
            "Knowledge-base searches since start: lexical (the default), hybrid (dense "
            "signal on), or lexical_shed (dense on but the query embedder was saturated)",
            ["mode"],
            registry=r,
        )
        self.query_analyses = Gauge(
            "linkcoach_retrieval_query_analyses",
            "Batches of unknown words analysed since start: in the query process "
            "(`process`), or in the server process while it was down, starting or stuck "
            "(`inline`)",
            ["where"],
            registry=r,
        )
        self.query_words = Gauge(
            "linkcoach_retrieval_query_words",
            "Words of questions since start, by where their morphemes came from: the "
            "knowledge base's word memo (`memo`), the word cache (`cache`), or kiwi (`kiwi`)",
            ["source"],
            registry=r,
        )
        self.rate_limited = Counter(
            "linkcoach_rate_limited_total",
            "Requests refused by a rate limit",
            ["scope"],
            registry=r,
        )
        self.feedback = Counter(
            "linkcoach_answer_feedback_total",
            "Feedback stored on answers (a replaced rating counts again)",
            ["rating"],
            registry=r,
        )
        self.regenerations = Counter(
            "linkcoach_regenerations_total", "Answers regenerated", registry=r
        )
        self.degraded = Counter(
            "linkcoach_degraded_total",
            "Operations served without a backing service",
            ["service"],
            registry=r,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
