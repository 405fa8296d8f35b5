"""tasks.facts.together: several facts' commands in one real shell give what each gives alone."""

import pytest
from pyinfra.api import FactBase

from tests.unit.conftest import run_sh

from tasks.converge import FileDigests
from tasks.facts.host import HostResources
from tasks.facts.nvidia import NvidiaFabric, NvidiaGpus
from tasks.facts.together import Together
from tasks.lab.profiles import PROFILES


class Fails(FactBase):
    def command(self, code: int) -> str:
        return f"echo before; exit {code}  # a trailing comment must not swallow the subshell's end"

    def process(self, output):
        return output


class Silent(FactBase):
    @staticmethod
    def default():
        return {"nothing": True}

    def command(self):
        return "true"


class NeedsTool(FactBase):
    def requires_command(self):
        return "some-tool"

    def command(self):
        return "some-tool --list"


def _together(facts):
    fact = Together()
    lines, rc = run_sh(fact.command(facts=facts))
    return fact.process(lines), rc


def test_each_fact_gets_what_it_gets_alone(tmp_path):
    (tmp_path / "a b").write_text("one\n")
    (tmp_path / "c").write_text("two\n")
    paths = [str(tmp_path / "a b"), str(tmp_path / "c"), str(tmp_path / "missing")]
    facts = ((FileDigests, {"paths": paths}), (NvidiaFabric, {}), (HostResources, {"path": str(tmp_path)}))
    values, rc = _together(facts)
    assert rc == 0
    alone = [cls().process(run_sh(cls().command(**kwargs))[0]) for cls, kwargs in facts]
    assert values[0] == alone[0] and set(values[0]) == set(paths[:2])
    assert values[1] == alone[1]
    same_host = {k: v for k, v in values[2].items() if k not in ("mem_available_bytes", "disk", "shm")}
    assert same_host == {k: v for k, v in alone[2].items() if k not in ("mem_available_bytes", "disk", "shm")}
    assert values[2]["disk_path"] == str(tmp_path)


def test_a_failing_fact_fails_the_read_and_the_others_still_run():
    values, rc = _together(((Fails, {"code": 3}), (Silent, {}), (Fails, {"code": 0})))
    assert rc == 3
    assert values == [["before"], {"nothing": True}, ["before"]]


def test_a_fact_with_no_output_gets_its_default():
    values, rc = _together(((Silent, {}),))
    assert (values, rc) == ([{"nothing": True}], 0)


def test_facts_guarded_by_pyinfra_are_refused():
    with pytest.raises(ValueError, match="NeedsTool sets requires_command"):
        Together().command(facts=((NeedsTool, {}),))


def test_gpu_inventory_through_the_standin(standin_bin):
    env = standin_bin(PROFILES["h100x8"])
    fact = Together()
    lines, rc = run_sh(fact.command(facts=((NvidiaGpus, {}), (Silent, {}))), env)
    gpus, silent = fact.process(lines)
    alone = NvidiaGpus().process(run_sh(NvidiaGpus().command(), env)[0])
    assert rc == 0 and silent == {"nothing": True}
    assert gpus == alone and gpus["status"] == "ok" and len(gpus["gpus"]) == 8
