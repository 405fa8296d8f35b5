"""The base of every capability's settings: a frozen pydantic model over the host-data keys of one prefix.

A capability declares its settings once, as a :class:`Settings` subclass whose fields are the host-data
keys (``docker_source``, ...), each with its default, its type (what is allowed) and a description.
From that one declaration come pyinfra's ``data_defaults`` (:meth:`Settings.defaults`), the validated
values a deploy reads (:meth:`Settings.of`), the problems the bad-input check lists before any host is
touched (:meth:`Settings.problems`) and README.md's settings table (``tasks.settings.table``).

Why pydantic: it is already the spec's validator (tasks/spec.py), and it says types, enumerations and
ranges as declarations, so the table's "allowed" column and the error messages come from the same
place instead of hand-written checks that drift from the documentation.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from typing import Any, Annotated, ClassVar, Literal, Mapping, Union

import annotated_types as at
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from tasks.bad_input import BadInput, Problem


class Allowed:
    """Annotation marker: how a custom type's allowed values read in messages and in the table."""

    def __init__(self, text: str, plural: str | None = None) -> None:
        self.text, self.plural = text, plural or text + "s"


def checked(check: typing.Callable[[Any], bool], text: str, plural: str | None = None, base: Any = str) -> Any:
    """A ``base`` type whose values must pass ``check``; refused as ``<value>: allowed <text>``."""

    def validate(value: Any) -> Any:
        if not check(value):
            raise ValueError(f"{value!r}: allowed: {text}")
        return value

    return Annotated[base, AfterValidator(validate), Allowed(text, plural)]


def _number_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _no_bool(value: Any) -> Any:
    """YAML's yes/true is no count (pydantic would read True as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not a number")
    return value


def _pinned(image: str) -> bool:
    from tasks.image import check_pinned  # late: tasks.image reads its settings from here

    try:
        check_pinned(image)
    except ValueError:
        return False
    return True


#: Text where YAML may have read a number (``preflight_min_driver: 535``, ``memlock: -1``).
Text = Annotated[str, BeforeValidator(_number_as_text)]
Version = Text
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")

HttpUrl = checked(lambda v: v.startswith(("http://", "https://")), "an http(s) URL (starts with http:// or https://)",
                  "strings, each an http(s) URL (http:// or https://)")
AbsPath = checked(lambda v: v.startswith("/"), "an absolute path")
Duration = checked(lambda v: bool(_DURATION.match(v)), "a Prometheus duration (30s, 5m, 1h30m, 15d)")
Port = Annotated[int, BeforeValidator(_no_bool), at.Ge(1), at.Le(65535)]
Positive = Annotated[int, BeforeValidator(_no_bool), at.Ge(1)]
Index = Annotated[int, BeforeValidator(_no_bool), at.Ge(0)]
Seconds = Annotated[float, at.Gt(0)]
NonNegative = Annotated[float, at.Ge(0)]
PinnedImage = checked(_pinned, "an image pinned to a tag or digest (NAME:TAG, not latest)")


class Settings(BaseModel):
    """One capability's settings: subclasses set ``prefix`` and ``title`` and declare one field per key.

    + prefix: the key prefix every field carries (``docker_``)
    + title: the capability's name in README.md's table

    Example:

    .. code:: python

        class SmokeSettings(Settings):
            prefix: ClassVar[str] = "smoke_"
            title: ClassVar[str] = "Smoke"
            smoke_port: Port = Field(18000, description="host port the container answers on")

        port = SmokeSettings.of(host).smoke_port
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    prefix: ClassVar[str] = ""
    title: ClassVar[str] = ""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Field -> default (fresh copies): pyinfra's ``@deploy(data_defaults=...)``."""
        return {name: copy.deepcopy(f.default) for name, f in cls.model_fields.items()}

    @classmethod
    def problems(cls, data: Any, host: str = "") -> list[Problem]:
        """Every problem in ``data``'s settings of this capability (unknown keys of its prefix included),
        each naming the host, the key, the value given and what is allowed.

        + data: a pyinfra Host, its HostData, or a mapping of host data
        + host: the host's name, for the message (a Host names itself)
        """
        return cls._checked(data, host)[1]

    @classmethod
    def of(cls, data: Any, host: str = ""):
        """The validated settings of ``data``: host data over the defaults; BadInput naming host, key,
        value given and what is allowed otherwise.

        + data: a pyinfra Host, its HostData, or a mapping of host data
        + host: the host's name, for the message (a Host names itself)
        """
        settings, found = cls._checked(data, host)
        if found:
            raise BadInput(found)
        return settings

    @classmethod
    def value(cls, data: Any, key: str, host: str = "") -> Any:
        """One key's validated value, the others unread: for code that runs before every host's
        settings are checked (``tasks.gateway.is_gateway`` while the fleet is gathered), so that a
        problem in another key is listed with the rest instead of stopping the run alone.

        + data: a pyinfra Host, its HostData, or a mapping of host data
        + key: the setting
        + host: the host's name, for the message (a Host names itself)
        """
        host, items = _items(data, host)
        given = cls._given({key: items[key]} if key in items else {})
        try:
            return getattr(cls.model_validate(given), key)
        except ValidationError as exc:
            raise BadInput(_problems(cls, exc, given, host)) from None

    @classmethod
    def _given(cls, items: dict[str, Any]) -> dict[str, Any]:
        """This capability's keys of ``items``; a None for a field that cannot be None means its default
        (as ``data.get(key) or default`` read it)."""
        return {k: v for k, v in items.items()
                if k in cls.model_fields and not (v is None and not _takes_none(cls.model_fields[k]))}

    @classmethod
    def _checked(cls, data: Any, host: str) -> tuple[Any, list[Problem]]:
        from tasks.settings.registry import unknown_keys  # late: the registry imports every model

        host, items = _items(data, host)
        given = cls._given(items)
        found = [Problem(host, key, message) for key, message in unknown_keys(items) if key.startswith(cls.prefix)]
        try:
            return cls.model_validate(given), found
        except ValidationError as exc:
            return None, found + _problems(cls, exc, given, host)

    @classmethod
    def allowed(cls, name: str) -> str:
        """What field ``name`` accepts, in words (the table's "allowed" column)."""
        return describe(cls.model_fields[name])


def _items(data: Any, host: str) -> tuple[str, dict[str, Any]]:
    """(host name, host data as a dict) of a pyinfra Host, its HostData or a mapping."""
    if hasattr(data, "data") and hasattr(data, "name"):  # a pyinfra Host
        host, data = host or data.name, data.data
    return host, data.dict() if hasattr(data, "dict") and not isinstance(data, Mapping) else dict(data)


def _takes_none(field: FieldInfo) -> bool:
    return field.default is None or type(None) in typing.get_args(field.annotation)


def _problems(cls: type[Settings], exc: ValidationError, given: dict[str, Any], host: str) -> list[Problem]:
    """pydantic's errors as Problems: the key, the value given, where inside it, what is allowed."""
    found = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else cls.prefix.rstrip("_")
        where = "".join(f"[{p!r}]" for p in err["loc"][1:]
                        if p != "[key]" and not str(p).startswith(("function-", "union[")))
        where = f"{where} " if where else ""
        if err["type"] == "value_error":  # a ``checked`` type's own words: value and what is allowed
            msg = where + err["msg"].removeprefix("Value error, ")
        elif err["type"] == "literal_error":  # pydantic's "Input should be 'a' or 'b'" would say it twice
            msg = f"{where}{err['input']!r}: allowed: {cls.allowed(key)}" if where else f"allowed: {cls.allowed(key)}"
        else:
            msg = f"{where}{err['msg']}; allowed: {cls.allowed(key)}"
        found.append(Problem(host, key, msg, _repr(given, key)))
    return found


def _repr(given: dict[str, Any], key: str) -> str | None:
    return repr(given[key]) if key in given else None


# --- what a type allows, in words -----------------------------------------------------------------


_PLAIN = {str: ("a string", "strings"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          bool: ("true or false", "true/false values"), type(None): ("None", "None"), Any: ("anything", "values")}


def describe(field: FieldInfo) -> str:
    """A field's allowed values in words: ``an integer >= 1 or None``, ``distro, docker-ce``."""
    text = _describe(field.annotation, field.metadata)
    extra = field.json_schema_extra or {}
    return str(extra.get("allowed", text)) if isinstance(extra, dict) else text


def _describe(tp: Any, metadata: list[Any] = (), plural: bool = False) -> str:
    marker = next((m for m in metadata if isinstance(m, Allowed)), None)
    if marker:
        return marker.plural if plural else marker.text
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        marker = next((m for m in args[1:] if isinstance(m, Allowed)), None)
        if marker:
            return marker.plural if plural else marker.text
        return _describe(args[0], [*args[1:], *metadata], plural)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a, plural=plural) for a in args)
    if origin is Literal:
        return ("any of " if plural else "") + ", ".join(str(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0], plural=True)}" if args else "a list"
    if origin is dict:
        if not args:
            return "a mapping"
        return f"a mapping of {_describe(args[0], plural=True)} -> {_describe(args[1], plural=True)}"
    words = _PLAIN.get(tp, (getattr(tp, "__name__", str(tp)),) * 2)[1 if plural else 0]
    bounds = [f"{op} {getattr(m, attr)}" for m in metadata for attr, op in
              (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr)]
    return words + (" " + " and ".join(bounds) if bounds else "")


__all__ = ["AbsPath", "Allowed", "Duration", "HttpUrl", "NonNegative", "PinnedImage", "Port", "Positive", "Seconds",
           "Settings", "Text", "Version", "checked", "describe"]
