"""Secret files: read on the control machine, installed on hosts root-only, never shown.

A secret is a file on the control machine under ``secrets/`` in the repository (the directory
can be moved with the environment variable ``LLMFLEET_SECRETS_DIR``); data and recipes carry its
NAME only (``weights_token_secret: hf-token``, ``api_key_secret: api-key``). The content never
appears in an operation argument, a command line, a diff or pyinfra's output: it travels as an
SFTP upload of the local file into a ``0700`` root directory, and convergence is decided by
comparing sha256 digests (the remote digest is read by a fact; neither digest is printed).

DEFAULTS: none (callers pass the destination).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, operation

REPO_ROOT = Path(__file__).resolve().parents[1]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def secrets_dir() -> Path:
    """The control machine's secret directory (``$LLMFLEET_SECRETS_DIR`` or ``<repo>/secrets``)."""
    return Path(os.environ.get("LLMFLEET_SECRETS_DIR") or REPO_ROOT / "secrets")


def local_secret(name: str, field: str = "secret") -> Path:
    """Path of the secret ``name`` on the control machine; ValueError naming ``field`` if unusable."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{field}: {name!r} is not a secret name (letters, digits, '.', '_', '-'; "
                         "at most 64) -- it names a file under the secrets directory, never the secret itself")
    path = secrets_dir() / name
    if not path.is_file():
        raise ValueError(f"{field}: no secret file {name!r} in {secrets_dir()} "
                         "(set LLMFLEET_SECRETS_DIR to use another directory)")
    if not path.read_bytes().strip():
        raise ValueError(f"{field}: secret file {name!r} in {secrets_dir()} is empty")
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SecretFileState(FactBase):
    """
    ``{"sha256": hex, "mode": "600", "owner": "root:root"}`` of a file on the host, or ``{}`` when absent.
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
def secret_file(src_path: str, dest: str, mode: str = "600", owner: str = "root", group: str = "root"):
    """
    Install a secret file from the control machine: root-only, uploaded only when its digest differs.

    + src_path: local file (e.g. ``tasks.secrets.local_secret("hf-token")``)
    + dest: absolute path on the host; its directory is created ``0700`` and owned by ``owner``
    + mode/owner/group: of the installed file

    The upload lands in the ``0700`` directory first and is renamed into place, so no other user can
    read it at any moment. Digests are compared, never printed; there is no diff.
    (With ``_sudo``, pyinfra stages uploads in its temp directory: run this as root over SSH.)

    Example:

    .. code:: python

        secret_file(name="Hub token", src_path=str(local_secret("hf-token", "weights_token_secret")),
                    dest="/etc/llmfleet/secrets/hf-token")
    """
    if not posixpath.isabs(dest):
        raise ValueError(f"dest: {dest!r} must be an absolute path")
    local = Path(src_path)
    want = sha256_of(local)
    have = host.get_fact(SecretFileState, path=dest)
    if have.get("sha256") == want and have.get("mode") == mode and have.get("owner") == f"{owner}:{group}":
        host.noop(f"secret {dest} is up to date")
        return
    directory = posixpath.dirname(dest)
    tmp = f"{dest}.upload"
    yield f"install -d -m 700 -o {shlex.quote(owner)} -g {shlex.quote(group)} {shlex.quote(directory)}"
    if have.get("sha256") != want:
        yield f"rm -f {shlex.quote(tmp)}"
        yield FileUploadCommand(str(local), tmp, remote_temp_filename=tmp)
        yield (f"chown {shlex.quote(owner)}:{shlex.quote(group)} {shlex.quote(tmp)} && "
               f"chmod {mode} {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(dest)}")
    else:
        yield (f"chown {shlex.quote(owner)}:{shlex.quote(group)} {shlex.quote(dest)} && "
               f"chmod {mode} {shlex.quote(dest)}")
