"""Go/no-go only, against a recipe: `pyinfra INV deploys/preflight.py --data preflight_recipe=qwen30b`.

Prints a check table per host and writes reports/preflight/<host>.json; refused hosts fail, the others pass.
Every host's recipe and settings are checked before any host is touched (tasks.model.validate_fleet).
"""

from pyinfra import host

from tasks.model import recipe_in, validate_fleet
from tasks.preflight import preflight
from tasks.requirement import requirement_from_spec
from tasks.weights.deploy import model_dest

spec = validate_fleet(recipe_in("preflight_recipe")).get(host.name)
if spec is not None:  # None: a gateway host, no model to check
    preflight(requirement_from_spec(spec, model_dest(spec, host.data), host.data))
