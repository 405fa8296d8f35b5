"""Secret files: read on the control machine, installed on hosts root-only, never shown.

A secret is a file on the control machine in the secrets directory (host data ``secrets_dir``, else
the environment variable ``LLMFLEET_SECRETS_DIR``, else ``secrets/`` in the repository); data and
recipes carry its NAME only (``weights_token_secret: hf-token``, ``serve_api_key_secret: api-key``).
The content never appears in an operation argument, a command line, a diff or pyinfra's output: it
is read inside the operation, uploaded under a temporary name into a root-only directory and renamed
into place, and convergence is decided by comparing sha256 digests (the remote digest is read by a
fact; neither digest is printed).

A remote digest is visible to whoever can see fact output (``--debug``): use random keys, not
guessable words.

Settings (host data, prefix ``secrets_``): ``tasks.settings.secrets.SecretsSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import shlex
from pathlib import Path
from typing import Any, Callable

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, StringCommand, operation
from tasks.settings.secrets import SecretsSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = SecretsSettings.defaults()
SECRETS_ENV = "LLMFLEET_SECRETS_DIR"
#: Under sudo/su pyinfra uploads as the SSH user first: into this 0700 directory of that user's home.
PRIVATE_UPLOAD_DIR = ".llmfleet-upload"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def secrets_dir(data: Any = None) -> Path:
    """The control machine's secret directory (host data ``secrets_dir``, ``$LLMFLEET_SECRETS_DIR``, ``<repo>/secrets``)."""
    configured = (SecretsSettings.of(data).secrets_dir if data is not None else None) or os.environ.get(SECRETS_ENV)
    path = Path(configured) if configured else REPO_ROOT / "secrets"
    return path if path.is_absolute() else REPO_ROOT / path


def local_secret(name: str, field: str = "secret", data: Any = None) -> Path:
    """Path of the secret ``name`` on the control machine; ValueError naming ``field`` if unusable
    (not a plain name, missing, or not exactly one non-empty line)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{field}: {name!r} is not a secret name (letters, digits, '.', '_', '-'; "
                         "at most 64) -- it names a file under the secrets directory, never the secret itself")
    path = secrets_dir(data) / name
    if not path.is_file():
        raise ValueError(f"{field}: no secret file {name!r} in {secrets_dir(data)}: write the secret into it "
                         f"(one line, mode 600), or point secrets_dir / {SECRETS_ENV} at the directory that holds it")
    read_secret(path, field)
    return path


def read_secret(path: Path, field: str = "secret") -> str:
    """The one line a secret file holds; ValueError naming ``field`` (never the value) otherwise.

    A file its group or others may read or write is refused with the chmod that fixes it, as ssh
    refuses such a private key: the secret may already have leaked, and llmfleet will not spread it.
    """
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise ValueError(f"{field}: secret file {path} is unreadable: {exc.__class__.__name__}") from None
    if mode & 0o077:
        raise ValueError(f"{field}: secret file {path} has mode {mode:04o}: open to its group or others; "
                         f"allowed: its owner only, run: chmod 600 {shlex.quote(str(path))}")
    try:
        value = path.read_text(encoding="utf-8").strip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{field}: secret file {path} is unreadable: {exc.__class__.__name__}") from None
    if not value or "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"{field}: secret file {path} must hold exactly one non-empty line")
    return value


def env_file_content(env: dict[str, str]) -> bytes:
    """A docker/systemd env file (``NAME=value`` lines, no quoting) from env name -> secret file path."""
    return "".join(f"{name}={read_secret(Path(src), name)}\n" for name, src in sorted(env.items())).encode()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SecretFileState(FactBase):
    """
    ``{"sha256": hex, "mode": "600", "owner": "root:root"}`` of a file on the host, or ``{}`` when absent.
    Never reads the content back.
    """

    default = dict

    def command(self, path: str) -> str:
        p = shlex.quote(path)
        return (f"if [ -f {p} ]; then printf '%s %s\\n' \"$(sha256sum < {p} | cut -d' ' -f1)\" "
                f"\"$(stat -c '%a %U:%G' {p})\"; fi")

    def process(self, output: list[str]) -> dict:
        parts = " ".join(output).split()
        if len(parts) != 3:
            return {}
        return {"sha256": parts[0], "mode": parts[1], "owner": parts[2]}


@operation()
def secret_file(dest: str, src_path: str | None = None, env: dict[str, str] | None = None,
                content_of: Callable[[], bytes] | None = None, mode: str = "600", owner: str = "root",
                group: str = "root", dir_mode: str = "700"):
    """
    Install a secret file from the control machine: root-only, uploaded only when its digest differs.

    + dest: absolute path on the host; its directory is created with ``dir_mode``, owned by ``owner``
    + src_path: a local secret file copied as it is (e.g. ``local_secret("hf-token")``), or
    + env: env name -> local secret file: an env file of ``NAME=value`` lines (docker ``--env-file``), or
    + content_of: a function building the content from local secret files (e.g. nginx key includes)
    + mode/owner/group: of the installed file

    The values are read here, never passed as arguments (``--json`` prints arguments); there is no
    diff. The upload lands under a temporary name in the root-only directory and is renamed into place.

    Example:

    .. code:: python

        secret_file(name="Hub token", src_path=str(local_secret("hf-token", "weights_token_secret")),
                    dest="/etc/llmfleet/secrets/hf-token")
        secret_file(name="API key env", env={"VLLM_API_KEY": "secrets/qwen235b_api_key"},
                    dest="/etc/llmfleet/qwen235b.env", dir_mode="750")
    """
    if not posixpath.isabs(dest):
        raise ValueError(f"dest: {dest!r} must be an absolute path")
    if sum(x is not None for x in (src_path, env, content_of)) != 1:
        raise ValueError("secret_file: give exactly one of src_path, env or content_of")
    if src_path is not None:
        content = Path(src_path).read_bytes()
    elif env is not None:
        content = env_file_content(env)
    else:
        content = content_of()
    want = hashlib.sha256(content).hexdigest()
    have = host.get_fact(SecretFileState, path=dest)
    owned = have.get("owner") == f"{owner}:{group}" and have.get("mode") == mode
    if have.get("sha256") == want and owned:
        host.noop(f"secret {dest} is up to date")
        return
    q = shlex.quote(dest)
    if have.get("sha256") == want:
        yield f"chown {shlex.quote(owner)}:{shlex.quote(group)} {q} && chmod {mode} {q}"
        return
    directory, base = posixpath.split(dest)
    tmp = f"{directory}/.{base}.new"
    yield StringCommand("install", "-d", "-m", dir_mode, "-o", owner, "-g", group, directory)
    remote_temp = None
    if any((host.current_op_global_arguments or {}).get(k) for k in ("_sudo", "_su_user", "_doas")):
        # pyinfra uploads as the SSH user first, then copies with sudo and removes its copy.
        yield StringCommand("mkdir", "-p", "-m", "700", PRIVATE_UPLOAD_DIR, _sudo=False, _su_user=None, _doas=False)
        remote_temp = f"{PRIVATE_UPLOAD_DIR}/{base}"
    yield FileUploadCommand(io.BytesIO(content), tmp, remote_temp_filename=remote_temp)
    qt = shlex.quote(tmp)
    yield f"chown {shlex.quote(owner)}:{shlex.quote(group)} {qt} && chmod {mode} {qt} && mv -f {qt} {q}"
