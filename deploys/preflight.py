"""Go/no-go only, against a recipe: `pyinfra INV deploys/preflight.py --data preflight_recipe=qwen30b`.

Prints a check table per host and writes reports/preflight/<host>.json; refused hosts fail, the others pass.
"""

from pyinfra import host

from tasks.preflight import preflight
from tasks.requirement import requirement_from_spec
from tasks.weights.deploy import model_dest
from tasks.spec import load_spec

recipe = host.data.get("preflight_recipe")
if not recipe:
    raise SystemExit("preflight_recipe: set it to a recipe name (tasks/recipes/<name>.yaml), e.g. --data preflight_recipe=qwen30b")
spec = load_spec(recipe, host.data.dict())
preflight(requirement_from_spec(spec, model_dest(spec, host.data), host.data))
