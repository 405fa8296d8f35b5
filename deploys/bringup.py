"""Runtime bring-up only (Docker + NVIDIA Container Toolkit, or Docker + CANN).

`pyinfra INV deploys/bringup.py`; the accelerator is host data `runtime_accelerator`
(nvidia | ascend | none; default nvidia).
"""

from pyinfra import host

from tasks.runtime import install_runtime

install_runtime(host.data.get("runtime_accelerator", "nvidia"))
