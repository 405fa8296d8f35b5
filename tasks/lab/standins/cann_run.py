"""llmfleet lab STAND-INs for Huawei's CANN ``.run`` installers (toolkit, kernels/ops, nnal).

Real CANN packages are self-extracting installers of several GB that cannot exist here. These
are small shell scripts with the same names and options (``--full``/``--install``, ``--quiet``,
``--install-path=``) that lay down what an installed CANN leaves for llmfleet to read: the
``ascend_toolkit_install.info`` version file, ``latest`` links and ``set_env.sh``.
"""

from __future__ import annotations

SCRIPT = r"""#!/bin/sh
# llmfleet lab STAND-IN for {filename}: not Huawei's installer.
set -e
path=/usr/local/Ascend
mode=
for a in "$@"; do
  case "$a" in
    --install-path=*) path="${{a#--install-path=}}" ;;
    --full|--install) mode=install ;;
    --quiet) ;;
    --version) echo "{version}"; exit 0 ;;
    *) echo "unrecognized option $a" >&2; exit 1 ;;
  esac
done
[ "$mode" = install ] || {{ echo "usage: {filename} --full|--install [--quiet] [--install-path=DIR]" >&2; exit 1; }}
arch=$(uname -m)
{body}
echo "[{package}] [$(date '+%Y-%m-%d %H:%M:%S')] [INFO] {package} {version} install success (llmfleet stand-in)"
"""

BODIES = {
    "toolkit": r"""d="$path/ascend-toolkit/{version}/$arch-linux"
mkdir -p "$d" "$path/ascend-toolkit/{version}/bin"
printf 'package_name=Ascend-cann-toolkit\nversion={version}\ninnerversion=V100R001C23\narch=%s\nos=linux\npath=%s\n' "$arch" "$d" > "$d/ascend_toolkit_install.info"
ln -sfn {version} "$path/ascend-toolkit/latest"
printf '# llmfleet lab stand-in set_env.sh\nexport ASCEND_TOOLKIT_HOME=%s/ascend-toolkit/latest\nexport ASCEND_HOME_PATH=$ASCEND_TOOLKIT_HOME\n' "$path" > "$path/ascend-toolkit/set_env.sh"
""",
    "kernels": r"""d="$path/ascend-toolkit/{version}/opp/built-in"
mkdir -p "$d"
printf 'Version={version}\n' > "$d/version.info"
""",
    "nnal": r"""d="$path/nnal/atb/{version}"
mkdir -p "$d"
ln -sfn {version} "$path/nnal/atb/latest"
printf '# llmfleet lab stand-in\nexport ATB_HOME_PATH=%s/nnal/atb/latest\n' "$path" > "$path/nnal/atb/set_env.sh"
""",
}


def script(package: str, version: str, filename: str) -> bytes:
    body = BODIES[package].format(version=version)
    return SCRIPT.format(filename=filename, version=version, package=package, body=body).encode()


VERSIONS = ("8.3.RC2", "8.5.1")
ARCHES = ("x86_64", "aarch64")


def publish(directory) -> None:
    """Write the stand-in installers for every version/arch into ``directory`` (served by the lab)."""
    from pathlib import Path

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for version in VERSIONS:
        for arch in ARCHES:
            for package, name in (("toolkit", "toolkit"), ("kernels", "kernels-910b"), ("nnal", "nnal")):
                filename = f"Ascend-cann-{name}_{version}_linux-{arch}.run"
                (out / filename).write_bytes(script(package, version, filename))
