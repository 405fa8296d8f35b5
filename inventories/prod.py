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

# One replica across two 8x H100 hosts (deploys/qwen235b_bf16.py): rank 0 is the head (serves HTTP,
# hosts the rendezvous on replica_master_port 29501), rank 1 a headless worker. The interface is the one
# each host's route to the head leaves by unless replica_interface says; keep it on a private network.
qwen235b_bf16 = (
    [
        ("gpu-11.internal", {**_common, "replica": "bf16-a", "replica_rank": 0}),
        ("gpu-12.internal", {**_common, "replica": "bf16-a", "replica_rank": 1}),
    ],
    {"serve_api_key_secret": "qwen235b_api_key"},
)

gateway = [("gw-01.internal", {**_common})]
