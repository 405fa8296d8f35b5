"""Docker and the image a recipe runs (pulled, built or loaded from a bundle), without serving it:
stage images across the fleet ahead of a rollout.

    pyinfra INV deploys/image.py --data image_recipe=glm5
"""

from pyinfra import host

from tasks.docker import install_docker
from tasks.image_build import ensure_image
from tasks.settings.image_build import ImageBuildSettings
from tasks.spec import load_spec

recipe = ImageBuildSettings.of(host).image_recipe
if not recipe:
    raise SystemExit("deploys/image.py: set image_recipe (a recipe name, e.g. glm5)")
spec = load_spec(recipe, host.data.dict())
install_docker()
ensure_image(spec)
