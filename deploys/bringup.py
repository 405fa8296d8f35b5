"""Bring-up: preflight against a recipe (when host data `preflight_recipe` names one), then the runtime
(Docker + NVIDIA Container Toolkit, or Docker + CANN). A refused host gets nothing installed.

`pyinfra INV deploys/bringup.py`; without a recipe the accelerator is host data `runtime_accelerator`.
"""

from pyinfra import host

from tasks.preflight import preflight
from tasks.requirement import requirement_from_spec
from tasks.weights.deploy import model_dest
from tasks.runtime import install_runtime
from tasks.spec import load_spec

recipe = host.data.get("preflight_recipe")
accelerator = host.data.get("runtime_accelerator", "nvidia")
go = True
if recipe:
    spec = load_spec(recipe, host.data.dict())
    accelerator = spec.accelerator
    go = preflight(requirement_from_spec(spec, model_dest(spec, host.data), host.data))
if go:
    install_runtime(accelerator)
