"""Bring-up: preflight against a recipe (when host data `preflight_recipe` names one), then the runtime
(Docker + NVIDIA Container Toolkit, or Docker + CANN). A refused host gets nothing installed.

`pyinfra INV deploys/bringup.py`; without a recipe the accelerator is host data `runtime_accelerator`.
Every host's recipe and settings are checked before any host is touched (tasks.model.validate_fleet).
"""

from pyinfra import host

from tasks.model import recipe_in, validate_fleet
from tasks.preflight import preflight
from tasks.requirement import requirement_from_spec
from tasks.runtime import install_runtime
from tasks.settings.runtime import RuntimeSettings
from tasks.weights.deploy import model_dest

spec = validate_fleet(recipe_in("preflight_recipe", required=False)).get(host.name)
accelerator = spec.accelerator if spec else RuntimeSettings.of(host).runtime_accelerator or "nvidia"
go = spec is None or preflight(requirement_from_spec(spec, model_dest(spec, host.data), host.data))
if go:
    install_runtime(accelerator)
