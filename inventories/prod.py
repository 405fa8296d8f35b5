"""Example production inventory: copy it, put your hosts in, keep secrets out (they are files under
secrets/ on the control machine, named here).

    pyinfra inventories/prod.py deploys/qwen235b.py --limit qwen235b
    pyinfra inventories/prod.py deploys/qwen235b.py --limit qwen235b --dry --diff
"""

_common = {
    "ssh_user": "root",
    # Pulls through an internal Docker Hub mirror; quay.io images through an internal registry.
    "docker_registry_mirrors": ["https://registry-mirror.internal"],
    "image_mirrors": {"quay.io": "registry-mirror.internal"},
    # Weights: one hub download per fleet, hosts copy from each other over the LAN.
    "weights_fanout": True,
    "weights_hf_endpoint": "https://hf-mirror.internal",
    "weights_token_secret": "hf_token",
    # Rolling upgrades: one host at a time, gated on verification.
    "rollout_batch_size": 1,
}

qwen235b = (
    [
        ("gpu-01.internal", {**_common}),
        ("gpu-02.internal", {**_common}),
        ("gpu-03.internal", {**_common}),
    ],
    {"serve_api_key_secret": "qwen235b_api_key", "model_variant": "awq"},
)

qwen3_ascend = (
    [("npu-01.internal", {**_common, "ascend_cann_source": "https://mirror.internal/ascend/cann"})],
    {"serve_devices": [0, 1, 2, 3]},
)

gateway = [("gw-01.internal", {**_common})]
