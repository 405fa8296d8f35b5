"""CUDA and NVIDIA driver version facts: the one place that says which driver a CUDA needs.

Two tables, both read by preflight and by anything else that must reason about images and drivers:

- ``MIN_DRIVER_FOR_CUDA``: the minimum Linux driver of each CUDA toolkit's GA release (NVIDIA's CUDA
  release notes, "CUDA Toolkit and Corresponding Driver Versions"). vLLM images are built on
  ``nvidia/cuda`` bases whose ``NVIDIA_REQUIRE_CUDA`` makes the container toolkit refuse to start a
  container on an older driver ("unsatisfied condition: cuda>=12.4"), so the GA minimum is the one that
  counts, not the minor-version-compatibility floor.
- ``CUDA_FOR_VLLM``: the CUDA each vLLM release's published wheels and ``vllm/vllm-openai`` images are
  built with (read from vLLM's release builds; see DESIGN.md). Releases outside the table are unknown:
  ``cuda_for_vllm`` returns None rather than guessing.
"""

from __future__ import annotations

from tasks.versions import Version, version_ge

#: CUDA "major.minor" -> minimum Linux driver (GA release of that toolkit).
MIN_DRIVER_FOR_CUDA: dict[str, str] = {
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}

#: (first vLLM release, last vLLM release, CUDA) — inclusive ranges, compared as versions.
#: 0.20.0 switched the default wheels and images to CUDA 13.0 (vLLM PR #39878, "Switch default CUDA
#: to 13.0"; 0.20/0.21 ship cu130 by default and a cu129 variant). Releases before 0.7.3: unknown.
CUDA_FOR_VLLM: tuple[tuple[str, str, str], ...] = (
    ("0.7.3", "0.8.99", "12.4"),
    ("0.9.0", "0.9.99", "12.6"),
    ("0.10.0", "0.19.99", "12.8"),
    ("0.20.0", "0.99.99", "13.0"),
)


def cuda_major_minor(cuda: str) -> str:
    """Normalise "12.4", "12.4.1" or "cu124" to "12.4"."""
    text = str(cuda).strip().lower()
    if text.startswith("cu") and text[2:].isdigit() and len(text) >= 5:
        return f"{int(text[2:-1])}.{int(text[-1])}"
    version = Version.parse(text)
    if version.parts < 2:
        raise ValueError(f"CUDA version {cuda!r} needs major.minor (e.g. 12.4)")
    return f"{version.release[0]}.{version.release[1]}"


def min_driver_for_cuda(cuda: str) -> str:
    """Minimum driver for CUDA ``cuda`` ("12.4" -> "550.54.14").

    Raises ValueError naming the CUDA version and the known ones when it is not in the table.
    """
    key = cuda_major_minor(cuda)
    try:
        return MIN_DRIVER_FOR_CUDA[key]
    except KeyError:
        known = ", ".join(MIN_DRIVER_FOR_CUDA)
        raise ValueError(f"no driver minimum known for CUDA {cuda!r}; known: {known}") from None


def cuda_for_vllm(version: str) -> str | None:
    """CUDA of the vLLM release ``version`` ("0.8.5" -> "12.4"), or None when the table has no row for it."""
    release = Version.parse(version).release  # a release candidate is built like its release
    for first, last, cuda in CUDA_FOR_VLLM:
        if Version.parse(first).release <= release <= Version.parse(last).release:
            return cuda
    return None


def max_cuda_for_driver(driver: str) -> str | None:
    """Newest CUDA of the table that ``driver`` can run, or None when it is older than all of them."""
    best: str | None = None
    for cuda, minimum in MIN_DRIVER_FOR_CUDA.items():
        if version_ge(driver, minimum):
            best = cuda
    return best
