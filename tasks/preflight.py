"""Preflight: decide, before touching a host, whether it can serve a recipe (go / no-go, with reasons).

``evaluate(facts, req)`` is a pure function of the host's facts and the recipe's requirement. The
facts dict has these keys (each the value of the fact of the same subject; absent keys are "not gathered"):

- ``nvidia_gpus``: ``tasks.facts.nvidia.NvidiaGpus``
- ``nvidia_smi_version``: ``tasks.facts.nvidia.NvidiaSmiVersion``
- ``nvidia_fabric``: ``tasks.facts.nvidia.NvidiaFabric``
- ``ascend``: ``tasks.facts.ascend.AscendNpus``
- ``host``: ``tasks.facts.host.HostResources(model_dir)``
- ``services``: ``tasks.facts.services.LlmfleetServices`` (the other llmfleet units on the host)
- ``cpu_flags``: ``tasks.cpu_target.CpuFlags`` (``accelerator: cpu``)

Checks (a refusal makes ``go`` False; a warning does not):

- NVIDIA driver present and working (nvidia-smi missing, NVML mismatch, no GPU: refusal with the fix);
  driver >= ``preflight_min_driver`` and >= the minimum for the image's CUDA (``tasks.cuda``); the refusal
  names the host's driver and the image's CUDA requirement.
- GPU count >= tp x pp; the recipe's ``devices`` (``serve_devices``) exist on the host (an index
  >= the GPU count is a refusal naming it); MIG enabled on a GPU to be used: warning.
- Context: ``max_model_len`` <= the model's limit (``Requirement.context_limit``, see
  tasks/requirement.py; a spec above it is refused before any host is touched).
- Compute capability against dtype and FP8, as vLLM treats them: bfloat16 needs cc >= 8.0 (vLLM raises
  "Bfloat16 is only supported on GPUs with compute capability of at least 8.0"): refusal when asked
  explicitly, warning with dtype auto on a bf16 checkpoint (older releases refuse, newer fall back to
  fp16). FP8 weights: native W8A8 at cc >= 8.9; weight-only FP8 Marlin (W8A16) at cc 8.0-8.8 (warning:
  slower); vLLM's current docs list Turing (7.5) for FP8 Marlin too, older releases required 8.0 (warning);
  below 7.5 refusal. FP8 KV cache (``--kv-cache-dtype fp8``): vLLM stores K/V in fp8 and dequantizes
  in the attention kernel on any CUDA GPU it supports; only FlashAttention 3 (cc 9.0) computes attention
  in fp8; the backend choice varies by release, so below cc 8.0 it is a warning.
- Memory: ``tasks.plan`` with the smallest GPU's CUDA-visible memory (nvidia-smi total minus reserved),
  its name and compute capability (they decide vLLM's engine and defaults); a plan that cannot hold one
  ``max_model_len`` sequence is a refusal saying how many GiB are missing, unless it is short by less
  than the planner's measured error (``tasks.plan.KV_ERROR_MARGIN_GIB``, the largest KV-cache error over the
  public start-up logs of the calibration, ``tasks/data/planner-error.json``): then a warning. The report
  shows the margin and where it was measured.
  GPUs whose free memory is below the requested share (other processes on them) are a refusal, as vLLM
  refuses to start then.
- PCIe: link width below max is a warning naming the GPU; a lower link generation is a warning that says
  idle GPUs lower it to save power (recheck under load).
- NVSwitch (``nvidia_fabric.nvswitch_count`` > 0) without an active nvidia-fabricmanager at the driver's
  exact version: refusal (CUDA then fails with error 802 "system not yet initialized").
- Host: available RAM >= ``preflight_min_ram_gib``; free disk at the model dir >= weights x
  (1 + ``preflight_disk_margin``) minus what is already there; /dev/shm >= ``shm_bytes_needed``.
- Other models on the host (``services``): another llmfleet unit on the same port, on overlapping
  devices (``--gpus all`` overlaps every set), or serving the same model name is a refusal naming both
  recipes; the unit of this recipe itself is the one being updated and is not compared.
- CPU (``accelerator: cpu``): instruction set, cores and RAM for weights + KV space, see tasks/cpu_target.py.
- Ascend: NPU count >= tp x pp, ``devices`` exist; driver present (missing: refusal with install instructions; the host must
  be rebooted by its operator after installing driver and firmware: llmfleet never reboots); NPU health
  (``OK`` required, ``Warning`` a warning).

Settings (host data, prefix ``preflight_``): ``tasks.settings.preflight.PreflightSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pyinfra.api import deploy

from tasks import cuda as cudatab
from tasks.cpu_target import CpuFlags, check_cpu
from tasks.plan import (GIB, MARGIN_SOURCE, PlanInputError, PlanParams, model_dtype_bytes, plan, quant_config,
                        text_config)
from tasks.settings.preflight import PreflightSettings
from tasks.versions import version_ge
from tasks.vllm.versions import Version

DEFAULTS: dict[str, Any] = PreflightSettings.defaults()

ACCELERATORS = ("nvidia", "ascend", "cpu")


@dataclass
class Requirement:
    """What a recipe needs from a host. ``serving`` holds the memory-deciding serving parameters
    (tp, pp, dtype, ...; its ``gpu_mem_gib`` is filled per host). ``cuda_version`` "" means: derive
    it from ``vllm_version``."""

    recipe: str
    vllm_version: str
    model_config: dict
    weights_bytes: int
    model_dir: str
    serving: PlanParams = field(default_factory=PlanParams)
    gpus_needed: int = 0
    cuda_version: str = ""
    shm_bytes_needed: int = 0
    weights_present_bytes: int = 0
    accelerator: str = "nvidia"
    #: What the service will hold on the host, checked against the other llmfleet units there
    #: (``services`` fact): its port, its device indices (empty: every device) and served name.
    port: int = 0
    devices: tuple[int, ...] = ()
    served_model_name: str = ""
    context_limit: int = 0
    #: ``accelerator: cpu``: host RAM the KV cache takes (VLLM_CPU_KVCACHE_SPACE).
    cpu_kvcache_bytes: int = 0
    #: hosts the replica spans: this host holds tp x pp / nodes of its ranks (a multi-node replica)
    nodes: int = 1

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"accelerator must be one of {', '.join(ACCELERATORS)}, got {self.accelerator!r}")
        if not isinstance(self.model_config, dict) or "hidden_size" not in text_config(self.model_config):
            raise ValueError("model_config must be a parsed config.json (a dict with hidden_size)")
        if not all(isinstance(d, int) and d >= 0 for d in self.devices) or len(set(self.devices)) != len(self.devices):
            raise ValueError(f"devices must be distinct indices >= 0, got {self.devices!r}")
        for name in ("weights_bytes", "shm_bytes_needed", "weights_present_bytes", "gpus_needed", "context_limit",
                     "cpu_kvcache_bytes"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not (isinstance(self.model_dir, str) and self.model_dir.startswith("/")):
            raise ValueError(f"model_dir must be an absolute path, got {self.model_dir!r}")
        Version.parse(self.vllm_version)
        self.plan_params(1.0).validate()

    @property
    def devices_needed(self) -> int:
        return max(self.gpus_needed, self.serving.tp * self.serving.pp // max(1, self.nodes))

    def plan_params(self, gpu_mem_gib: float, cudagraph_gib: float = 0.0, gpu_name: str = "",
                    compute_capability: float = 0.0) -> PlanParams:
        """The serving parameters on a host whose GPUs have ``gpu_mem_gib`` each (and that name and
        compute capability, which decide vLLM's engine and defaults); the release is the recipe's."""
        return replace(self.serving, gpu_mem_gib=gpu_mem_gib, cudagraph_gib=cudagraph_gib, gpu_name=gpu_name,
                       compute_capability=compute_capability,
                       vllm_release=self.serving.vllm_release or self.vllm_version)


@dataclass
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail" | "info"
    detail: str


@dataclass
class Verdict:
    """Outcome of ``evaluate``: ``go``, refusals (``reasons``), ``warnings``, the memory plan, all checks."""

    recipe: str
    go: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plan: dict | None = None
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(name, status, detail))
        if status == "fail":
            self.reasons.append(f"{name}: {detail}")
            self.go = False
        elif status == "warn":
            self.warnings.append(f"{name}: {detail}")

    def table(self) -> str:
        """Console table: one row per check, then the verdict line."""
        width = max([len(c.name) for c in self.checks] + [5])
        marks = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "info": "-"}
        lines = [f"{'check'.ljust(width)}  result  detail", f"{'-' * width}  ------  {'-' * 40}"]
        for check in self.checks:
            lines.append(f"{check.name.ljust(width)}  {marks[check.status].ljust(6)}  {check.detail}")
        verdict = "GO" if self.go else f"NO-GO ({len(self.reasons)} refusal(s))"
        lines.append(f"{self.recipe}: {verdict}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def _cc(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _wants_fp8_weights(req: Requirement) -> bool:
    method, _bits, _group = quant_config(text_config(req.model_config), req.serving.quantization)
    return method == "fp8"


def _check_driver(verdict: Verdict, driver: str, req: Requirement, min_driver: str) -> None:
    cuda = req.cuda_version or cudatab.cuda_for_vllm(req.vllm_version)
    if not cuda:
        verdict.add("driver", "warn", f"driver {driver}; CUDA of vLLM {req.vllm_version} unknown "
                                      "(set the recipe's cuda_version): image requirement not checked")
        if not version_ge(driver, min_driver):
            verdict.add("driver minimum", "fail", f"host driver {driver} is older than {min_driver}")
        return
    try:
        needed = cudatab.min_driver_for_cuda(cuda)
    except ValueError as exc:
        verdict.add("driver", "warn", str(exc))
        return
    floor = needed if version_ge(needed, min_driver) else min_driver
    if version_ge(driver, floor):
        verdict.add("driver", "ok", f"{driver} >= {floor} (image CUDA {cuda} needs >= {needed})")
    else:
        verdict.add(
            "driver", "fail",
            f"host driver {driver} is older than {floor}: the image (vLLM {req.vllm_version}, CUDA {cuda}) "
            f"needs driver >= {needed}; upgrade the driver (and reboot) or pick an image built for CUDA "
            f"{cudatab.max_cuda_for_driver(driver) or 'an older release'}",
        )


def _check_nvidia(verdict: Verdict, facts: dict, req: Requirement, opts: PreflightSettings) -> float | None:
    """NVIDIA checks; returns the CUDA-visible memory (GiB) of the smallest GPU to use, or None."""
    gpus_fact = facts.get("nvidia_gpus") or {"status": "error", "message": "fact not gathered", "gpus": []}
    status = gpus_fact.get("status")
    if status == "missing":
        verdict.add("nvidia-smi", "fail", "nvidia-smi not found: install the NVIDIA driver "
                                          f"(>= {opts.preflight_min_driver}) and reboot")
        return None
    if status == "nvml_error":
        lib = gpus_fact.get("nvml_library_version")
        hint = (f"the user-space libraries are {lib} but the loaded kernel module is another version: "
                "reboot (or unload/reload the nvidia modules) after a driver update") if lib else \
            "the NVIDIA kernel module is not loaded or does not answer: check dmesg, reboot after installing"
        verdict.add("nvidia-smi", "fail", f"{gpus_fact.get('message', '').splitlines()[0]}: {hint}")
        return None
    if status == "no_gpu":
        verdict.add("nvidia-smi", "fail", "No devices were found: no NVIDIA GPU visible to the driver")
        return None
    if status != "ok":
        verdict.add("nvidia-smi", "fail", f"nvidia-smi failed: {gpus_fact.get('message')}")
        return None

    gpus = gpus_fact["gpus"]
    need = req.devices_needed
    if len(gpus) < need:
        tp, pp = req.serving.tp, req.serving.pp
        over = f" over {req.nodes} hosts" if req.nodes > 1 else ""
        verdict.add("gpu count", "fail", f"{len(gpus)} GPU(s), tp {tp} x pp {pp}{over} needs {need}")
    else:
        verdict.add("gpu count", "ok", f"{len(gpus)} GPU(s), need {need}")
    used = _devices_used(verdict, "GPU", gpus, req)

    driver = gpus[0].get("driver_version") or (facts.get("nvidia_smi_version") or {}).get("driver_version")
    if driver:
        _check_driver(verdict, driver, req, opts.preflight_min_driver)
    else:
        verdict.add("driver", "fail", "driver version not reported by nvidia-smi")

    for gpu in used:
        if gpu.get("mig_mode") == "Enabled":
            verdict.add(f"GPU{gpu['index']} MIG", "warn",
                        "MIG is enabled: the whole GPU is not available to one vLLM instance")

    ccs = [c for c in (_cc(g.get("compute_cap")) for g in used) if c is not None]
    cc = min(ccs) if ccs else None
    config = text_config(req.model_config)
    if cc is None:
        verdict.add("compute capability", "warn", "not reported; dtype/FP8 support not checked")
    else:
        bf16_config = model_dtype_bytes(config, "auto") == 2 and "bfloat16" in str(
            config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        if req.serving.dtype == "bfloat16" and cc < 8.0:
            verdict.add("dtype", "fail", f"bfloat16 needs compute capability >= 8.0, GPUs have {cc}: "
                                         "use dtype half")
        elif req.serving.dtype == "auto" and bf16_config and cc < 8.0:
            verdict.add("dtype", "warn", f"bf16 checkpoint on compute capability {cc}: vLLM releases that "
                                         "do not fall back refuse it; set dtype half")
        if _wants_fp8_weights(req):
            if cc >= 8.9:
                verdict.add("fp8 weights", "ok", f"native FP8 (W8A8) at compute capability {cc}")
            elif cc >= 8.0:
                verdict.add("fp8 weights", "warn", f"compute capability {cc} < 8.9: weight-only FP8 Marlin "
                                                   "(W8A16), slower than native FP8")
            elif cc >= 7.5:
                verdict.add("fp8 weights", "warn", f"compute capability {cc}: FP8 Marlin on Turing only in "
                                                   "recent vLLM releases (older ones need 8.0)")
            else:
                verdict.add("fp8 weights", "fail", f"FP8 weights need compute capability >= 7.5, GPUs have {cc}")
        if req.serving.kv_cache_dtype.startswith("fp8"):
            if cc >= 8.0:
                verdict.add("fp8 kv cache", "ok", f"fp8 KV storage at compute capability {cc}"
                            + (" (attention in fp8 with FlashAttention 3)" if cc >= 9.0 else ""))
            else:
                verdict.add("fp8 kv cache", "warn", f"compute capability {cc}: fp8 KV cache depends on the "
                                                    "attention backend of this vLLM release")

    for gpu in used:
        gen_cur, gen_max = gpu.get("pcie_gen_current"), gpu.get("pcie_gen_max")
        wid_cur, wid_max = gpu.get("pcie_width_current"), gpu.get("pcie_width_max")
        where = f"GPU{gpu['index']} ({gpu.get('pci_bus_id')})"
        if wid_cur is not None and wid_max is not None and wid_cur < wid_max:
            verdict.add(f"GPU{gpu['index']} PCIe", "warn",
                        f"{where} link width x{wid_cur}, max x{wid_max} (gen {gen_cur}/{gen_max}): check the "
                        "slot/riser; tensor-parallel traffic crosses it")
        elif gen_cur is not None and gen_max is not None and gen_cur < gen_max:
            verdict.add(f"GPU{gpu['index']} PCIe", "warn",
                        f"{where} link gen {gen_cur}, max gen {gen_max}: idle GPUs lower the link generation "
                        "to save power; recheck under load")

    fabric = facts.get("nvidia_fabric") or {}
    switches = int(fabric.get("nvswitch_count") or 0)
    if switches:
        active, fm_version = fabric.get("fabricmanager_active"), fabric.get("fabricmanager_version")
        if active != "active":
            verdict.add("fabric manager", "fail",
                        f"{switches} NVSwitch(es) and nvidia-fabricmanager is {active or 'not installed'}: "
                        f"CUDA fails with error 802; install nvidia-fabricmanager {driver} (same version as "
                        "the driver) and enable its service")
        elif driver and fm_version != driver:
            verdict.add("fabric manager", "fail",
                        f"nvidia-fabricmanager {fm_version} does not match driver {driver}: it must be the "
                        "same version")
        else:
            verdict.add("fabric manager", "ok", f"{switches} NVSwitch(es), fabric manager {fm_version} active")

    mems = []
    for gpu in used:
        total, used_mib, free = gpu.get("memory_total_mib"), gpu.get("memory_used_mib"), gpu.get("memory_free_mib")
        if total is None:
            continue
        reserved = total - used_mib - free if used_mib is not None and free is not None else 0
        mems.append((gpu, (total - max(reserved, 0)) / 1024.0))
    if not mems:
        verdict.add("gpu memory", "fail", "memory.total not reported")
        return None
    smallest = min(mem for _gpu, mem in mems)
    utilization = req.serving.gpu_memory_utilization
    requested = smallest * utilization
    for gpu, _mem in mems:
        free = gpu.get("memory_free_mib")
        if free is not None and free / 1024.0 < requested:
            verdict.add(f"GPU{gpu['index']} free memory", "fail",
                        f"{free} MiB free ({gpu.get('memory_used_mib')} MiB used by other processes), "
                        f"{requested:.2f} GiB requested (gpu_memory_utilization {utilization})")
    return smallest


def _check_ascend(verdict: Verdict, facts: dict, req: Requirement) -> float | None:
    npu = facts.get("ascend") or {"status": "missing", "npus": []}
    status = npu.get("status")
    if status == "missing":
        verdict.add("ascend driver", "fail",
                    "no npu-smi and no /usr/local/Ascend/driver/version.info: install the Ascend NPU driver "
                    "and firmware (Ascend-hdk-<chip>-npu-driver_<ver>_linux-<arch>.run --full "
                    "--install-for-all, then Ascend-hdk-<chip>-npu-firmware_<ver>.run --full) and have the "
                    "host rebooted by its operator (llmfleet never reboots hosts)")
        return None
    if status != "ok":
        verdict.add("ascend driver", "fail",
                    f"npu-smi: {npu.get('message')} (after installing driver and firmware the host must be "
                    "rebooted; llmfleet never reboots hosts)")
        return None
    verdict.add("ascend driver", "ok", f"driver {npu.get('driver_version') or 'unknown'}, "
                                       f"npu-smi {npu.get('npu_smi_version')}")
    verdict.add("cann (host)", "info", npu.get("cann_version") or "not installed (the vllm-ascend image has its own)")
    npus = npu.get("npus") or []
    need = req.devices_needed
    if len(npus) < need:
        tp, pp = req.serving.tp, req.serving.pp
        over = f" over {req.nodes} hosts" if req.nodes > 1 else ""
        verdict.add("npu count", "fail", f"{len(npus)} NPU(s), tp {tp} x pp {pp}{over} needs {need}")
    else:
        verdict.add("npu count", "ok", f"{len(npus)} NPU(s), need {need}")
    used = _devices_used(verdict, "NPU", npus, req)
    for dev in used:
        health = dev.get("health")
        if health == "OK":
            continue
        status = "warn" if health == "Warning" else "fail"
        verdict.add(f"NPU{dev.get('index')} health", status, f"health {health} ({dev.get('bus_id')})")
    totals = [(d["hbm_total_mb"] - 0) / 1024.0 for d in used if d.get("hbm_total_mb")]
    return min(totals) if totals else None


def _devices_used(verdict: Verdict, kind: str, found: list[dict], req: Requirement) -> list[dict]:
    """The devices the service will use: ``req.devices`` (each must exist), else the first ones."""
    first = tuple(range(req.devices_needed))
    if not req.devices or (req.devices == first and len(found) < len(first)):
        return found[:req.devices_needed]  # too few devices: the count check has said so
    absent = [d for d in req.devices if d >= len(found)]
    listed = ", ".join(map(str, req.devices))
    if absent:
        verdict.add("devices", "fail", f"serve_devices [{listed}]: {kind}{', '.join(map(str, absent))} not on this "
                                       f"host, it has {len(found)} {kind}(s) (allowed indices 0-{len(found) - 1})"
                    if found else f"serve_devices [{listed}]: this host has no {kind}")
    else:
        verdict.add("devices", "ok", f"{kind} {listed} of {len(found)}")
    return [found[d] for d in req.devices if d < len(found)]


def _check_context(verdict: Verdict, req: Requirement) -> None:
    length = req.serving.max_model_len
    if not req.context_limit:
        verdict.add("context", "info", f"max_model_len {length or 'default'}; the model's limit is not known")
    elif length and length > req.context_limit:
        verdict.add("context", "fail", f"max_model_len {length} > the model's limit {req.context_limit}: vLLM exits")
    else:
        verdict.add("context", "ok", f"max_model_len {length or 'default'} <= {req.context_limit}")


def _check_host(verdict: Verdict, facts: dict, req: Requirement, opts: PreflightSettings) -> None:
    host = facts.get("host") or {}
    if not host:
        verdict.add("host", "fail", "host resources not gathered")
        return
    avail = host.get("mem_available_bytes")
    min_ram = opts.preflight_min_ram_gib * GIB
    if avail is None:
        verdict.add("ram", "warn", "MemAvailable not reported")
    elif avail < min_ram:
        verdict.add("ram", "fail", f"{_gib(avail)} available, {_gib(min_ram)} required")
    else:
        verdict.add("ram", "ok", f"{_gib(avail)} available of {_gib(host.get('mem_total_bytes') or 0)}")

    disk = host.get("disk")
    need = max(0, math.ceil(req.weights_bytes * (1 + opts.preflight_disk_margin)) - req.weights_present_bytes)
    if not disk:
        verdict.add("disk", "fail", f"free space at {req.model_dir} not reported")
    elif disk["free_bytes"] < need:
        verdict.add("disk", "fail", f"{_gib(disk['free_bytes'])} free at {host.get('disk_path')} "
                                    f"(filesystem of {req.model_dir}), {_gib(need)} needed "
                                    f"(weights {_gib(req.weights_bytes)} + {opts.preflight_disk_margin:.0%})")
    else:
        verdict.add("disk", "ok", f"{_gib(disk['free_bytes'])} free at {host.get('disk_path')}, {_gib(need)} needed")

    shm = host.get("shm")
    if req.shm_bytes_needed:
        if not shm:
            verdict.add("shm", "fail", f"/dev/shm not mounted, {_gib(req.shm_bytes_needed)} needed")
        elif shm["total_bytes"] < req.shm_bytes_needed:
            verdict.add("shm", "fail", f"/dev/shm is {_gib(shm['total_bytes'])}, {_gib(req.shm_bytes_needed)} "
                                       "needed for tensor parallel: enlarge it or run the container with "
                                       "--ipc=host / a larger --shm-size")
        else:
            verdict.add("shm", "ok", f"/dev/shm {_gib(shm['total_bytes'])}")
    os_info = host.get("os") or {}
    verdict.add("os", "info", os_info.get("pretty_name") or "unknown")
    docker = host.get("docker_package")
    verdict.add("docker", "info", f"{docker} {host.get('docker_version')}" if docker
                else "docker on PATH, not from a package" if host.get("docker_cli") else "not installed")
    if req.accelerator == "nvidia":
        verdict.add("nvidia-ctk", "info", host.get("nvidia_ctk_version") or "not installed")


def evaluate(facts: dict, req: Requirement, options: PreflightSettings | None = None) -> Verdict:
    """Go / no-go for serving ``req`` on the host described by ``facts``; pure, no I/O.

    + facts: dict of fact values (keys in the module docstring)
    + req: the recipe's Requirement
    + options: the host's ``preflight_*`` settings (None: the defaults)
    """
    req.validate()
    opts = options or PreflightSettings()
    verdict = Verdict(recipe=req.recipe, go=True)
    _check_context(verdict, req)
    if req.accelerator == "nvidia":
        mem_gib = _check_nvidia(verdict, facts, req, opts)
    elif req.accelerator == "cpu":
        mem_gib = None  # no GPU memory plan: the KV cache is a fixed space of host RAM
        check_cpu(verdict, facts, req, opts)
    else:
        mem_gib = _check_ascend(verdict, facts, req)
    if mem_gib is not None:
        # vLLM's engine and defaults depend on the GPU's name and compute capability (tasks/plan_profile.py)
        gpu = ((facts.get("nvidia_gpus") or {}).get("gpus") or [{}])[0] if req.accelerator == "nvidia" else {}
        try:
            result = plan(req.model_config, req.plan_params(
                mem_gib, opts.preflight_cudagraph_gib, str(gpu.get("name") or ""),
                _cc(gpu.get("compute_cap")) or 0.0))
        except PlanInputError as exc:
            verdict.add("memory plan", "fail", str(exc))
        else:
            verdict.plan = result.to_dict()
            margin = f" (planner error +/-{result.margin_gib:.2f} GiB/GPU: {MARGIN_SOURCE})"
            if result.ok:
                verdict.add("memory plan", "ok",
                            f"weights {result.weights_gib_per_gpu:.2f} GiB/GPU, KV {result.kv_cache_gib_per_gpu:.2f}"
                            f" GiB/GPU = {result.kv_cache_tokens:,} tokens, {result.max_concurrency:.2f}x at "
                            f"{result.max_model_len:,}{margin}")
            elif result.short_within_margin:
                verdict.add("memory plan", "warn", f"{result.error}; within the planner's error{margin}: "
                                                   "vLLM may start, with little KV cache")
            else:
                verdict.add("memory plan", "fail", (result.error or "does not fit") + margin)
    _check_host(verdict, facts, req, opts)
    _check_neighbours(verdict, facts.get("services"), req)
    return verdict


def _check_neighbours(verdict: Verdict, services: dict | None, req: Requirement) -> None:
    """Refuse a recipe whose port, devices or served name another llmfleet unit on the host holds."""
    if services is None:
        return
    mine = set(req.devices)
    clashes = []
    for other in sorted(services.values(), key=lambda s: s["recipe"]):
        if other["recipe"] == req.recipe:
            continue
        unit = f"llmfleet-{other['recipe']}.service"
        if req.port and req.port in other["ports"]:
            clashes.append(f"port {req.port} is held by recipe {other['recipe']} ({unit})")
        theirs = other["devices"]
        if theirs == "all" or (theirs is not None and not mine):
            clashes.append(f"devices: {req.recipe} wants {sorted(mine) if mine else 'every device'}, recipe "
                           f"{other['recipe']} ({unit}) holds {'every device' if theirs == 'all' else theirs}; "
                           "give each model its own serve_devices")
        elif theirs is not None and mine & set(theirs):
            clashes.append(f"devices {sorted(mine & set(theirs))} are held by recipe {other['recipe']} ({unit})")
        if req.served_model_name and req.served_model_name == other["served_model_name"]:
            clashes.append(f"served model name {req.served_model_name!r} is served by recipe {other['recipe']} "
                           f"({unit}) too: verification and status could not tell them apart")
    if clashes:
        verdict.add("other models", "fail", f"{req.recipe} cannot share this host: " + "; ".join(clashes))
    elif services:
        verdict.add("other models", "ok", ", ".join(sorted(s["recipe"] for s in services.values()
                                                           if s["recipe"] != req.recipe)) or "none")


# --- pyinfra deploy ---------------------------------------------------------------------------------------

def gather_facts(host: Any, req: Requirement) -> dict:
    """Gather the facts ``evaluate`` reads, in one round trip."""
    from tasks.facts.ascend import AscendNpus
    from tasks.facts.host import HostResources
    from tasks.facts.nvidia import NvidiaFabric, NvidiaGpus
    from tasks.facts.services import LlmfleetServices
    from tasks.facts.together import Together

    wanted: dict[str, tuple] = {"host": (HostResources, {"path": req.model_dir}), "services": (LlmfleetServices, {})}
    if req.accelerator == "nvidia":
        wanted.update(nvidia_gpus=(NvidiaGpus, {}), nvidia_fabric=(NvidiaFabric, {}))
    elif req.accelerator == "cpu":
        wanted["cpu_flags"] = (CpuFlags, {})
    else:
        wanted["ascend"] = (AscendNpus, {})
    return dict(zip(wanted, host.get_fact(Together, facts=tuple(wanted.values()))))


def verdict_of(host: Any, req: Requirement) -> tuple[dict, Verdict]:
    """``host``'s facts (one round trip, cached by pyinfra) and their verdict for ``req`` under its settings:
    what :func:`preflight` decides on, for a host that is not the current one too
    (``tasks.preflight_replica.member_refusals``)."""
    facts = gather_facts(host, req)
    return facts, evaluate(facts, req, PreflightSettings.of(host))


def write_report(report_dir: str, host_name: str, facts: dict, verdict: Verdict) -> str:
    """Write ``<report_dir>/<host>.json`` on the control machine (facts + verdict); return its path."""
    from pathlib import Path

    safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in host_name)
    path = Path(report_dir) / f"{safe}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"host": host_name, "verdict": json.loads(verdict.to_json()), "facts": facts}
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return str(path)


@deploy("Preflight", data_defaults=DEFAULTS)
def preflight(requirement: Requirement) -> bool:
    """
    Gather a host's facts once, evaluate them against a recipe's requirement, print the check table,
    write ``<preflight_report_dir>/<host>.json`` on the control machine, and fail the host on no-go.

    Runs at plan time (it only reads facts and writes the local report; no operation is added), so the
    verdict also shows under ``--dry``. A failed host is dropped from the rest of the deploy.

    + requirement: ``Requirement`` of the recipe to check

    Returns whether the host may go on (callers add no further operations for a refused host).

    **Example:**

    .. code:: python

        from tasks.plan import PlanParams
        from tasks.preflight import Requirement, preflight
        preflight(Requirement(recipe="qwen3-30b-a3b", vllm_version="0.8.5", model_config=cfg,
                              weights_bytes=61_100_000_000, model_dir="/srv/models/qwen3-30b-a3b",
                              serving=PlanParams(tp=4)))
    """
    from pyinfra import logger
    from pyinfra.context import ctx_host

    host = ctx_host.get()  # the Host itself, not the context proxy: state.fail_hosts keys on it

    facts, verdict = verdict_of(host, requirement)
    path = write_report(PreflightSettings.of(host).preflight_report_dir, host.name, facts, verdict)
    text = "\n".join(f"{host.print_prefix}{line}" for line in verdict.table().splitlines())
    logger.info(f"{text}\n{host.print_prefix}report: {path}")
    if not verdict.go:
        logger.error(f"{host.print_prefix}preflight refused {requirement.recipe}: " + "; ".join(verdict.reasons))
        host.state.fail_hosts({host})
    return verdict.go
