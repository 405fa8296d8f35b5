"""Version numbers: the one parser and ordering llmfleet uses for vLLM releases, CUDA toolkits and drivers.

``Version`` reads dotted release numbers with an optional ``rcN`` and ``.postN`` ("550.144.03",
"12.8", "v0.8.5.post1", "0.11.0rc3") and orders them the way their projects do: ``rcN`` < release <
``.postN``, missing trailing parts count as 0. Kinds of version that need more than one release part
(vLLM's) subclass it and set ``least`` (see ``tasks.vllm.versions.Version``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

_VERSION_RE = re.compile(
    r"^v?(?P<release>\d+(?:\.\d+){0,3})"
    r"(?:(?:\.|-)?rc(?P<rc>\d+))?"
    r"(?:\.post(?P<post>\d+))?$"
)


@dataclass(frozen=True, order=True)
class Version:
    """A comparable version: ``rcN`` < release < ``.postN``; one to four release parts.

    >>> Version.parse("570.153.02") >= Version.parse("570.26")
    True
    """

    #: fewest release parts a text must have ("0" is no vLLM version, "580" is a driver)
    least: ClassVar[int] = 1
    #: what the error message calls it, and an example of a good one
    noun: ClassVar[str] = "version"
    example: ClassVar[str] = "550.144.03, 12.8, 0.11.0rc3"

    release: tuple[int, int, int, int]
    stage: int = 1  # 0 release candidate, 1 final
    rc: int = 0
    post: int = 0
    text: str = field(default="", compare=False)
    parts: int = field(default=4, compare=False)  # release parts as written ("12.4" -> 2)

    @classmethod
    def parse(cls, value: "str | Version") -> "Version":
        """Parse "550.144.03", "v0.8.5.post1", "0.10.1.1", "v0.11.0rc3"; ValueError naming the text otherwise."""
        if isinstance(value, cls):
            return value
        text = str(value).strip()
        m = _VERSION_RE.match(text)
        parts = [int(p) for p in m["release"].split(".")] if m else []
        if len(parts) < cls.least:
            raise ValueError(f"not a {cls.noun}: {value!r} (expected e.g. {cls.example})")
        rc = m["rc"]
        return cls(
            release=tuple(parts + [0] * (4 - len(parts))),  # type: ignore[arg-type]
            stage=0 if rc is not None else 1,
            rc=int(rc or 0),
            post=int(m["post"] or 0),
            text=text.lstrip("v"),
            parts=len(parts),
        )

    def __str__(self) -> str:
        if self.text:
            return self.text
        rel = list(self.release)
        while len(rel) > 3 and rel[-1] == 0:
            rel.pop()
        s = ".".join(map(str, rel))
        if self.stage == 0:
            s += f"rc{self.rc}"
        if self.post:
            s += f".post{self.post}"
        return s


def version_ge(left: "str | Version", right: "str | Version") -> bool:
    """True when version ``left`` >= ``right`` ("570.153.02" >= "570.26"; "580" >= "580.0.0")."""
    return Version.parse(left) >= Version.parse(right)


__all__ = ["Version", "version_ge"]
