"""STAND-IN for ``tasks.weights.deploy`` in the serving lab tests, used only while the weights
task has not landed (tests/lab/test_serving.py puts this directory on PYTHONPATH then).

``fetch_weights(spec, model_dir)`` writes a tiny stand-in checkpoint in the weights task's
layout, ``<model_dir>/revisions/<rev>/`` with ``<model_dir>/current -> revisions/<rev>``: the
model's bundled config.json and one small valid safetensors file (not a model).
"""

from __future__ import annotations

import io
import json
import struct

from pyinfra.api import deploy
from pyinfra.operations import files


def tiny_safetensors() -> bytes:
    """A valid safetensors file: one 2x2 F16 tensor."""
    header = json.dumps({"__metadata__": {"llmfleet": "stand-in"},
                         "standin.weight": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(8)


@deploy("Weights (stand-in)")
def fetch_weights(spec, model_dir: str) -> None:
    from tasks.model import model_config_for

    rev = spec.model.revision
    target = f"{model_dir}/revisions/{rev}"
    files.directory(name=f"{spec.name}: stand-in weights dir", path=target, mode="755")
    files.put(name=f"{spec.name}: stand-in config.json",
              src=io.StringIO(json.dumps(model_config_for(spec), indent=2) + "\n"), dest=f"{target}/config.json")
    files.put(name=f"{spec.name}: stand-in safetensors", src=io.BytesIO(tiny_safetensors()),
              dest=f"{target}/model.safetensors")
    files.link(name=f"{spec.name}: stand-in current", path=f"{model_dir}/current", target=f"revisions/{rev}")
