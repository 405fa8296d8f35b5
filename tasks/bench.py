"""Fleet benchmark: ``vllm bench serve`` inside each serving container, one table for the fleet.

Each host's serving containers (named ``llmfleet-<spec name>``, running vLLM) are found from
``docker inspect``: their own arguments say the model path, served name and port, so the
benchmark needs nothing from the deploy that started them. The benchmark runs inside the
container (``docker exec``) against its own endpoint on 127.0.0.1, with the image's own
``vllm bench serve``; the API key never leaves the container: vLLM's benchmark reads
``OPENAI_API_KEY``, which the exec'd shell sets from the container's ``VLLM_API_KEY`` (from its
env file), so argv holds only the variable's name. The result JSON is copied out and
downloaded to ``reports/bench/<run>/``; the last step prints one table for the fleet and writes
``reports/bench/<run>.json``.

A benchmark is an action, not state: every run changes (like server.shell).

Settings (host data, prefix ``bench_``): ``tasks.settings.bench.BenchSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import json
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, OperationValueError, deploy, operation
from pyinfra.operations import files, python
from tasks.settings.bench import BenchSettings

DEFAULTS = BenchSettings.defaults()
CONTAINER_PREFIX = "llmfleet-"
RUN_ID = time.strftime("%Y%m%d-%H%M%S")  # one per pyinfra run: the module is imported once
#: (column, result key, format) of the fleet table.
COLUMNS = (("TTFT p50 ms", "median_ttft_ms", "{:.1f}"), ("TTFT p99 ms", "p99_ttft_ms", "{:.1f}"),
           ("TPOT ms", "mean_tpot_ms", "{:.2f}"), ("req/s", "request_throughput", "{:.2f}"),
           ("tok/s", "output_throughput", "{:.1f}"), ("ok/n", None, None))


@dataclass(frozen=True)
class Endpoint:
    """A serving container as its arguments describe it."""

    container: str
    model: str
    served_model_name: str
    port: int


def endpoint_from_args(container: str, args: list[str]) -> Endpoint | None:
    """Read model, served name and port from a vLLM container's argv (None: not vLLM)."""
    model = served = None
    port = 8000
    i = 0
    while i < len(args):
        tok = args[i]
        flag, eq, inline = tok.partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
        step = 1 if eq else 2
        if flag == "--model":
            model = value
        elif flag == "--served-model-name":
            served = value
        elif flag == "--port" and value and value.isdigit():
            port = int(value)
        elif tok == "serve" and i + 1 < len(args) and not args[i + 1].startswith("-"):
            model, step = args[i + 1], 2
        else:
            step = 1
        i += step
    if not model:
        return None
    return Endpoint(container=container, model=model, served_model_name=served or model, port=port)


class ServingContainers(FactBase):
    """
    Running ``llmfleet-*`` containers that serve vLLM, as ``[Endpoint]`` (from docker inspect).
    """

    default = list
    requires_command = "docker"

    def command(self) -> str:
        return (f"docker ps -q --filter name=^{CONTAINER_PREFIX} | xargs -r docker inspect "
                "--format '{{.Name}}\t{{json .Args}}' 2>/dev/null || true")

    def process(self, output):
        found = []
        for line in output:
            name, _, args = line.partition("\t")
            try:
                argv = json.loads(args)
            except json.JSONDecodeError:
                continue
            ep = endpoint_from_args(name.lstrip("/"), [str(a) for a in argv or []])
            if ep:
                found.append(ep)
        return found


def bench_command(ep: Endpoint, result_path: str, num_prompts: int, input_len: int, output_len: int,
                  max_concurrency: int | None = None) -> str:
    """The ``vllm bench serve`` command line run inside the container (no secret in it)."""
    argv = ["vllm", "bench", "serve", "--backend", "openai", "--base-url", f"http://127.0.0.1:{ep.port}",
            "--model", ep.model, "--served-model-name", ep.served_model_name,
            "--dataset-name", "random", "--num-prompts", str(num_prompts),
            "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--ignore-eos", "--disable-tqdm", "--save-result", "--result-filename", result_path,
            "--metadata", f"served_model_name={ep.served_model_name}", f"container={ep.container}"]
    if max_concurrency:
        argv += ["--max-concurrency", str(max_concurrency)]
    # $VLLM_API_KEY is expanded by the container's shell: the key is never in any argv.
    return 'OPENAI_API_KEY="${VLLM_API_KEY:-}" exec ' + " ".join(shlex.quote(a) for a in argv)


@operation(is_idempotent=False)
def benchmarked(endpoint: Endpoint, remote_result: str, num_prompts: int = 50, input_len: int = 256,
                output_len: int = 64, max_concurrency: int | None = None, timeout_s: int = 900):
    """
    Run ``vllm bench serve`` inside a serving container and copy its result JSON to the host.

    + endpoint: the container (ServingContainers fact)
    + remote_result: where the result JSON is written on the host
    + num_prompts/input_len/output_len/max_concurrency: the benchmark's load
    + timeout_s: bound on the run

    Example:

    .. code:: python

        bench.benchmarked(endpoint=ep, remote_result="/var/cache/llmfleet/bench/r1/llmfleet-qwen30b.json")
    """
    for value, field in ((num_prompts, "bench_num_prompts"), (input_len, "bench_input_len"),
                         (output_len, "bench_output_len"), (timeout_s, "bench_timeout_s")):
        if not isinstance(value, int) or value < 1:
            raise OperationValueError(f"{field}: must be a positive integer, got {value!r}")
    inner = f"/tmp/llmfleet-bench-{RUN_ID}.json"
    cmd = bench_command(endpoint, inner, num_prompts, input_len, output_len, max_concurrency)
    c, r = shlex.quote(endpoint.container), shlex.quote(remote_result)
    yield (f"mkdir -p {shlex.quote(str(Path(remote_result).parent))} && "
           f"timeout {int(timeout_s)} docker exec {c} sh -c {shlex.quote(cmd)} >/dev/null && "
           f"docker cp {c}:{inner} {r} && docker exec {c} rm -f {inner}")


def fleet_rows(results: list[dict]) -> list[list[str]]:
    """Table rows (host, model, metrics...) from result records (each with host/model/result)."""
    rows = []
    for rec in sorted(results, key=lambda r: (r["host"], r["container"])):
        res = rec["result"]
        row = [rec["host"], rec["model"]]
        for _, key, fmt in COLUMNS:
            if key is None:
                row.append(f"{res.get('completed', 0)}/{res.get('num_prompts', '?')}")
            else:
                value = res.get(key)
                row.append(fmt.format(value) if isinstance(value, (int, float)) else "-")
        rows.append(row)
    return rows


def fleet_table(results: list[dict]) -> str:
    """The fleet table as text: one line per container, a total line when there are several."""
    header = ["host", "model"] + [c for c, _, _ in COLUMNS]
    rows = fleet_rows(results)
    if len(rows) > 1:
        total = [r["result"] for r in results]
        rows.append(["fleet", f"{len(rows)} endpoints",
                     f"{statistics.median(r.get('median_ttft_ms', 0) for r in total):.1f}",
                     f"{max(r.get('p99_ttft_ms', 0) for r in total):.1f}",
                     f"{statistics.fmean(r.get('mean_tpot_ms', 0) for r in total):.2f}",
                     f"{sum(r.get('request_throughput', 0) for r in total):.2f}",
                     f"{sum(r.get('output_throughput', 0) for r in total):.1f}",
                     f"{sum(r.get('completed', 0) for r in total)}/{sum(r.get('num_prompts', 0) for r in total)}"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def collect(run_dir: Path) -> list[dict]:
    """Result records from ``<run_dir>/<host>__<container>.json`` files."""
    records = []
    for path in sorted(run_dir.glob("*__*.json")):
        host_name, _, container = path.stem.partition("__")
        result = json.loads(path.read_text())
        records.append({"host": host_name, "container": container,
                        "model": result.get("served_model_name") or _served(result, container),
                        "result": result})
    return records


def _served(result: dict, container: str) -> str:
    return container[len(CONTAINER_PREFIX):] if container.startswith(CONTAINER_PREFIX) else container


def write_report(run_dir: Path, out: Path, printer=print) -> dict:
    """Print the fleet table of a run and write ``out`` (the records and the table)."""
    records = collect(run_dir)
    table = fleet_table(records) if records else "(no benchmark results)"
    printer(f"--> Fleet benchmark {run_dir.name}\n{table}")
    report = {"run": run_dir.name, "table": table.splitlines(),
              "endpoints": [{"host": r["host"], "container": r["container"], "model": r["model"],
                             **{k: r["result"].get(k) for _, k, _ in COLUMNS if k},
                             "completed": r["result"].get("completed"),
                             "failed": r["result"].get("failed"),
                             "num_prompts": r["result"].get("num_prompts")} for r in records]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


@deploy("Benchmark", data_defaults=DEFAULTS)
def bench_fleet() -> None:
    """
    Benchmark every serving container of the hosts and print one fleet table.

    Example:

    .. code:: python

        from tasks.bench import bench_fleet
        bench_fleet()
    """
    settings = BenchSettings.of(host)
    wanted = settings.bench_containers
    endpoints = [ep for ep in host.get_fact(ServingContainers) if not wanted or ep.container in wanted]
    remote_dir = f"{settings.bench_remote_dir.rstrip('/')}/{RUN_ID}"
    local_dir = Path(settings.bench_local_dir)
    if not endpoints:
        host.noop("no running llmfleet-* vLLM container to benchmark")  # logged, not an operation
    for ep in endpoints:
        remote = f"{remote_dir}/{ep.container}.json"
        benchmarked(name=f"Benchmark {ep.container}", endpoint=ep, remote_result=remote,
                    num_prompts=settings.bench_num_prompts, input_len=settings.bench_input_len,
                    output_len=settings.bench_output_len, max_concurrency=settings.bench_max_concurrency,
                    timeout_s=settings.bench_timeout_s)
        files.get(name=f"Fetch {ep.container} result", src=remote,
                  dest=str(local_dir / RUN_ID / f"{host.name}__{ep.container}.json"), create_local_dir=True)
    python.call(name="Fleet table", function=write_report, run_dir=local_dir / RUN_ID,
                out=local_dir / f"{RUN_ID}.json", _run_once=True)
