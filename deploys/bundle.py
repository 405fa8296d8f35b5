"""Make an air-gapped image bundle on ONE host and download it to the control machine.

    pyinfra INV deploys/bundle.py --limit HOST --data bundle_image=vllm/vllm-openai:v0.18.0
    pyinfra INV deploys/bundle.py --limit HOST --data bundle_recipe=glm5   # the image glm5 runs

The tar lands in bundles/<name>.tar; give it to other hosts with host data image_bundle.
"""

from pyinfra import host, state

from tasks.bundle import make_bundle
from tasks.image_build import image_ref
from tasks.settings.bundle import BundleSettings
from tasks.settings.image_build import ImageBuildSettings
from tasks.spec import load_spec

targets = state.limit_hosts if state.limit_hosts else list(state.inventory)
if len(targets) != 1:
    raise SystemExit(f"deploys/bundle.py: run on exactly one host (--limit HOST); got {len(targets)}")

settings = BundleSettings.of(host)
image, recipe = settings.bundle_image, settings.bundle_recipe
if bool(image) == bool(recipe):
    raise SystemExit("deploys/bundle.py: set exactly one of bundle_image and bundle_recipe")
if recipe:
    image = image_ref(load_spec(recipe, host.data.dict()), ImageBuildSettings.of(host).image_pip_index_url)
make_bundle(image, name=settings.bundle_name)
