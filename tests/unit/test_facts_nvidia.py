"""NvidiaGpus / NvidiaSmiVersion / NvidiaFabric on real nvidia-smi outputs."""

from tests.unit.conftest import HERE, real_fixture, run_sh

from tasks.facts.nvidia import NvidiaFabric, NvidiaGpus, NvidiaSmiVersion, QUERY_FIELDS


def _lines(name: str) -> list[str]:
    return (HERE / "nvidia-smi" / name).read_text().splitlines()


def test_query_fields_match_real_fixture_header():
    header = real_fixture("query-gpu.csv").splitlines()[0]
    names = [cell.split(" [")[0] for cell in header.split(", ")]
    assert tuple(names) == QUERY_FIELDS
    assert "--query-gpu=" + ",".join(QUERY_FIELDS) in NvidiaGpus().command()


def test_gpus_real_h100_fixture():
    lines = real_fixture("query-gpu-noheader-nounits.csv").splitlines() + ["LLMFLEET_RC=0"]
    fact = NvidiaGpus().process(lines)
    assert fact["status"] == "ok"
    assert fact["gpus"] == [{
        "index": 0, "name": "NVIDIA H100 80GB HBM3", "driver_version": "580.159.04",
        "memory_total_mib": 81559, "memory_used_mib": 0, "memory_free_mib": 81079,
        "pci_bus_id": "00000000:00:06.0", "pcie_gen_current": 5, "pcie_gen_max": 5,
        "pcie_width_current": 16, "pcie_width_max": 16, "compute_cap": "9.0",
        "persistence_mode": "Enabled", "mig_mode": "Disabled",
    }]


def test_gpus_mig_enabled_and_not_available_cells():
    fact = NvidiaGpus().process(_lines("mig_and_na.out"))
    assert fact["status"] == "ok"
    h100, idle, unsupported = fact["gpus"]
    assert h100["mig_mode"] == "Enabled"
    assert idle["mig_mode"] is None and idle["pcie_gen_current"] == 1 and idle["pcie_gen_max"] == 4
    assert unsupported["pcie_gen_current"] is None and unsupported["pcie_width_max"] is None
    assert unsupported["compute_cap"] == "8.9"


def test_gpus_no_devices():
    fact = NvidiaGpus().process(_lines("no_devices.out"))
    assert fact["status"] == "no_gpu" and fact["gpus"] == [] and fact["rc"] == 6


def test_gpus_nvml_mismatch_keeps_library_version():
    fact = NvidiaGpus().process(_lines("nvml_mismatch.out"))
    assert fact["status"] == "nvml_error"
    assert fact["nvml_library_version"] == "580.159"
    assert fact["message"].startswith("Failed to initialize NVML: Driver/library version mismatch")


def test_gpus_driver_not_loaded():
    fact = NvidiaGpus().process(_lines("no_driver.out"))
    assert fact["status"] == "nvml_error" and "nvml_library_version" not in fact
    assert "couldn't communicate with the NVIDIA driver" in fact["message"]


def test_gpus_missing_tool():
    assert NvidiaGpus().process(_lines("missing.out"))["status"] == "missing"


def test_gpus_bad_query_is_error_with_text():
    text = real_fixture("bad_query.txt").split("rc=")[0].splitlines()
    fact = NvidiaGpus().process(text + ["LLMFLEET_RC=2"])
    assert fact["status"] == "error"
    assert fact["message"] == 'Field "bogus" is not a valid field to query.'


def test_gpus_command_guard_runs_without_nvidia_smi(tmp_path):
    lines, rc = run_sh(NvidiaGpus().command(), env={"PATH": str(tmp_path)})
    assert rc == 0
    assert NvidiaGpus().process(lines)["status"] == "missing"


def test_smi_version_real_fixture():
    lines = real_fixture("version.txt").splitlines() + ["LLMFLEET_RC=0"]
    assert NvidiaSmiVersion().process(lines) == {
        "smi_version": "580.159.04", "nvml_version": "580.159",
        "driver_version": "580.159.04", "cuda_version": "13.0",
    }


def test_smi_version_absent_or_failing():
    assert NvidiaSmiVersion().process(["LLMFLEET_NO_NVIDIA_SMI"]) is None
    assert NvidiaSmiVersion().process(_lines("nvml_mismatch.out")) is None


def test_fabric_parses_counts_state_and_version():
    fact = NvidiaFabric().process([
        "nvswitch_dev=0", "nvswitch_pci=4", "fm_active=active",
        "fm_version=Fabric Manager version is : 580.159.04 ",
    ])
    assert fact == {"nvswitch_count": 4, "fabricmanager_active": "active",
                    "fabricmanager_version": "580.159.04"}


def test_fabric_command_on_this_machine_reports_no_switch():
    lines, rc = run_sh(NvidiaFabric().command())
    assert rc == 0
    fact = NvidiaFabric().process(lines)
    assert fact["nvswitch_count"] == 0 and fact["fabricmanager_version"] is None
    # No switch: the Fabric Manager is not asked about.
    assert not any(line.startswith(("fm_active=", "fm_version=")) for line in lines)
