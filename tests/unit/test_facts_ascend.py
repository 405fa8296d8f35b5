from tests.unit.conftest import HERE

from tasks.facts.ascend import AscendNpus, parse_key_values, parse_npu_smi_info


def test_parse_a3_layout_with_phy_id_dash_power_and_process_rows():
    lines = (HERE / "npu-smi" / "info-a3-phyid.txt").read_text().splitlines()
    version, npus = parse_npu_smi_info(lines)
    assert version == "25.3.rc1"
    assert [(n["index"], n["chip"], n["phy_id"]) for n in npus] == [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)]
    assert npus[1]["power_w"] is None
    assert npus[2]["health"] == "Warning"
    assert (npus[2]["hbm_used_mb"], npus[2]["hbm_total_mb"]) == (40112, 65536)
    assert npus[3]["bus_id"] == "0000:9B:00.0"


def test_process_combines_sections():
    smi = (HERE / "npu-smi" / "info-a3-phyid.txt").read_text().splitlines()
    output = (["LLMFLEET_SECTION=npu_smi"] + smi + ["LLMFLEET_RC=0", "LLMFLEET_SECTION=driver",
              "Version=24.1.rc2", "ascendhal_version=7.35.23", "LLMFLEET_SECTION=cann",
              "llmfleet_path=/usr/local/Ascend/ascend-toolkit/latest/aarch64-linux/ascend_toolkit_install.info",
              "package_name=Ascend-cann-toolkit", "version=8.0.RC3", "LLMFLEET_SECTION=devices", "16"])
    fact = AscendNpus().process(output)
    assert fact["status"] == "ok"
    assert len(fact["npus"]) == 4
    assert fact["driver_version"] == "24.1.rc2"
    assert fact["cann_version"] == "8.0.RC3"
    assert fact["cann_info_path"].endswith("aarch64-linux/ascend_toolkit_install.info")
    assert fact["davinci_devices"] == 16


def test_missing_driver_and_tool():
    output = ["LLMFLEET_SECTION=npu_smi", "LLMFLEET_NO_NPU_SMI", "LLMFLEET_SECTION=driver",
              "LLMFLEET_SECTION=cann", "LLMFLEET_SECTION=devices", "0"]
    fact = AscendNpus().process(output)
    assert fact["status"] == "missing" and fact["driver_version"] is None and fact["npus"] == []


def test_driver_not_loaded_is_error_with_text():
    output = ["LLMFLEET_SECTION=npu_smi", "dcmi module initialize failed. ret is -8005", "LLMFLEET_RC=1",
              "LLMFLEET_SECTION=driver", "Version=24.1.rc2", "LLMFLEET_SECTION=cann",
              "LLMFLEET_SECTION=devices", "0"]
    fact = AscendNpus().process(output)
    assert fact["status"] == "error" and "dcmi module initialize failed" in fact["message"]
    assert fact["driver_version"] == "24.1.rc2"


def test_key_values_ignore_noise():
    assert parse_key_values(["Version=24.1.rc1", "garbage", "=x", "a = b "]) == {"Version": "24.1.rc1", "a": "b"}
