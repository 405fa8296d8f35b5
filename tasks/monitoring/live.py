"""Live columns of ``deploys/status.py``, read straight from a head's ``/metrics`` (no Prometheus).

The host returns the exposition lines of the names any known vLLM release uses
(``tasks.vllm.metrics.all_names``); here the names of the replica's own version pick the values:
running and waiting requests, KV cache usage, and, against the previous status read of the same
service (the last report in ``status_report_dir``), generated tokens per second and the TTFT p95 of
the requests finished in between (Prometheus' ``histogram_quantile`` interpolation on the bucket
deltas). The first read, or one after a restart (counters went down), shows ``-`` for those two.
"""

from __future__ import annotations

import math
import re
from typing import Any

from tasks.vllm.metrics import names_for

LIVE_COLUMNS = ("running", "waiting", "kv", "gen/s", "ttft_p95")
_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LE = re.compile(r'le="([^"]+)"')


def wanted(line: str, names: list[str]) -> bool:
    """Whether an exposition line is a sample of one of ``names`` (histograms: their ``_bucket``)."""
    name = line.split("{", 1)[0].split(" ", 1)[0]
    return name in names or (name.endswith("_bucket") and name[:-len("_bucket")] in names)


def sample(text: str, version: str) -> dict[str, Any]:
    """Running, waiting, KV usage, generated tokens and TTFT buckets (summed over engines) of one read."""
    names = names_for(version)
    sums: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        name, labels, raw = m.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        if name == f"{names.ttft}_bucket":
            le = _LE.search(labels or "")
            if le:
                bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
                buckets[bound] = buckets.get(bound, 0.0) + value
        else:
            sums[name] = sums.get(name, 0.0) + value
    return {"running": sums.get(names.running), "waiting": sums.get(names.waiting),
            "kv": sums.get(names.kv_cache_usage), "gen_tokens": sums.get(names.generation_tokens),
            "ttft_buckets": sorted(buckets.items())}


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile`` of cumulative ``(upper bound, count)`` pairs; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, prev_bound, prev_count = q * buckets[-1][1], 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def columns(now: dict[str, Any] | None, at: float, before: dict[str, Any] | None = None,
            before_at: float | None = None) -> dict[str, str]:
    """The live columns of one read, against the previous read (``before`` at ``before_at``) if any."""
    if not now:
        return {c: "-" for c in LIVE_COLUMNS}

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    out = {"running": num(now.get("running"), ".0f"), "waiting": num(now.get("waiting"), ".0f"),
           "kv": "-" if now.get("kv") is None else f"{100 * now['kv']:.0f}%", "gen/s": "-", "ttft_p95": "-"}
    if not before or before_at is None or at <= before_at:
        return out
    gen, gen_before = now.get("gen_tokens"), before.get("gen_tokens")
    if gen is not None and gen_before is not None and gen >= gen_before:
        out["gen/s"] = f"{(gen - gen_before) / (at - before_at):.1f}"
    old = dict(before.get("ttft_buckets") or [])
    delta = [(b, c - old.get(b, 0.0)) for b, c in now.get("ttft_buckets") or []]
    if delta and all(c >= 0 for _, c in delta):
        p95 = quantile(0.95, delta)
        out["ttft_p95"] = "-" if p95 is None else f"{p95:.3f}s"
    return out


__all__ = ["LIVE_COLUMNS", "columns", "quantile", "sample", "wanted"]
