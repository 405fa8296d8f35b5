"""Bench settings (host data, prefix ``bench_``): read by tasks.bench."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tasks.settings.base import AbsPath, Positive, Settings


class BenchSettings(Settings):
    """Bench: every ``bench_*`` key of the host data."""

    prefix: ClassVar[str] = "bench_"
    title: ClassVar[str] = "Bench"

    bench_num_prompts: Positive = Field(
        50, description="requests per container (``--num-prompts``)")
    bench_input_len: Positive = Field(
        256, description="random prompt length in tokens (``--random-input-len``)")
    bench_output_len: Positive = Field(
        64, description="tokens generated per request (``--random-output-len``)")
    bench_max_concurrency: Positive | None = Field(
        None, description="``--max-concurrency`` (None: all at once, vLLM's default)")
    bench_containers: list[str] | None = Field(
        None, description="container names to benchmark (None: every running llmfleet-* vLLM container)")
    bench_timeout_s: Positive = Field(
        900, description="bound on one benchmark run (``timeout`` around docker exec)")
    bench_remote_dir: AbsPath = Field(
        "/var/cache/llmfleet/bench", description="where results are kept on hosts")
    bench_local_dir: str = Field(
        "reports/bench", description="where results land on the control machine")
