"""The secret env file operation on @fake hosts: no key in commands, arguments or logs; no-op
when the remote digest matches; escalated uploads go through a private directory."""

from __future__ import annotations

import hashlib
import logging

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.connectors.fake import FakeConnector

from tasks.secrets import PRIVATE_UPLOAD_DIR, secret_file

KEY = "sk-unit-test-4c1d9e0f"
PATH = "/etc/llmfleet/m.env"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "m_key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def uploads(monkeypatch):
    seen = []

    def put_file(self, filename_or_io, remote_filename, remote_temp_filename=None, **kwargs):
        seen.append((filename_or_io.read(), remote_filename, remote_temp_filename))
        return True

    monkeypatch.setattr(FakeConnector, "put_file", put_file)
    return seen


def run(secret_path, responses=None, **global_args):
    data = {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": responses or {}}
    state = State(Inventory(([("@fake/h", data)], {})), Config())
    connect_all(state)
    add_op(state, secret_file, dest=PATH, env={"VLLM_API_KEY": secret_path}, dir_mode="750", **global_args)
    run_ops(state)
    host = state.inventory.get_host("@fake/h")
    metas = list(state.ops[host].values())
    return state, host, metas


def test_upload_without_key_in_commands_or_arguments(secret, uploads, caplog):
    caplog.set_level(logging.DEBUG)
    state, host, metas = run(secret)
    assert uploads == [(f"VLLM_API_KEY={KEY}\n".encode(), "/etc/llmfleet/.m.env.new", None)]
    commands = host.connector.executed_commands
    assert any("mv -f /etc/llmfleet/.m.env.new /etc/llmfleet/m.env" in c and "chmod 600" in c for c in commands)
    assert not any(KEY in c for c in commands)
    for op_hash in state.get_op_order():
        meta = state.get_op_meta(op_hash)
        assert meta.args and KEY not in repr(meta.args) and KEY not in repr(meta.names)
    assert KEY not in caplog.text


def test_no_change_when_digest_mode_and_owner_match(secret, uploads):
    digest = hashlib.sha256(f"VLLM_API_KEY={KEY}\n".encode()).hexdigest()
    responses = {"sha256sum": [f"{digest} 600 root:root"]}
    state, host, metas = run(secret, responses)
    assert uploads == []
    assert [c for c in host.connector.executed_commands if "sha256sum" not in c] == []
    assert not any(m.operation_meta.did_change() for m in metas)


def test_mode_drift_fixed_without_upload(secret, uploads):
    digest = hashlib.sha256(f"VLLM_API_KEY={KEY}\n".encode()).hexdigest()
    responses = {"sha256sum": [f"{digest} 644 root:root"]}
    _, host, _ = run(secret, responses)
    assert uploads == []
    assert host.connector.executed_commands[-1] == f"chown root:root {PATH} && chmod 600 {PATH}"


def test_escalated_upload_uses_private_temp(secret, uploads):
    _, host, _ = run(secret, _sudo=True)
    assert uploads[0][2] == f"{PRIVATE_UPLOAD_DIR}/m.env"
    assert any(c.startswith(f"mkdir -p -m 700 {PRIVATE_UPLOAD_DIR}") for c in host.connector.executed_commands)
