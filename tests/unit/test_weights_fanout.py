"""plan_waves: receivers -> senders per wave, holders grow by (fanout + 1) per wave."""

from __future__ import annotations

import math

import pytest

from tasks.weights.fanout import plan_waves


def check_plan(hosts: list[str], seeds: list[str], fanout: int, waves: list[dict[str, str]]) -> None:
    """Every non-seed host receives exactly once, from a holder, and no sender exceeds fanout."""
    holders = set(seeds)
    received = []
    for wave in waves:
        assert wave, "no empty waves"
        for receiver, sender in wave.items():
            assert sender in holders, (receiver, sender)
            assert receiver not in holders
        for sender in set(wave.values()):
            assert list(wave.values()).count(sender) <= fanout
        received.extend(wave)
        holders.update(wave)
    assert sorted(received) == sorted(h for h in hosts if h not in seeds)


def test_doc_example():
    assert plan_waves(["a", "b", "c", "d"], ["a"], 1) == [{"b": "a"}, {"c": "a", "d": "b"}]


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 100])
def test_one_seed_fanout_one_takes_log2_waves(n):
    hosts = [f"h{i}" for i in range(n)]
    waves = plan_waves(hosts, ["seed"], 1)
    check_plan(hosts, ["seed"], 1, waves)
    assert len(waves) == math.ceil(math.log2(n + 1))


@pytest.mark.parametrize("fanout,n,seeds", [(2, 26, 1), (3, 63, 1), (1, 30, 2), (2, 50, 3)])
def test_waves_grow_by_fanout_plus_one(fanout, n, seeds):
    seed_names = [f"s{i}" for i in range(seeds)]
    hosts = seed_names + [f"h{i}" for i in range(n)]  # seeds listed among hosts are skipped
    waves = plan_waves(hosts, seed_names, fanout)
    check_plan(hosts, seed_names, fanout, waves)
    assert len(waves) == math.ceil(math.log((n + seeds) / seeds, fanout + 1) - 1e-9)


def test_first_receivers_spread_over_all_senders():
    waves = plan_waves(["a", "b", "c", "d"], ["s1", "s2"], 2)
    assert waves == [{"a": "s1", "b": "s2", "c": "s1", "d": "s2"}]


def test_nothing_to_do():
    assert plan_waves(["s"], ["s"], 1) == []
    assert plan_waves([], [], 1) == []


@pytest.mark.parametrize(
    "hosts,seeds,fanout,field",
    [
        (["a"], ["s"], 0, "fanout"),
        (["a", "a"], ["s"], 1, "hosts"),
        (["a"], ["s", "s"], 1, "seeds"),
        (["a"], [], 1, "seeds"),
        ([""], ["s"], 1, "hosts"),
    ],
)
def test_bad_input_names_the_field(hosts, seeds, fanout, field):
    with pytest.raises(ValueError, match=field):
        plan_waves(hosts, seeds, fanout)
