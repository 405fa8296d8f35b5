import pytest

from tasks import cuda, versions


def test_min_driver_for_cuda_uses_design_table():
    assert cuda.min_driver_for_cuda("12.4") == "550.54.14"
    assert cuda.min_driver_for_cuda("12.8.1") == "570.26"
    assert cuda.min_driver_for_cuda("cu130") == "580.65.06"


def test_min_driver_unknown_cuda_names_it():
    with pytest.raises(ValueError, match="11.2"):
        cuda.min_driver_for_cuda("11.2")


@pytest.mark.parametrize("vllm, expected", [
    ("0.8.5", "12.4"), ("v0.7.3", "12.4"), ("0.9.2", "12.6"), ("0.10.1", "12.8"), ("0.19.0", "12.8"),
    ("0.22.0", "13.0"), ("0.33.0", "13.0"), ("0.7.0", None), ("0.20.0", "13.0"), ("0.9.0rc1", "12.6"),
    ("0.8.5.post1", "12.4"),
])
def test_cuda_for_vllm(vllm, expected):
    assert cuda.cuda_for_vllm(vllm) == expected


def test_version_compare_pads_and_orders_numerically():
    assert versions.version_ge("570.153.02", "570.26")
    assert not versions.version_ge("550.144.03", "550.154")
    assert versions.version_ge("580", "580.0.0")
    assert not versions.version_ge("530.30.02", "535")


def test_max_cuda_for_driver():
    assert cuda.max_cuda_for_driver("550.144.03") == "12.4"
    assert cuda.max_cuda_for_driver("580.159.04") == "13.0"
    assert cuda.max_cuda_for_driver("470.1") is None


def test_parse_version_rejects_text():
    with pytest.raises(ValueError, match="latest"):
        versions.Version.parse("latest")
    with pytest.raises(ValueError, match="needs major.minor"):
        cuda.cuda_major_minor("12")


def test_driver_and_vllm_versions_share_one_parser():
    assert versions.Version.parse("580").release == (580, 0, 0, 0)
    assert versions.Version.parse("12.4.1").parts == 3
    assert versions.version_ge("0.11.0", "0.11.0rc3") and not versions.version_ge("0.11.0rc3", "0.11.0")
