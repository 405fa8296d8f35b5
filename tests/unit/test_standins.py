"""Lab stand-ins: byte-identical to real nvidia-smi on the captured H100 host; parsed by our own facts."""

import json
import os
import stat
import subprocess
import sys

import pytest

from tests.unit.conftest import STANDINS, real_fixture, run_sh

from tasks.facts.ascend import parse_npu_smi_info
from tasks.facts.nvidia import NvidiaFabric, NvidiaGpus, NvidiaSmiVersion, QUERY_FIELDS
from tasks.lab.profiles import PROFILES, device_binds, enabled_units, host_files, profile

QUERY = "--query-gpu=" + ",".join(QUERY_FIELDS)


def smi(tmp_path, prof: dict, *args: str, tool: str = "nvidia_smi.py") -> tuple[str, int]:
    path = tmp_path / "accelerators.json"
    path.write_text(json.dumps(prof))
    env = {**os.environ, "LLMFLEET_STANDIN_PROFILE": str(path)}
    done = subprocess.run([sys.executable, str(STANDINS / tool), *args], capture_output=True, text=True,
                          env=env, timeout=30)
    return done.stdout, done.returncode


@pytest.mark.parametrize("args, fixture", [
    ((QUERY, "--format=csv,noheader,nounits"), "query-gpu-noheader-nounits.csv"),
    ((QUERY, "--format=csv"), "query-gpu.csv"),
    (("--version",), "version.txt"),
    (("-L",), "L.txt"),
    ((), "plain.txt"),
])
def test_h100x1_byte_identical_to_real_fixture(tmp_path, args, fixture):
    out, rc = smi(tmp_path, PROFILES["h100x1"], *args)
    assert rc == 0
    assert out == real_fixture(fixture)


def test_unknown_field_like_real_tool(tmp_path):
    out, rc = smi(tmp_path, PROFILES["h100x1"], "--query-gpu=index,bogus", "--format=csv")
    expected = real_fixture("bad_query.txt")  # the capture notes the exit status on its last line
    assert out + f"rc={rc}\n" == expected


def test_subset_and_order_of_fields(tmp_path):
    out, rc = smi(tmp_path, PROFILES["rtx4090x2"], "--query-gpu=pcie.link.width.current,index,memory.total,mig.mode.current",
                  "--format=csv")
    assert rc == 0
    assert out.splitlines() == [
        "pcie.link.width.current, index, memory.total [MiB], mig.mode.current",
        "16, 0, 24564 MiB, [N/A]",
        "4, 1, 24564 MiB, [N/A]",
    ]


def test_states_exit_codes_and_text(tmp_path):
    mismatch = {**PROFILES["rtx4090x8"], "state": "nvml_mismatch", "nvml_library_version": "570.172"}
    out, rc = smi(tmp_path, mismatch, QUERY, "--format=csv,noheader,nounits")
    assert (out, rc) == ("Failed to initialize NVML: Driver/library version mismatch\n"
                         "NVML library version: 570.172\n", 18)
    out, rc = smi(tmp_path, {**PROFILES["rtx4090x8"], "state": "no_gpu"}, "-L")
    assert (out, rc) == ("No devices were found\n", 6)


@pytest.mark.parametrize("name", [n for n, p in PROFILES.items() if p["kind"] == "nvidia"])
def test_every_nvidia_profile_parses_with_our_facts(tmp_path, name):
    prof = PROFILES[name]
    out, rc = smi(tmp_path, prof, QUERY, "--format=csv,noheader,nounits")
    fact = NvidiaGpus().process(out.splitlines() + [f"LLMFLEET_RC={rc}"])
    assert fact["status"] == "ok"
    assert [g["name"] for g in fact["gpus"]] == [g["name"] for g in prof["gpus"]]
    assert {g["driver_version"] for g in fact["gpus"]} == {prof["driver_version"]}
    for gpu, spec in zip(fact["gpus"], prof["gpus"]):
        assert gpu["memory_free_mib"] == spec["memory_total_mib"] - spec["memory_reserved_mib"]
        assert gpu["compute_cap"] == spec["compute_cap"]
    out, rc = smi(tmp_path, prof, "--version")
    assert NvidiaSmiVersion().process(out.splitlines())["cuda_version"] == prof["cuda_version"]
    table, rc = smi(tmp_path, prof)
    assert rc == 0 and all(len(line) == 91 for line in table.splitlines()[1:] if line.strip())


def test_profiles_required_values():
    assert PROFILES["rtx4090x8"]["driver_version"] == "550.144.03" and len(PROFILES["rtx4090x8"]["gpus"]) == 8
    assert PROFILES["gpu22gx4"]["gpus"][0]["memory_total_mib"] == 22528
    assert PROFILES["rtx4090x2"]["gpus"][1]["pcie_width_current"] == 4
    assert PROFILES["h100x8"]["cuda_version"] == "13.0" and PROFILES["h100x8"]["nvswitches"] == 4
    assert PROFILES["rtx4090-drv530"]["driver_version"] == "530.30.02"
    assert PROFILES["ascend910b"]["driver_version"] == "24.1.rc2"
    with pytest.raises(ValueError, match="unknown lab profile 'a100'"):
        profile("a100")


def test_host_files_and_binds_h100x8(tmp_path):
    files = host_files("h100x8")
    content, mode = files["/etc/llmfleet-standin/accelerators.json"]
    assert json.loads(content) == PROFILES["h100x8"] and mode == 0o644
    assert files["/usr/bin/nvidia-smi"][1] == 0o755
    assert b"stand-in" in files["/etc/llmfleet-standin/README"][0]
    assert "ExecStart=/usr/bin/nv-fabricmanager" in files["/etc/systemd/system/nvidia-fabricmanager.service"][0].decode()
    script = tmp_path / "nv-fabricmanager"
    script.write_bytes(files["/usr/bin/nv-fabricmanager"][0])
    script.chmod(stat.S_IRWXU)
    lines, _ = run_sh(f"{script} --version")
    fact = NvidiaFabric().process([f"fm_version={' '.join(lines)}", "nvswitch_dev=4", "fm_active=active"])
    assert fact["fabricmanager_version"] == "580.159.04" and fact["nvswitch_count"] == 4
    binds = device_binds("h100x8")
    assert [b for b in binds if b.startswith("/dev/nvidia-nvswitch") and b[-1].isdigit()] == \
        [f"/dev/nvidia-nvswitch{i}" for i in range(4)]
    assert "/dev/nvidia7" in binds and "/dev/nvidiactl" in binds
    assert enabled_units("h100x8") == ["nvidia-fabricmanager.service"]


def test_host_files_ascend_and_cpu():
    files = host_files("ascend910b")
    assert files["/usr/local/Ascend/driver/version.info"][0].startswith(b"Version=24.1.rc2\n")
    assert files["/usr/local/bin/npu-smi"][1] == 0o755
    assert "/usr/bin/nvidia-smi" not in files
    assert device_binds("ascend910b")[-3:] == ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
    cpu = host_files("cpu")
    assert set(cpu) == {"/etc/llmfleet-standin/accelerators.json", "/etc/llmfleet-standin/README"}
    assert device_binds("cpu") == [] and enabled_units("cpu") == []


def test_npu_smi_table_parses(tmp_path):
    out, rc = smi(tmp_path, PROFILES["ascend910b"], "info", tool="npu_smi.py")
    assert rc == 0
    version, npus = parse_npu_smi_info(out.splitlines())
    assert version == "24.1.rc2" and len(npus) == 8
    assert npus[7] == {"index": 7, "name": "910B3", "health": "OK", "power_w": 102.0, "temp_c": 43.0, "chip": 0,
                       "phy_id": None, "bus_id": "0000:42:00.0", "aicore_pct": 0.0, "hbm_used_mb": 3314,
                       "hbm_total_mb": 65536}
    assert all(len(line) == 98 for line in out.splitlines())


def test_standins_are_stdlib_only():
    for tool in ("nvidia_smi.py", "npu_smi.py"):
        text = (STANDINS / tool).read_text()
        assert "stand-in" in text.split('"""')[1]
        imports = {line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))}
        assert imports <= {"json", "os", "sys", "time"}
