"""Every host-data key is documented once in its module, and README.md's settings table is current."""

from tasks import settings


def test_every_key_documented_and_prefixed():
    rows, missing = settings.collect()
    assert missing == []
    keys = [key for _, key, _, _ in rows]
    assert len(keys) == len(set(keys)), "a key is defined by two capabilities"
    assert len(rows) > 50


def test_readme_section_is_current():
    assert settings.current_section(settings.README.read_text()) == settings.render(), (
        "README.md's settings table is stale: run `python -m tasks.settings --write`")
