"""pyinfra's config file: the CLI runs it from the working directory (run pyinfra from the repository
root) before it loads the inventory. llmfleet adds what must happen before any host is connected
(tasks/pyinfra_ext.py: a missing ssh key named, ``--dry -y`` still showing changes)."""

import runpy
from pathlib import Path

# By path, not `import tasks`: the package's __init__ acts on connected hosts, which exist only once a
# deploy file is loaded (it imports tasks then).
runpy.run_path(str(Path(__file__).resolve().parent / "tasks" / "pyinfra_ext.py"))["install"]()
