"""Every host-data key is one field of one settings model, described there; README.md's table is current."""

import pytest
from pydantic import ValidationError

from tasks import settings
from tasks.bad_input import BadInput
from tasks.settings.docker import DockerSettings
from tasks.settings.rollout import RolloutSettings
from tasks.settings.weights import WeightsSettings


def test_every_key_described_prefixed_and_defined_once():
    rows = settings.collect()
    keys = [key for _, key, _, _, _ in rows]
    assert len(keys) == len(set(keys)), "a key is defined by two capabilities"
    assert len(rows) > 50
    for model in settings.CAPABILITIES:
        for name, field in model.model_fields.items():
            assert name.startswith(model.prefix), f"{model.__name__}.{name} lacks the prefix {model.prefix}"
            assert field.description, f"{model.__name__}.{name} has no description"


def test_every_default_is_allowed_by_its_own_model():
    for model in settings.CAPABILITIES:
        assert model.of({}) == model(), model.__name__
        assert model.of(model.defaults()).model_dump() == model.defaults(), model.__name__


def test_readme_section_is_current():
    assert settings.current_section(settings.README.read_text()) == settings.render(), (
        "README.md's settings table is stale: run `python -m tasks.settings --write`")


def test_the_table_says_what_each_key_allows():
    allowed = {key: text for _, key, _, text, _ in settings.collect()}
    assert allowed["docker_source"] == "distro, docker-ce"
    assert allowed["weights_prune_keep"] == "an integer >= 1 or None"
    assert allowed["weights_peer_port"] == "an integer >= 1 and <= 65535"
    assert allowed["rollout_batch_size"] == "a whole number >= 1 or a percentage like '25%'"


def test_settings_are_frozen_and_typed():
    s = WeightsSettings.of({"weights_prune_keep": "3", "weights_fanout": True, "ssh_user": "root"})
    assert s.weights_prune_keep == 3 and s.weights_fanout is True  # "--data key=3" arrives as text
    with pytest.raises(ValidationError):
        s.weights_prune_keep = 4  # type: ignore[misc]


def test_none_keeps_a_field_that_takes_none_and_means_the_default_elsewhere():
    assert WeightsSettings.of({"weights_prune_keep": None}).weights_prune_keep is None  # never prune
    assert WeightsSettings.of({"weights_root": None}).weights_root == "/srv/models"


def test_bad_values_name_host_key_given_and_allowed():
    with pytest.raises(BadInput) as err:
        WeightsSettings.of({"weights_fanout_width": 0, "weights_peer_port": 70000, "weights_fanoutt": True}, "gpu-01")
    lines = [p.line() for p in err.value.problems]
    assert lines == [
        "gpu-01: weights_fanoutt: unknown setting; did you mean weights_fanout?",
        "gpu-01: weights_fanout_width (given 0): Input should be greater than or equal to 1; allowed: an integer >= 1",
        "gpu-01: weights_peer_port (given 70000): Input should be less than or equal to 65535; "
        "allowed: an integer >= 1 and <= 65535",
    ]
    assert "no host was touched" in str(err.value)


def test_a_count_is_a_number_or_a_percentage():
    assert RolloutSettings.of({"rollout_batch_size": "25%"}).rollout_batch_size == "25%"
    assert RolloutSettings.of({"rollout_max_unavailable": 2}).rollout_max_unavailable == 2
    for bad in ("zero", 0, "150%", "1.5"):
        with pytest.raises(BadInput, match="rollout_batch_size.*percentage"):
            RolloutSettings.of({"rollout_batch_size": bad})


def test_defaults_are_fresh_copies_for_pyinfra():
    first = DockerSettings.defaults()
    first["docker_registry_mirrors"].append("https://m")
    assert DockerSettings.defaults()["docker_registry_mirrors"] == []
