"""What llmfleet knows about vLLM releases: one place for every version-dependent fact.

The server flags of each release come from vLLM's own parsers where llmfleet has harvested
them (``tasks/data/vllm-flags/<release>.json``, written by ``python -m tasks.vllm.harvest``:
options, their values and ``--no-`` forms, the parser registries), and otherwise from
``tasks/data/vllm-flags-by-version.tsv`` (string presence in the PyPI wheels of 0.7.0-0.33.0,
a strong hint rather than the parser's verdict). Everything else below is data with the reason
it is true; ``tasks/vllm/cmdline.py`` turns a serving spec into a command line using only these
facts.

A version between two listed releases has the flags of the nearest listed release at or below
it (0.10.1.1 -> 0.10.1; 0.11.0rc3 -> 0.10.2, since a release candidate precedes its release);
a harvested release is listed, and its record replaces the table's row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tasks import versions
from tasks.vllm import quantization as _quantization
from tasks.vllm.harvested import Harvest, load_harvests

FLAG_TABLE_PATH = Path(__file__).resolve().parents[1] / "data" / "vllm-flags-by-version.tsv"

# A version at the start of an image tag: "v0.17.1-cu130", "v0.8.5.post1", "0.11.0rc3-a3".
_TAG_VERSION_RE = re.compile(r"^v?(\d+(?:\.\d+){1,3}(?:rc\d+)?(?:\.post\d+)?)(?:$|[-_+])")


class Version(versions.Version):
    """A comparable vLLM version: ``rcN`` < release < ``.postN``; two to four release parts.

    >>> Version.parse("v0.8.5.post1") > Version.parse("0.8.5") > Version.parse("0.8.5rc1")
    True
    """

    least = 2
    noun = "vLLM version"
    example = "0.10.1, v0.8.5.post1, 0.11.0rc3"


def V(value: str) -> Version:
    """Short form of :meth:`Version.parse` for the fact tables below."""
    return Version.parse(value)


def version_from_tag(tag: str) -> Version | None:
    """The vLLM version an image tag names ("v0.17.1-cu130" -> 0.17.1), or None."""
    m = _TAG_VERSION_RE.match(tag)
    return Version.parse(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# Flag table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlagTable:
    """Which listed release has which server flag (harvested records first, then the TSV)."""

    releases: tuple[Version, ...]
    flags: dict[str, frozenset[Version]]
    harvests: dict[Version, Harvest] = field(default_factory=dict)

    def harvest_for(self, version: "str | Version") -> Harvest | None:
        """The harvested record ``version`` reads its flags from, or None (the TSV's row)."""
        return self.harvests.get(self.listed_release(version))

    def listed_release(self, version: "str | Version") -> Version:
        """The nearest listed release at or below ``version``; ValueError below the first."""
        v = Version.parse(version)
        below = [r for r in self.releases if r <= v]
        if not below:
            raise ValueError(
                f"vLLM {v} is older than the flag table's first release {self.releases[0]}; "
                f"llmfleet supports {self.releases[0]} and newer"
            )
        return max(below)

    def flags_for(self, version: "str | Version") -> frozenset[str]:
        """Server flags of ``version`` (those of the nearest listed release at or below it)."""
        rel = self.listed_release(version)
        if rel in self.harvests:
            return self.harvests[rel].flags()
        return frozenset(f for f, rels in self.flags.items() if rel in rels)

    def has(self, version: "str | Version", flag: str) -> bool:
        """Whether ``flag`` is a server flag of ``version``."""
        return flag in self.flags_for(version)

    @property
    def newest(self) -> Version:
        """The newest release in the table."""
        return self.releases[-1]


def parse_flag_table(text: str) -> FlagTable:
    """Parse the TSV: comment lines start with '#', then a header 'flag<TAB>0.7.0...', rows Y/-."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    header, body = rows[0], rows[1:]
    if header[0] != "flag":
        raise ValueError("flag table: first non-comment line must start with 'flag'")
    releases = tuple(Version.parse(v) for v in header[1:])
    flags: dict[str, frozenset[Version]] = {}
    for row in body:
        if len(row) != len(header):
            raise ValueError(f"flag table: row {row[0]!r} has {len(row)} cells, header {len(header)}")
        flags[row[0]] = frozenset(rel for rel, cell in zip(releases, row[1:]) if cell.strip() == "Y")
    return FlagTable(releases=tuple(sorted(releases)), flags=flags)


@lru_cache(maxsize=None)
def load_flag_table(path: str | None = None, harvest_dir: str | None = None) -> FlagTable:
    """Load (once) the flag table shipped in ``tasks/data`` with the harvested records.

    + path: a TSV instead of tasks/data/vllm-flags-by-version.tsv
    + harvest_dir: a directory of harvested records instead of tasks/data/vllm-flags
    """
    table = parse_flag_table(Path(path or FLAG_TABLE_PATH).read_text(encoding="utf-8"))
    harvests = load_harvests(harvest_dir)
    releases = tuple(sorted(set(table.releases) | set(harvests)))
    return FlagTable(releases=releases, flags=table.flags, harvests=dict(harvests))


def flags_for(version: "str | Version") -> frozenset[str]:
    """Server flags of ``version`` per the shipped flag table."""
    return load_flag_table().flags_for(version)


# ---------------------------------------------------------------------------------------------
# Removed flags and their translation (DESIGN.md, "Facts about vLLM")
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """A flag that a release removed, and what llmfleet does about it from then on."""

    flag: str
    removed_in: Version
    takes_value: bool
    action: str  # "drop" (with a warning), "translate", or "refuse"
    why: str


REMOVED_FLAGS: dict[str, Removal] = {
    r.flag: r
    for r in (
        Removal("--enable-reasoning", V("0.10.0"), False, "drop",
                "removed in 0.10.0; --reasoning-parser alone turns reasoning on"),
        Removal("--tokenizer-pool-size", V("0.10.0"), True, "drop",
                "removed in 0.10.0 (V1 engine has no tokenizer pool)"),
        Removal("--tokenizer-pool-type", V("0.10.0"), True, "drop",
                "removed in 0.10.0 (V1 engine has no tokenizer pool)"),
        Removal("--max-seq-len-to-capture", V("0.11.0"), True, "drop",
                "removed in 0.11.0; CUDA graph capture sizes are derived by vLLM"),
        Removal("--disable-log-requests", V("0.17.0"), False, "drop",
                "removed in 0.17.0; request logging is off by default (--enable-log-requests)"),
        Removal("--swap-space", V("0.18.0"), True, "drop",
                "removed in 0.18.0; the V1 engine only sanity-checked it and never swapped"),
        Removal("--rope-scaling", V("0.12.0"), True, "translate",
                "removed in 0.12.0; use --hf-overrides '{\"rope_parameters\": {...}}'"),
        Removal("--rope-theta", V("0.12.0"), True, "translate",
                "removed in 0.12.0; rope_theta goes inside --hf-overrides rope_parameters"),
    )
}

#: --enable-reasoning was required next to --reasoning-parser from 0.7.1 until 0.9.0
#: (deprecated in 0.9.0: vLLM PR #17452/#18404), and gone in 0.10.0.
ENABLE_REASONING_REQUIRED_BEFORE = V("0.9.0")

#: --hf-overrides '{"rope_parameters": {...}}' replaces --rope-scaling/--rope-theta from here
#: (docs.vllm.ai "Context Extension": rope_type, factor, original_max_position_embeddings,
#: rope_theta all inside rope_parameters).
ROPE_VIA_HF_OVERRIDES_FROM = V("0.12.0")

#: VLLM_ATTENTION_BACKEND is read until 0.15.0; --attention-backend exists from 0.13.0.
ATTENTION_BACKEND_ENV_REMOVED_IN = V("0.15.0")
ATTENTION_BACKEND_ENV = "VLLM_ATTENTION_BACKEND"

#: --block-size is a choice among these up to 0.11.x; any int > 0 from 0.12.0.
BLOCK_SIZE_CHOICES = (1, 8, 16, 32, 64, 128)
BLOCK_SIZE_ANY_FROM = V("0.12.0")

#: --dtype choices in every release 0.7.0-0.33.0. "fp8" has never been one.
DTYPE_CHOICES = ("auto", "half", "float16", "bfloat16", "float", "float32")
DTYPE_FP8_REFUSAL = (
    "--dtype fp8 is not valid in any vLLM release (choices: " + ", ".join(DTYPE_CHOICES) + "). "
    "For FP8 weights serve an FP8 checkpoint (e.g. Qwen3-...-FP8; dtype stays auto) or quantize "
    "on load with quantization: fp8; for an FP8 KV cache set kv_cache_dtype: fp8"
)

#: --kv-cache-dtype values llmfleet renders (present in every release 0.7.0+); the memory planner
#: prices exactly these. Later releases add more (bfloat16 from 0.11.0, float16 from 0.18.0, fp8_inc,
#: ...: tasks/data/vllm-flags/*.json); accepting them needs the release they start in, not done yet.
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")

#: --quantization methods llmfleet accepts: one list, shared with the memory planner
#: (tasks/vllm/quantization.py says how each stores its weights).
QUANTIZATIONS = _quantization.QUANTIZATIONS

# ---------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------

#: Reasoning parser -> first release that has it.
REASONING_PARSERS: dict[str, Version] = {
    "deepseek_r1": V("0.7.1"),
    "qwen3": V("0.9.0"),
    "glm45": V("0.10.1"),
}
#: Tool-call parser -> first release that has it (hermes predates the table).
TOOL_PARSERS: dict[str, Version] = {
    "hermes": V("0.7.0"),
    "qwen3_coder": V("0.10.0"),
    "glm45": V("0.10.1"),
    "glm47": V("0.14.0"),
}
#: From here --enable-auto-tool-choice without --tool-call-parser stops the server
#: ("TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser").
AUTO_TOOL_CHOICE_NEEDS_PARSER_FROM = V("0.8.5")


def _registry(kind: str, harvest: Harvest) -> frozenset[str]:
    return harvest.reasoning_parsers if kind == "reasoning" else harvest.tool_parsers


def parser_available(kind: str, name: str, version: "str | Version") -> bool:
    """Whether the ``kind`` ("reasoning"|"tool") parser ``name`` exists in ``version``.

    A harvested release answers from its own registry; others from the first-release tables.
    """
    return name in parsers_available(kind, version)


def parsers_available(kind: str, version: "str | Version") -> list[str]:
    """Names of the ``kind`` parsers ``version`` has (its registry where harvested)."""
    harvest = load_flag_table().harvest_for(version)
    if harvest is not None:
        return sorted(_registry(kind, harvest))
    table = REASONING_PARSERS if kind == "reasoning" else TOOL_PARSERS
    v = Version.parse(version)
    return sorted(n for n, first in table.items() if v >= first)


def known_parsers(kind: str) -> list[str]:
    """Every ``kind`` parser name of any release llmfleet knows (spec validation's allowed list)."""
    table = REASONING_PARSERS if kind == "reasoning" else TOOL_PARSERS
    names = set(table)
    for harvest in load_flag_table().harvests.values():
        names |= _registry(kind, harvest)
    return sorted(names)


#: Chat responses carry the parsed reasoning as ``reasoning_content`` up to 0.11.0, as both
#: ``reasoning`` and ``reasoning_content`` 0.11.1-0.15.x (vLLM PR #27752), and as ``reasoning``
#: only from 0.16.0 (PR #33402 removed ``reasoning_content``).
REASONING_FIELD_RENAMED_IN = V("0.11.1")
REASONING_CONTENT_REMOVED_IN = V("0.16.0")


def reasoning_fields(version: "str | Version") -> tuple[str, ...]:
    """Response field names that carry reasoning text in ``version`` (harvested where read)."""
    harvest = load_flag_table().harvest_for(version)
    if harvest is not None:
        return harvest.reasoning_fields
    v = Version.parse(version)
    if v < REASONING_FIELD_RENAMED_IN:
        return ("reasoning_content",)
    if v < REASONING_CONTENT_REMOVED_IN:
        return ("reasoning", "reasoning_content")
    return ("reasoning",)


# ---------------------------------------------------------------------------------------------
# Builds, images, environment
# ---------------------------------------------------------------------------------------------

#: An image tag's ``-cuNNN`` suffix names its CUDA; otherwise tasks/cuda.py's table of releases does.
_TAG_CUDA_RE = re.compile(r"-cu(\d{2})(\d)\b")


def cuda_for(version: "str | Version", tag: str | None = None) -> str | None:
    """CUDA version of the vLLM build ``version`` (a ``-cuNNN`` tag suffix wins), or None."""
    if tag:
        m = _TAG_CUDA_RE.search(tag)
        if m:
            return f"{int(m.group(1))}.{m.group(2)}"
    from tasks.cuda import cuda_for_vllm  # the one table of CUDA per vLLM release

    v = Version.parse(version)
    return cuda_for_vllm(".".join(str(part) for part in v.release[:3]))


#: GLM-5 needs vLLM >= 0.16.0 and transformers >= 5.2.0 (the GLM-5 repo pins >= 5.4.0).
GLM5_MIN_VLLM = V("0.16.0")
GLM5_MIN_TRANSFORMERS = "5.2.0"
GLM5_REPO_TRANSFORMERS = "5.4.0"
_GLM5_RE = re.compile(r"glm-?5", re.IGNORECASE)


def is_glm5(repo_id: str) -> bool:
    """Whether a model repository id names a GLM-5 model."""
    return bool(_GLM5_RE.search(repo_id))


#: vLLM reads VLLM_USE_MODELSCOPE (only the value "true", case-insensitive) before 0.28.0.
MODELSCOPE_ENV = "VLLM_USE_MODELSCOPE"
MODELSCOPE_ENV_REMOVED_IN = V("0.28.0")

#: The API key: vLLM reads VLLM_API_KEY when --api-key is absent (``args.api_key or
#: envs.VLLM_API_KEY`` in every release 0.7.0-0.31.0 read), so the key never needs argv.
API_KEY_ENV = "VLLM_API_KEY"

#: How the container is started. vllm/vllm-openai images have a vLLM entrypoint
#: (``python3 -m vllm.entrypoints.openai.api_server`` up to 0.11.x, ``vllm serve`` later);
#: ``IMAGE --model X`` works for both (``vllm serve --model X`` errors 0.8.4-0.11.x, warns
#: 0.12+, but the old images never run ``vllm serve``). Images without a vLLM entrypoint
#: (vllm-ascend: CMD bash) get ``vllm serve MODEL ...``, where the positional model works in
#: every release.
SERVE_LAUNCHER = ("vllm", "serve")
