"""A converged service, seen two ways that must agree: ``tasks.service.pending`` (the rollout's
plan-time read, which leaves a converged replica out of every batch) and ``serve``'s own
operations on a @fake host answering with the same host state (no change, nothing uploaded)."""

from __future__ import annotations

import hashlib

import pytest
from pyinfra.api import Config, Inventory, State, deploy
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops
from pyinfra.connectors.fake import FakeConnector

from tasks import service
from tasks.secrets import env_file_content
from tasks.spec import load_spec
from tests.unit.conftest import digest_lines

IMAGE = "vllm/vllm-openai:v0.8.5"
MODEL_DIR = "/srv/models/Qwen--Qwen3-32B-AWQ"
KEY = "sk-converged-test-71b2"

@pytest.fixture
def uploads(monkeypatch):
    seen = []

    def put_file(self, filename_or_io, remote_filename, remote_temp_filename=None, **kwargs):
        seen.append(remote_filename)
        return True

    monkeypatch.setattr(FakeConnector, "put_file", put_file)
    return seen


@pytest.fixture
def with_key(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFLEET_SECRETS_DIR", str(tmp_path))
    (tmp_path / "m_key").write_text(KEY + "\n")
    (tmp_path / "m_key").chmod(0o600)
    return {"serve_api_key_secret": "m_key"}


def converged_host(want: service.Desired) -> dict[str, tuple[str, str, bytes | None]]:
    """path -> (type, mode, content) of a host where serve() already ran."""
    lay = want.layout
    files = {lay.etc_dir: ("dir", "750", None), lay.cache_dir: ("dir", "750", None),
             lay.verify_config: ("file", "644", want.verify_text),
             service.PROBE_DIR: ("dir", "755", None),
             service.PROBE_PATH: ("file", "755", service.PROBE_SRC.read_bytes()),
             want.unit_file: ("file", "644", want.unit_text), "/etc/systemd/system": ("dir", "755", None)}
    if want.templates:
        files[lay.template_dir] = ("dir", "755", None)
        files.update({p: ("file", "644", c) for p, c in want.templates.items()})
    if want.secrets:
        files[lay.env_file] = ("file", "600", env_file_content(want.secrets))
    return files


def digest_output(files: dict) -> list[str]:
    """FileDigests' output for a host holding ``files`` (path -> (type, mode, content)), owned by root."""
    return digest_lines({p: (t, "-" if c is None else hashlib.sha256(c).hexdigest(), f"{mode} root root")
                         for p, (t, mode, c) in files.items()})


def observed(files: dict, active: str = "active", enabled: str = "enabled", reload: str = "no",
             image: str = IMAGE) -> dict:
    from tasks.converge import FileDigests

    return {"files": FileDigests().process(digest_output(files)), "live_image": image,
            "unit": {"ActiveState": active, "UnitFileState": enabled, "NeedDaemonReload": reload}}


def serve_on_fake(spec, files: dict, data: dict, active: str = "active", enabled: str = "enabled",
                  restart: bool = False, batch_open: bool | None = None):
    """Run serve() (pyinfra -y) on a @fake host whose commands answer from ``files``."""
    env = files.get(service.Layout.of(spec, service.options(data)).env_file)
    secret_state = [] if env is None else [f"{hashlib.sha256(env[2]).hexdigest()} {env[1]} root:root"]
    unit = service.unit_name(spec) + ".service"
    responses = {
        "printf '%s %s\\n'": secret_state,  # SecretFileState (its command also runs sha256sum)
        "LC_ALL=C stat": digest_output(files),  # FileDigests of each files_synced
        "systemctl show -p LoadState": [f"@unit={unit}", "LoadState=loaded", f"ActiveState={active}",
                                        f"UnitFileState={enabled}"],  # UnitStates: reset_failed, units_running
    }
    state = State(Inventory(([("@fake/h", {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": responses,
                                           **data})], {})), Config(), check_for_changes=False)
    connect_all(state)
    if batch_open is None:
        add_deploy(state, service.serve, spec, IMAGE, MODEL_DIR, restart=restart)
    else:  # inside a rollout batch whose _if says whether the batch runs
        @deploy("Batch 2/3")
        def batch():
            service.serve(spec, IMAGE, MODEL_DIR, restart=restart)

        add_deploy(state, batch, _if=[lambda: batch_open])
    run_ops(state)
    host = state.inventory.get_host("@fake/h")
    changed = [sorted(state.get_op_meta(h).names)[0] for h, m in state.ops[host].items()
               if m.operation_meta.did_change()]
    return changed, host.connector.executed_commands


@pytest.mark.parametrize("recipe,key", [("qwen30b", False), ("qwen32b_awq", False), ("qwen30b", True)])
def test_converged_host_pending_nothing_and_serve_changes_nothing(recipe, key, uploads, request):
    data = request.getfixturevalue("with_key") if key else {"serve_api_key_secret": None}
    spec = load_spec(recipe, data)
    want = service.desired(spec, IMAGE, MODEL_DIR, data)
    files = converged_host(want)
    assert service.pending(want, observed(files)) == []
    changed, commands = serve_on_fake(spec, files, data)
    assert changed == [] and uploads == []
    assert all(KEY not in c for c in commands)


def test_a_changed_template_is_pending_and_serve_uploads_it_and_restarts(uploads):
    data = {"serve_api_key_secret": None}
    spec = load_spec("qwen32b_awq", data)
    want = service.desired(spec, IMAGE, MODEL_DIR, data)
    files = converged_host(want)
    (path,) = want.templates
    files[path] = ("file", "644", b"{{ old template }}\n")
    assert service.pending(want, observed(files)) == [f"{path} differs"]
    changed, _ = serve_on_fake(spec, files, data)
    assert changed == ["Service | qwen32b_awq: chat templates",
                       "Service | qwen32b_awq: restart (unit, env or template changed)"]
    assert uploads == [f"{path.rsplit('/', 1)[0]}/.{path.rsplit('/', 1)[1]}.llmfleet-new"]


def test_unit_drift_env_mode_and_unit_state_are_each_reasons(with_key):
    spec = load_spec("qwen30b", with_key)
    want = service.desired(spec, IMAGE, MODEL_DIR, with_key)
    files = converged_host(want)
    files[want.unit_file] = ("file", "644", b"[Service]\nExecStart=/bin/true\n")
    files[want.layout.env_file] = ("file", "644", env_file_content(want.secrets))
    reasons = service.pending(want, observed(files, active="failed", enabled="disabled"))
    assert reasons == [f"{want.layout.env_file} differs", f"{want.unit_file} differs",
                       "llmfleet-qwen30b.service is failed", "llmfleet-qwen30b.service is not enabled"]
    assert not service.needs_restart(reasons)


def test_stale_load_or_other_image_needs_a_restart_without_file_changes(uploads):
    data = {"serve_api_key_secret": None}
    spec = load_spec("qwen30b", data)
    want = service.desired(spec, IMAGE, MODEL_DIR, data)
    files = converged_host(want)
    stale = service.pending(want, observed(files, reload="yes"))
    assert stale == ["systemd has not loaded the unit file on disk"] and service.needs_restart(stale)
    other = service.pending(want, observed(files, image="vllm/vllm-openai:v0.8.4"))
    assert other == [f"the container runs vllm/vllm-openai:v0.8.4, the unit {IMAGE}"]
    assert service.needs_restart(other)
    changed, commands = serve_on_fake(spec, files, data, restart=True)
    assert changed == ["Service | qwen30b: reload units", "Service | qwen30b: restart (unit, env or template changed)"]
    assert "systemctl restart llmfleet-qwen30b.service" in commands and uploads == []


def test_a_forced_restart_stays_inside_its_closed_batch(uploads):
    """An operation's own _if replaces its deploy's: the forced restart must still obey the batch."""
    data = {"serve_api_key_secret": None}
    spec = load_spec("qwen30b", data)
    files = converged_host(service.desired(spec, IMAGE, MODEL_DIR, data))
    changed, commands = serve_on_fake(spec, files, data, restart=True, batch_open=False)
    assert changed == [] and commands == []
    changed, commands = serve_on_fake(spec, files, data, restart=True, batch_open=True)
    assert "systemctl restart llmfleet-qwen30b.service" in commands


def test_a_failed_unit_is_reset_and_started_from_the_same_unit_read(uploads):
    data = {"serve_api_key_secret": None}
    spec = load_spec("qwen30b", data)
    files = converged_host(service.desired(spec, IMAGE, MODEL_DIR, data))
    changed, commands = serve_on_fake(spec, files, data, active="failed")
    assert changed == ["Service | qwen30b: clear failed state", "Service | qwen30b: running"]
    assert "systemctl reset-failed llmfleet-qwen30b.service" in commands
    assert "systemctl start llmfleet-qwen30b.service" in commands and uploads == []


def test_an_env_file_left_from_a_keyed_spec_is_pending():
    data = {"serve_api_key_secret": None}
    spec = load_spec("qwen30b", data)
    want = service.desired(spec, IMAGE, MODEL_DIR, data)
    files = converged_host(want)
    files[want.layout.env_file] = ("file", "600", b"VLLM_API_KEY=old\n")
    assert service.pending(want, observed(files)) == [f"{want.layout.env_file} should not exist (no API key)"]


def test_desired_unit_is_what_files_template_renders():
    """The unit is rendered locally now; it must equal pyinfra's files.template output byte for byte
    (a different rendering would restart every converged service once on upgrade)."""
    from pyinfra.api.util import get_template

    data = {"serve_api_key_secret": None}
    spec = load_spec("qwen30b", data)
    want = service.desired(spec, IMAGE, MODEL_DIR, data)
    text = want.unit_text.decode()
    assert text.startswith("# Managed by llmfleet") and "ExecStart=/usr/bin/docker run --rm" in text
    assert f"{IMAGE} \\\n" in text and text.endswith("WantedBy=multi-user.target\n")
    template = get_template(str(service.TEMPLATES / "vllm.service.j2"))
    lay = want.layout
    opts = service.options(data)
    lines = service.docker_run_argv(spec, IMAGE, MODEL_DIR, service.cmdline.render(spec), lay, opts, False)
    again = template.render(name_=lay.name, served_model_name=spec.served_model_name, port=spec.port,
                            weights=f"{spec.model.repo_id}@{spec.model.revision}", env_file="",
                            container=lay.unit, exec_start=service.exec_start(lines), stop_grace_s=60,
                            restart_sec=15, start_limit_burst=5, start_limit_interval_s=1800,
                            startup_budget_s=spec.startup_budget_s, timeout_start_s=300, timeout_stop_s=90)
    assert again == text
