"""The running version of a service and its rollback point, as one fact (:class:`ServiceVersion`),
and the paths a rollout reads and writes for one service (:class:`Paths`)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any, Sequence

from pyinfra import host
from pyinfra.api import FactBase

from tasks.converge import FileDigests
from tasks.service import IMAGE_LABEL, Layout


@dataclass(frozen=True)
class Paths:
    """Host paths a rollout reads and writes for one service."""

    unit_name: str
    unit_file: str
    env_file: str
    template_dir: str
    verify_config: str
    previous: str
    last_verify: str
    record: str
    model_dir: str

    @classmethod
    def of(cls, layout: Layout, model_dir: str) -> "Paths":
        base = f"{layout.etc_dir}/{layout.name}"
        return cls(unit_name=f"{layout.unit}.service", unit_file=f"/etc/systemd/system/{layout.unit}.service",
                   env_file=layout.env_file, template_dir=layout.template_dir,
                   verify_config=layout.verify_config, previous=f"{base}.previous",
                   last_verify=f"{base}.last-verify.json", record=f"{base}.rollout.json",
                   model_dir=model_dir.rstrip("/"))


class ServiceVersion(FactBase):
    """
    The running version of a service, its rollback point and (with ``paths``) its files, in one
    round trip: ``live_unit`` (sha256 of the unit file), ``live_active`` (ActiveState),
    ``live_weights`` (target of ``<model_dir>/current``), ``live_image`` (the image the running
    ``docker run`` was started with), ``live_label`` (the unit's weights label), ``saved_unit``
    (sha256 of the kept unit), ``saved`` (the kept ``state.json``, a dict), ``unit``
    (``systemctl show`` ActiveState, UnitFileState, NeedDaemonReload) and ``files``
    (``FileDigests`` of ``paths``).

    ``live_image`` comes from the service's main process, the ``docker run`` that systemd started
    (``Type=exec``, attached to its container): its ``org.llmfleet.image`` label argument, read
    from ``/proc/<MainPID>/cmdline``. That is what the running container was started from, read
    without starting the docker CLI (~35 ms of host CPU, the largest part of a no-op's check).
    """

    default = dict

    def command(self, unit_file: str, unit_name: str, model_dir: str, previous: str,
                paths: Sequence[str] = ()) -> str:
        u, d, m = shlex.quote(unit_file), shlex.quote(previous), shlex.quote(f"{model_dir.rstrip('/')}/current")
        digested = [unit_file, f"{previous}/unit", *[p for p in paths if p != unit_file]]
        # Few processes (the digests of every path take two): this runs on every host every run.
        return (
            f"echo {shlex.quote('@unit_file=' + unit_file)}; echo {shlex.quote('@saved_unit=' + previous + '/unit')}; "
            f"{FileDigests().command(digested)}; "
            f"s=$(systemctl show -p ActiveState -p UnitFileState -p NeedDaemonReload -p MainPID "
            f"{shlex.quote(unit_name)} 2>/dev/null); echo \"$s\"; pid=${{s##*MainPID=}}; pid=${{pid%%[!0-9]*}}; "
            f"if [ \"${{pid:-0}}\" != 0 ] && [ -r /proc/$pid/cmdline ]; then "
            f"tr '\\0' '\\n' < /proc/$pid/cmdline | grep -m 1 '^{_IMAGE_ARG}='; fi; "
            f"if [ -L {m} ]; then echo \"live_weights=$(readlink {m})\"; fi; "
            f"if [ -f {u} ]; then echo \"live_label=$(grep -o -m 1 'org.llmfleet.weights=[^ ]*' {u})\"; fi; "
            f"if [ -f {d}/state.json ]; then IFS= read -r saved < {d}/state.json; echo \"saved=$saved\"; fi; true"
        )

    def process(self, output):
        files = FileDigests().process(output)
        out: dict[str, Any] = {"unit": {}, "files": files}
        marks: dict[str, str] = {}
        for line in output:
            key, sep, value = line.partition("=")
            if not sep or "\t" in line:
                continue
            value = value.strip()
            if key in ("@unit_file", "@saved_unit"):
                marks[key] = value
            elif key in UNIT_PROPERTIES:
                out["unit"][key] = value
            elif key == "saved":
                try:
                    out[key] = json.loads(value)
                except ValueError:
                    out[key] = {}
            elif key == "live_label" and value:
                out[key] = value.partition("=")[2] or None
            elif key == "live_weights" and value:
                out[key] = value
            elif key == IMAGE_LABEL and value:
                out["live_image"] = value
        for mark, key in (("@unit_file", "live_unit"), ("@saved_unit", "saved_unit")):
            digest = (files.get(marks.get(mark, "")) or {}).get("sha256")
            if digest:
                out[key] = digest
        if out["unit"].get("ActiveState"):
            out["live_active"] = out["unit"]["ActiveState"]
        return out


UNIT_PROPERTIES = ("ActiveState", "UnitFileState", "NeedDaemonReload")
_IMAGE_ARG = IMAGE_LABEL.replace(".", "\\.")  # a grep pattern

def fact_args(p: Paths) -> dict[str, str]:
    """``ServiceVersion`` arguments for a service's paths."""
    return {"unit_file": p.unit_file, "unit_name": p.unit_name, "model_dir": p.model_dir, "previous": p.previous}


def fact_of(p: Paths) -> dict:
    return host.get_fact(ServiceVersion, **fact_args(p))


def point_is_current(v: dict) -> bool:
    """Whether the rollback point is the running version (unit, weights link and image)."""
    saved = v.get("saved") or {}
    return (v.get("saved_unit") == v.get("live_unit") and saved.get("weights") == v.get("live_weights")
            and saved.get("image") == v.get("live_image"))


def point_unneeded(paths: Paths, v: dict) -> str | None:
    """Why no rollback point is to be written for ``ServiceVersion`` ``v`` (None: write one)."""
    if not v.get("live_unit"):
        return f"{paths.unit_name}: not installed yet, no rollback point"
    if v.get("live_active") != "active" or not v.get("live_image"):
        return f"{paths.unit_name} is {v.get('live_active') or 'unknown'}: rollback point left as it is"
    if point_is_current(v):
        return f"{paths.unit_name}: rollback point is the running version ({v.get('live_image')})"
    return None



__all__ = ["Paths", "ServiceVersion", "UNIT_PROPERTIES", "fact_args", "point_is_current", "point_unneeded"]
