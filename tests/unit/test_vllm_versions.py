"""Version parsing, the flag table and the vLLM facts in tasks/vllm/versions.py."""

import pytest

from tasks.vllm import versions as vv
from tasks.vllm.versions import Version


@pytest.mark.parametrize("text,release,stage,rc,post", [
    ("v0.8.5.post1", (0, 8, 5, 0), 1, 0, 1),
    ("0.10.1.1", (0, 10, 1, 1), 1, 0, 0),
    ("v0.11.0rc3", (0, 11, 0, 0), 0, 3, 0),
    ("0.9", (0, 9, 0, 0), 1, 0, 0),
])
def test_parse(text, release, stage, rc, post):
    v = Version.parse(text)
    assert (v.release, v.stage, v.rc, v.post) == (release, stage, rc, post)
    assert str(v) == text.lstrip("v")


@pytest.mark.parametrize("bad", ["latest", "0", "v1.x", "0.8.5-post1", ""])
def test_parse_rejects(bad):
    with pytest.raises(ValueError):
        Version.parse(bad)


def test_ordering():
    seq = ["0.8.5rc1", "0.8.5", "0.8.5.post1", "0.9.0", "0.10.1", "0.10.1.1", "0.11.0rc3", "0.11.0"]
    parsed = [Version.parse(s) for s in seq]
    assert parsed == sorted(parsed)
    assert Version.parse("0.10.0") == Version.parse("v0.10")


@pytest.mark.parametrize("tag,expected", [
    ("v0.17.1-cu130", "0.17.1"), ("v0.8.5.post1", "0.8.5.post1"), ("0.11.0rc3-a3", "0.11.0rc3"),
    ("v0.10.1.1", "0.10.1.1"), ("glm5", None), ("latest", None), ("v0.18.0-transformers5.4.0", "0.18.0"),
])
def test_version_from_tag(tag, expected):
    got = vv.version_from_tag(tag)
    assert (str(got) if got else None) == expected


def test_flag_table_loads_every_release():
    table = vv.load_flag_table()
    assert table.releases[0] == Version.parse("0.7.0") and table.newest == Version.parse("0.33.0")
    tsv = vv.parse_flag_table(vv.FLAG_TABLE_PATH.read_text())
    assert len(tsv.releases) == 34
    # harvested releases are listed too (0.10.1.1 is no column of the TSV)
    assert set(table.releases) == set(tsv.releases) | set(table.harvests)
    assert table.listed_release("0.10.1.1") == Version.parse("0.10.1.1")
    assert table.flags["--model"] == frozenset(tsv.releases)
    assert all("--model" in table.flags_for(r) for r in table.releases)


@pytest.mark.parametrize("version,flag,present", [
    ("0.8.5.post1", "--enable-reasoning", True),   # nearest listed: 0.8.5
    ("0.10.1.1", "--enable-reasoning", False),     # harvested: its own parser
    ("0.11.0rc3", "--max-seq-len-to-capture", True),  # rc precedes 0.11.0 -> 0.10.2's flags
    ("0.11.0", "--max-seq-len-to-capture", False),
    ("0.13.5", "--attention-backend", True),
    ("0.12.0", "--attention-backend", False),
    ("0.16.9", "--disable-log-requests", True),
    ("0.17.0", "--disable-log-requests", False),
    ("0.40.0", "--hf-overrides", True),            # newer than the table: its last release
])
def test_flags_for_nearest_release(version, flag, present):
    assert (flag in vv.flags_for(version)) is present


def test_flags_for_too_old():
    with pytest.raises(ValueError, match="older than the flag table"):
        vv.flags_for("0.6.6")


def test_removals_agree_with_flag_table():
    """Each removal fact must match the table: present just before, absent from removed_in."""
    table = vv.load_flag_table()
    for flag, removal in vv.REMOVED_FLAGS.items():
        if flag not in table.flags:  # --tokenizer-pool-type: a DESIGN fact without a table row
            continue
        before = max(r for r in table.releases if r < removal.removed_in)
        assert table.has(before, flag), flag
        assert not table.has(removal.removed_in, flag), flag


def test_parsers():
    assert vv.parser_available("reasoning", "deepseek_r1", "0.7.1")
    assert not vv.parser_available("reasoning", "qwen3", "0.8.5.post1")
    assert vv.parser_available("reasoning", "qwen3", "0.9.0")
    assert not vv.parser_available("tool", "glm47", "0.13.0")
    assert vv.parser_available("tool", "glm47", "0.14.0")
    assert vv.parsers_available("tool", "0.10.0") == ["hermes", "qwen3_coder"]
    assert not vv.parser_available("tool", "nonexistent", "0.30.0")


@pytest.mark.parametrize("version,tag,cuda", [
    ("0.7.3", None, "12.4"), ("0.8.5.post1", None, "12.4"), ("0.9.2", None, "12.6"),
    ("0.10.1.1", None, "12.8"), ("0.19.0", None, "12.8"), ("0.20.0", None, "13.0"),
    ("0.21.0", None, "13.0"), ("0.22.0", None, "13.0"), ("0.17.1", "v0.17.1-cu130", "13.0"),
    ("0.7.0", None, None),
])
def test_cuda_for(version, tag, cuda):
    assert vv.cuda_for(version, tag) == cuda


def test_reasoning_fields():
    assert vv.reasoning_fields("0.11.0") == ("reasoning_content",)
    assert vv.reasoning_fields("0.12.0") == ("reasoning", "reasoning_content")
    assert vv.reasoning_fields("0.16.0") == ("reasoning",)


def test_glm5_detection():
    assert vv.is_glm5("zai-org/GLM-5") and vv.is_glm5("Intel/GLM-5-int4-mixed-AutoRound")
    assert not vv.is_glm5("zai-org/GLM-4.5")
