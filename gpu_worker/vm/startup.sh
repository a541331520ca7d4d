#!/usr/bin/env bash
# Boot script of an ltxv GPU worker VM: the instance template's `startup-script` metadata.
#
# Runs as root on every boot of a Deep Learning VM image (Ubuntu 24.04, NVIDIA driver
# preinstalled) and is safe to run again (`sudo google_metadata_script_runner startup`).
# Stages (each logs "stage X took N s"): config (metadata `ltxv-*`, README.md), gpus
# (nvidia-smi), user, env (the venv /opt/ltxv/venv, unpacked from a shared archive or built
# once per key), torch (sees the GPU?), model (weights from the model cache bucket), ops-agent,
# workers (one systemd unit per GPU), ready (GPU 0's worker answers GET /healthz 200).
#
# A failed boot powers the VM off (metadata ltxv-on-boot-failure=stay keeps it up for
# debugging) after an ERROR line saying why: a VM that stops without its managed instance
# group asking is a failed VM, which the group recreates ("Automatically repair a failed
# VM", https://cloud.google.com/compute/docs/instance-groups/about-repair). Output goes to
# the journal (`journalctl -u google-startup-scripts`) and Cloud Logging, prefixed
# `ltxv-startup:`. `main` runs only when the file is executed: tests source it and call the
# functions with stub commands on PATH; VM_ROOT (empty on a VM) prefixes every path written.

set -Eeuo pipefail

VM_ROOT="${VM_ROOT:-}"
SERVICE_USER="${SERVICE_USER:-ltxv}"
SERVICE_GROUP="${SERVICE_GROUP:-ltxv}"
METADATA_URL="${METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}"

# torch is pinned here, not in the package: the right build depends on the driver. PyPI's
# torch==2.13.0 is built for CUDA 13.0 (driver >= 580); the 570-series drivers of the
# common-cu128 images support CUDA 12.8, for which PyTorch's cu128 index has the build
# (with the L4's sm_89 kernels). Metadata `ltxv-torch-index-url` overrides the choice;
# verify_torch_cuda fails the boot when torch cannot see the GPU.
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX_URL_CUDA13="https://pypi.org/simple"
TORCH_INDEX_URL_CUDA12="https://download.pytorch.org/whl/cu128"

# The worker's grace (LTXV_SHUTDOWN_GRACE_SECONDS) must end before the unit's
# TimeoutStopSec (25 s) and a spot VM's ~30 s preemption window.
DEFAULT_SHUTDOWN_GRACE_SECONDS=20
MAX_SHUTDOWN_GRACE_SECONDS=24
# ltxv-worker@N serves GET /healthz on HEALTH_PORT + N (LTXV_HEALTH_PORT_OFFSET=%i in the
# unit); the MIG's health check probes GPU 0's, on HEALTH_PORT itself.
HEALTH_PORT=8080

NVIDIA_WAIT_SECONDS="${NVIDIA_WAIT_SECONDS:-180}" # a driver still being built on first boot
# The waits end inside the instance group's first-boot allowance (terraform
# local.worker_first_boot_seconds, 1200 s), after which auto-healing recreates the VM.
MODEL_WAIT_SECONDS="${MODEL_WAIT_SECONDS:-1080}" # for another VM filling the model cache
ENV_WAIT_SECONDS="${ENV_WAIT_SECONDS:-600}"      # ... or building the env (then: pip here)
# The VM filling a cache rewrites its lock every LOCK_BEAT_SECONDS; a lock not rewritten
# for LOCK_STALE_SECONDS belongs to a VM that is gone (preempted, stopped, recreated).
LOCK_BEAT_SECONDS="${LOCK_BEAT_SECONDS:-30}"
LOCK_STALE_SECONDS="${LOCK_STALE_SECONDS:-150}"
HEARTBEAT_PID=""
POLL_SECONDS="${POLL_SECONDS:-30}"
HEALTH_POLL_SECONDS="${HEALTH_POLL_SECONDS:-5}"
STANDBY_POLL_SECONDS="${STANDBY_POLL_SECONDS:-15}"

UNIT_NAME="ltxv-worker@.service"
OPS_AGENT_INSTALLER="https://dl.google.com/cloudagents/add-google-cloud-ops-agent-repo.sh"
ETC_DIR="${VM_ROOT}/etc/ltxv"
ENV_FILE="${ETC_DIR}/worker.env"
OPT_DIR="${VM_ROOT}/opt/ltxv"
VENV="${OPT_DIR}/venv"
ENV_STAMP="${OPT_DIR}/env.key"
DIST_DIR="${OPT_DIR}/dist"
STATE_DIR="${VM_ROOT}/var/lib/ltxv"
CACHE_DIR="${VM_ROOT}/var/cache/ltxv"
MODELS_DIR="${STATE_DIR}/models"
SYSTEMD_DIR="${VM_ROOT}/etc/systemd/system"
OPS_AGENT_CONFIG="${VM_ROOT}/etc/google-cloud-ops-agent/config.yaml"

CFG_ON_BOOT_FAILURE="poweroff" # before read_config too: an unreadable metadata server fails
CFG_PROJECT="" CFG_PREFIX="" CFG_MODEL="" CFG_DEFAULT_MODEL="" CFG_WORKER_PACKAGE=""
CFG_SHUTDOWN_GRACE_SECONDS="" CFG_LOG_LEVEL="" CFG_SUBSCRIPTION="" CFG_OUTPUTS_BUCKET=""
CFG_TORCH_INDEX_URL="" CFG_WORKER_EXTRAS="" CFG_BOOT_READY_SECONDS=""
GPU_INDICES=()
DRIVER_CUDA="" PYTHON="" PY_VERSION="" PKG_FILE="" PKG_SHA="" ENV_URI=""
CHANGED=0 # a running worker restarts when its code or settings changed on this run

log() {
  local level="$1"
  shift
  echo "ltxv-startup: ${level}: $*" >&2
}
info() { log INFO "$@"; }
warn() { log WARNING "$@"; }
die() {
  log ERROR "$@"
  exit 1
}

# stage NAME COMMAND...: runs COMMAND and logs how long it took (the boot budget).
stage() {
  local name="$1" started=$SECONDS
  shift
  "$@"
  info "stage ${name} took $((SECONDS - started)) s"
}

# The EXIT trap of a boot: a failure ends the VM so the MIG recreates it, unless told to stay.
on_exit() {
  local rc=$?
  [[ -z "$HEARTBEAT_PID" ]] || kill "$HEARTBEAT_PID" 2>/dev/null || true
  ((rc != 0)) || return 0
  if [[ "$CFG_ON_BOOT_FAILURE" == "stay" ]]; then
    log ERROR "boot failed (exit ${rc}); ltxv-on-boot-failure=stay: the VM stays up, debug it"
  else
    log ERROR "boot failed (exit ${rc}); powering off so that the instance group recreates the VM"
    systemctl poweroff || shutdown -h now
  fi
}

# ---- Configuration ---------------------------------------------------------------------

# metadata_get PATH [DEFAULT]: a missing key (HTTP 404, curl exit 22) gives DEFAULT, or
# fails without one; an unreachable metadata server always fails.
metadata_get() {
  local path="$1" value rc=0
  value="$(curl --silent --fail --retry 5 --retry-connrefused --retry-delay 1 \
    --connect-timeout 5 --max-time 20 -H "Metadata-Flavor: Google" \
    "${METADATA_URL}/${path}")" || rc=$?
  if ((rc == 0)); then
    printf '%s' "$value"
  elif ((rc == 22)) && (($# > 1)); then
    printf '%s' "$2"
  elif ((rc == 22)); then
    die "required metadata key '${path##*/}' is not set on this instance (instance template metadata)"
  else
    die "cannot read '${path}' from the metadata server (curl exit ${rc})"
  fi
}

attr() { metadata_get "instance/attributes/$1" "${@:2}"; }

# Values go unquoted into a systemd EnvironmentFile, paths and bucket names: plain only.
require_match() {
  [[ "$2" =~ $3 ]] || die "metadata $1='$2' is not valid (expected $3)"
}

# cfg VAR KEY DEFAULT REGEX: metadata KEY (DEFAULT "-": required) into VAR, checked.
cfg() {
  local value
  if [[ "$3" == "-" ]]; then value="$(attr "$2")"; else value="$(attr "$2" "$3")"; fi
  require_match "$2" "$value" "$4"
  printf -v "$1" '%s' "$value"
}

read_config() {
  local model='^[A-Za-z0-9][-A-Za-z0-9_.]*$' project
  cfg CFG_ON_BOOT_FAILURE ltxv-on-boot-failure poweroff '^(poweroff|stay)$'
  project="$(attr ltxv-project "")"
  [[ -n "$project" ]] || project="$(metadata_get project/project-id)"
  require_match ltxv-project "$project" '^[a-z][-a-z0-9.:]{4,62}$'
  CFG_PROJECT="$project"
  cfg CFG_PREFIX ltxv-prefix - '^[a-z0-9][-a-z0-9]{0,40}$'
  cfg CFG_MODEL ltxv-model - "$model"
  # The deployment's default model: its pool also takes messages that name no model.
  cfg CFG_DEFAULT_MODEL ltxv-default-model "$CFG_MODEL" "$model"
  cfg CFG_WORKER_PACKAGE ltxv-worker-package - '^gs://[a-z0-9][-a-z0-9_.]*/[^[:space:]]+\.(whl|tar\.gz|zip)$'
  cfg CFG_SHUTDOWN_GRACE_SECONDS ltxv-shutdown-grace-seconds "$DEFAULT_SHUTDOWN_GRACE_SECONDS" '^[0-9]+$'
  if ((CFG_SHUTDOWN_GRACE_SECONDS < 1 || CFG_SHUTDOWN_GRACE_SECONDS > MAX_SHUTDOWN_GRACE_SECONDS)); then
    die "metadata ltxv-shutdown-grace-seconds=${CFG_SHUTDOWN_GRACE_SECONDS} must be 1..${MAX_SHUTDOWN_GRACE_SECONDS}:" \
      "systemd kills the worker 25 s after SIGTERM and a spot VM stops ~30 s after its preemption notice"
  fi
  cfg CFG_LOG_LEVEL ltxv-log-level INFO '^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$'
  cfg CFG_SUBSCRIPTION ltxv-subscription "" '^[-A-Za-z0-9_.~+%]*$'
  cfg CFG_OUTPUTS_BUCKET ltxv-outputs-bucket "" '^[-a-z0-9_.]*$'
  cfg CFG_TORCH_INDEX_URL ltxv-torch-index-url "" '^(https://[^[:space:]]+)?$'
  cfg CFG_WORKER_EXTRAS ltxv-worker-extras worker '^[-A-Za-z0-9_,]*$'
  cfg CFG_BOOT_READY_SECONDS ltxv-boot-ready-seconds 900 '^[0-9]+$'
  info "config: project=${CFG_PROJECT} prefix=${CFG_PREFIX} model=${CFG_MODEL}" \
    "default-model=${CFG_DEFAULT_MODEL} package=${CFG_WORKER_PACKAGE} grace=${CFG_SHUTDOWN_GRACE_SECONDS}s"
}

model_dir() { printf '%s' "/var/lib/ltxv/models/${CFG_MODEL}"; }
cache_bucket() { printf '%s' "gs://${CFG_PREFIX}-model-cache"; }

# write_if_changed PATH MODE: stdin becomes PATH (atomically) unless PATH holds exactly
# that; sets CHANGED when it wrote.
write_if_changed() {
  local path="$1" tmp
  mkdir -p "$(dirname "$path")"
  tmp="$(mktemp "${path}.XXXXXX")"
  cat >"$tmp"
  chmod "$2" "$tmp"
  if [[ -f "$path" ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    return 0
  fi
  mv -f "$tmp" "$path"
  CHANGED=1
  info "wrote ${path#"$VM_ROOT"}"
}

# The worker's settings (src/ltxv/core/settings.py), read by systemd as root: mode 0640.
write_env_file() {
  write_if_changed "$ENV_FILE" 0640 < <(
    echo "# Written by gpu_worker/vm/startup.sh from instance metadata on every boot; edits are lost."
    echo "LTXV_PROJECT=${CFG_PROJECT}"
    echo "GOOGLE_CLOUD_PROJECT=${CFG_PROJECT}"
    echo "LTXV_PREFIX=${CFG_PREFIX}"
    echo "LTXV_WORKER_MODEL=${CFG_MODEL}"
    echo "LTXV_DEFAULT_MODEL=${CFG_DEFAULT_MODEL}"
    echo "LTXV_MODEL_DIR=$(model_dir)"
    # Compiled transformer blocks, shared with the VMs that come later (compile_cache.py).
    echo "LTXV_COMPILE_CACHE_URI=$(cache_bucket)/compile-cache"
    echo "LTXV_SHUTDOWN_GRACE_SECONDS=${CFG_SHUTDOWN_GRACE_SECONDS}"
    echo "LTXV_LOG_LEVEL=${CFG_LOG_LEVEL}"
    [[ -z "$CFG_SUBSCRIPTION" ]] || echo "LTXV_SUBSCRIPTION=${CFG_SUBSCRIPTION}"
    [[ -z "$CFG_OUTPUTS_BUCKET" ]] || echo "LTXV_OUTPUTS_BUCKET=${CFG_OUTPUTS_BUCKET}"
    # GET /healthz on every address (the MIG's probes come from Google's ranges).
    echo "LTXV_HEALTH_PORT=${HEALTH_PORT}"
    echo "LTXV_HEALTH_HOST=0.0.0.0"
    # What the loader still asks the hub for (diffusers' model configs) is cached here.
    echo "HF_HOME=/var/cache/ltxv/huggingface"
    echo "PYTHONUNBUFFERED=1"
  )
}

# ---- GPUs, user, disks -----------------------------------------------------------------

# Sets GPU_INDICES (nvidia-smi's) and DRIVER_CUDA (the newest CUDA the driver supports).
check_gpus() {
  local out="" rc=1 deadline=$((SECONDS + NVIDIA_WAIT_SECONDS)) line index
  command -v nvidia-smi >/dev/null 2>&1 ||
    die "NVIDIA driver check failed: nvidia-smi not found; use a GPU image with the driver" \
      "(Deep Learning VM common-cu128-ubuntu-2404-nvidia-570) and attach a GPU"
  while :; do
    rc=0
    out="$(nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>&1)" || rc=$?
    ((rc != 0)) || [[ -z "$out" ]] || break
    ((SECONDS < deadline)) ||
      die "NVIDIA driver check failed: nvidia-smi exited ${rc} (${out:-no GPU listed}); no GPU" \
        "attached, or the driver is not loaded (see: dmesg | grep -i nvidia)"
    info "nvidia-smi not ready (exit ${rc}); retrying"
    sleep "$POLL_SECONDS"
  done
  GPU_INDICES=()
  while IFS= read -r line; do
    [[ -n "$line" ]] || continue
    index="${line%%,*}"
    index="${index//[[:space:]]/}"
    [[ "$index" =~ ^[0-9]+$ ]] || die "NVIDIA driver check failed: unexpected nvidia-smi line '${line}'"
    GPU_INDICES+=("$index")
    info "GPU ${line}"
  done <<<"$out"
  ((${#GPU_INDICES[@]} > 0)) || die "NVIDIA driver check failed: nvidia-smi lists no GPU"
  DRIVER_CUDA="$(nvidia-smi -q 2>/dev/null | sed -n 's/^[[:space:]]*CUDA Version[[:space:]]*:[[:space:]]*\([0-9.]*\).*/\1/p' | head -n 1)" || true
  info "${#GPU_INDICES[@]} GPU(s); driver supports CUDA ${DRIVER_CUDA:-unknown}"
}

torch_index_url() {
  if [[ -n "$CFG_TORCH_INDEX_URL" ]]; then
    printf '%s' "$CFG_TORCH_INDEX_URL"
  elif [[ "${DRIVER_CUDA%%.*}" =~ ^[0-9]+$ ]] && ((${DRIVER_CUDA%%.*} >= 13)); then
    printf '%s' "$TORCH_INDEX_URL_CUDA13"
  else
    printf '%s' "$TORCH_INDEX_URL_CUDA12"
  fi
}

ensure_user() {
  getent group "$SERVICE_GROUP" >/dev/null || groupadd --system "$SERVICE_GROUP"
  if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --gid "$SERVICE_GROUP" --home-dir /var/lib/ltxv --no-create-home \
      --shell /usr/sbin/nologin --comment "ltxv GPU worker" "$SERVICE_USER"
  fi
  # The service user's before systemd sees StateDirectory= (no chown of the models tree).
  install -d -o "$SERVICE_USER" -g "$SERVICE_GROUP" -m 0750 "$STATE_DIR" "$CACHE_DIR"
  install -d -o "$SERVICE_USER" -g "$SERVICE_GROUP" -m 0755 "$MODELS_DIR"
  install -d -m 0755 "$OPT_DIR" "$DIST_DIR" "$ETC_DIR"
  # A local NVMe SSD, when attached, holds the models (formatted if blank: lost on stop).
  local dev="${VM_ROOT}/dev/disk/by-id/google-local-nvme-ssd-0"
  if [[ -b "$dev" ]] && ! mountpoint -q "$MODELS_DIR"; then
    blkid "$dev" >/dev/null 2>&1 || mkfs.ext4 -q -F -L ltxv-models "$dev"
    mount -o discard,defaults "$dev" "$MODELS_DIR"
    chown "$SERVICE_USER:$SERVICE_GROUP" "$MODELS_DIR"
    info "models on local SSD ${dev}"
  fi
}

# ---- The shared caches in gs://PREFIX-model-cache/ (model weights, worker envs) ----------

# gcs_exists URI: 0 if the object exists, 1 if not; dies on any other error (permissions,
# no bucket), so a misconfiguration is not mistaken for an empty cache.
gcs_exists() {
  local err
  err="$(gcloud storage objects describe "$1" --format='value(name)' 2>&1 >/dev/null)" && return 0
  [[ "$err" == *"not found"* || "$err" == *"404"* || "$err" == *"matched no objects"* ]] && return 1
  die "cannot read $1: ${err}"
}

generation() { gcloud storage objects describe "$1" --format='value(generation)' 2>/dev/null; }

# lock_beat URI GENERATION: rewrites this VM's lock with the time now, every
# LOCK_BEAT_SECONDS, each write conditional on the last one's generation (a lock another VM
# broke and took is never touched). Runs in the background while this VM fills a cache.
lock_beat() {
  local uri="$1" gen="$2" nap
  # Stopped with its sleep: a sleep left behind would hold the boot's output open.
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  while :; do
    sleep "$LOCK_BEAT_SECONDS" &
    nap=$!
    wait "$nap"
    printf '%s %s\n' "$(hostname)" "$(date +%s)" |
      gcloud storage cp --quiet --if-generation-match="$gen" - "$uri" 2>/dev/null || return 0
    gen="$(generation "$uri")" || return 0
  done
}

# cached DIR WAIT FETCH FILL TIMEOUT: one VM fills a cache directory, the others copy it.
# DIR/.complete exists: FETCH copies the cache down. Otherwise the VM that creates DIR/.lock
# (--if-generation-match=0, so only one can) runs FILL, which uploads into DIR, writes
# DIR/.complete last and removes its lock, keeping the lock fresh meanwhile (lock_beat);
# the others wait, and after WAIT seconds run TIMEOUT. A lock left by this host (a
# preempted boot) or not rewritten for LOCK_STALE_SECONDS is removed, conditionally on its
# generation, so that two VMs cannot both take it over.
cached() {
  local dir="$1" wait="$2" fetch="$3" fill="$4" timeout="$5" deadline gen holder since now
  deadline=$((SECONDS + wait))
  while :; do
    if gcs_exists "${dir}/.complete"; then
      "$fetch"
      return 0
    fi
    if printf '%s %s\n' "$(hostname)" "$(date +%s)" |
      gcloud storage cp --quiet --if-generation-match=0 - "${dir}/.lock" 2>/dev/null; then
      info "${dir}/ is empty; this VM fills it"
      gen="$(generation "${dir}/.lock")" || gen=0
      lock_beat "${dir}/.lock" "$gen" &
      HEARTBEAT_PID=$!
      "$fill"
      kill "$HEARTBEAT_PID" 2>/dev/null || true
      wait "$HEARTBEAT_PID" 2>/dev/null || true
      HEARTBEAT_PID=""
      printf '{"host": "%s", "time": %s}\n' "$(hostname)" "$(date +%s)" |
        gcloud storage cp --quiet --if-generation-match=0 - "${dir}/.complete" ||
        gcs_exists "${dir}/.complete" || die "cannot write ${dir}/.complete"
      gen="$(generation "${dir}/.lock")" && gcloud storage rm --quiet --if-generation-match="$gen" "${dir}/.lock" || true
      info "${dir}/ filled"
      return 0
    fi
    gen="$(generation "${dir}/.lock")" ||
      die "cannot create ${dir}/.lock: does $(cache_bucket) exist, and may the VM's service account create objects in it?"
    read -r holder since < <(gcloud storage cat "${dir}/.lock" 2>/dev/null || true) || true
    now="$(date +%s)"
    [[ "$since" =~ ^[0-9]+$ ]] || since=0
    if [[ "$holder" == "$(hostname)" ]] || ((now - since > LOCK_STALE_SECONDS)); then
      warn "breaking stale cache lock ${dir}/.lock (holder ${holder:-unknown}, since ${since})"
      gcloud storage rm --quiet --if-generation-match="$gen" "${dir}/.lock" || true
      continue
    fi
    if ((SECONDS >= deadline)); then
      "$timeout"
      return 0
    fi
    info "${dir}/ is being filled by ${holder} (lock rewritten $((now - since))s ago); waiting"
    sleep "$POLL_SECONDS"
  done
}

# ---- The worker's environment: /opt/ltxv/venv, one per key -------------------------------

# The system python3 builds the venv; the package requires Python >= 3.11.
check_python() {
  PYTHON="$(command -v python3)" || die "no python3 on this image"
  PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ||
    die "${PYTHON} does not run"
  if ! [[ "$PY_VERSION" =~ ^3\.([0-9]+)$ ]] || ((BASH_REMATCH[1] < 11)); then
    die "${PYTHON} is Python ${PY_VERSION}; the worker needs Python >= 3.11 (pyproject.toml):" \
      "use an Ubuntu 24.04 image (Deep Learning VM family common-cu128-ubuntu-2404-nvidia-570)"
  fi
}

# What the venv depends on; a VM whose key matches an archive's may unpack it.
env_key() {
  local distro
  # shellcheck source=/dev/null
  distro="$(. "${VM_ROOT}/etc/os-release" 2>/dev/null && echo "${ID:-}-${VERSION_ID:-}")" || distro=unknown
  printf 'package-sha256=%s torch=%s index=%s extras=%s python=%s distro=%s\n' "$PKG_SHA" \
    "$TORCH_VERSION" "$(torch_index_url)" "$CFG_WORKER_EXTRAS" "$PY_VERSION" "$distro" |
    sha256sum | cut -d' ' -f1
}

pip() { "${VENV}/bin/python" -m pip --quiet --disable-pip-version-check --no-input "$@"; }

# The venv from the package indexes: torch from the driver's index first (so the package's
# own torch requirement is already satisfied by that build), then the package.
build_env() {
  local spec="$PKG_FILE"
  [[ -z "$CFG_WORKER_EXTRAS" ]] || spec="${PKG_FILE}[${CFG_WORKER_EXTRAS}]"
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    info "installing the venv module for ${PYTHON}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${PY_VERSION}-venv"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  pip install --upgrade pip
  info "installing torch==${TORCH_VERSION} from $(torch_index_url), then ${PKG_FILE##*/}"
  pip install --index-url "$(torch_index_url)" "torch==${TORCH_VERSION}"
  pip install "$spec"
}

# Build, pack (tar + multithreaded zstd) and upload: the first VM of a key.
fill_env() {
  local archive="${OPT_DIR}/venv.tar.zst"
  build_env
  tar -C "$OPT_DIR" -cf - venv | zstd -q -T0 -3 -f -o "$archive"
  info "uploading ${VENV#"$VM_ROOT"} ($(du -sh "$VENV" | cut -f1), packed $(du -h "$archive" | cut -f1))"
  gcloud storage cp --quiet "$archive" "${ENV_URI}/venv.tar.zst"
  rm -f "$archive"
}

# Download (parallel) and unpack beside the venv, then swap it in; pip if that fails.
fetch_env() {
  local archive="${OPT_DIR}/venv.tar.zst" tmp
  tmp="$(mktemp -d "${OPT_DIR}/.venv.XXXXXX")"
  if gcloud storage cp --quiet "${ENV_URI}/venv.tar.zst" "$archive" &&
    zstd -q -d -T0 -c "$archive" | tar -x -C "$tmp" && [[ -d "${tmp}/venv" ]]; then
    rm -rf "$VENV"
    mv "${tmp}/venv" "$VENV"
    info "unpacked ${ENV_URI}/venv.tar.zst ($(du -h "$archive" | cut -f1))"
  else
    warn "cannot fetch or unpack ${ENV_URI}/venv.tar.zst; installing with pip instead"
    build_env
  fi
  rm -rf "$tmp" "$archive"
}

# Skipped when the venv already is the key's (a restarted or standby VM's own disk).
ensure_env() {
  local key
  PKG_FILE="${DIST_DIR}/${CFG_WORKER_PACKAGE##*/}"
  gcloud storage cp --quiet "$CFG_WORKER_PACKAGE" "${PKG_FILE}.download"
  mv -f "${PKG_FILE}.download" "$PKG_FILE"
  PKG_SHA="$(sha256sum "$PKG_FILE" | cut -d' ' -f1)"
  check_python
  key="$(env_key)"
  if [[ "$(cat "$ENV_STAMP" 2>/dev/null)" == "$key" ]] && "${VENV}/bin/python" -c 'import gpu_worker' 2>/dev/null; then
    info "environment ${key:0:12} (package sha256 ${PKG_SHA:0:12}) already in place"
    return 0
  fi
  # Not under a running worker: SIGTERM requeues its job; start_workers brings it back.
  systemctl stop 'ltxv-worker@*.service' || true
  rm -f "$ENV_STAMP"
  ENV_URI="$(cache_bucket)/envs/${key}"
  command -v zstd >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd || true
  if command -v zstd >/dev/null 2>&1; then
    cached "$ENV_URI" "$ENV_WAIT_SECONDS" fetch_env fill_env build_env
  else
    warn "no zstd: building the environment here without the shared archive"
    build_env
  fi
  echo "$key" >"$ENV_STAMP"
  CHANGED=1
}

verify_torch_cuda() {
  local report
  report="$("${VENV}/bin/python" -c '
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print(torch.__version__, "CUDA", torch.version.cuda, "devices", torch.cuda.device_count())
' 2>&1)" || die "torch cannot use the GPU (${report##*$'\n'}); the torch build does not match" \
    "the driver (CUDA ${DRIVER_CUDA:-unknown}): set metadata ltxv-torch-index-url"
  info "torch ${report}"
}

# ---- Model weights: gs://PREFIX-model-cache/MODEL/ ---------------------------------------

# Copies the cache down; an exact mirror (files the cache lacks are removed locally).
download_model() {
  local local_dir
  local_dir="${VM_ROOT}$(model_dir)"
  mkdir -p "$local_dir"
  gcloud storage rsync --recursive --delete-unmatched-destination-objects \
    --exclude='^\.(complete|lock)$' "$(cache_bucket)/${CFG_MODEL}" "$local_dir"
  chown -R "$SERVICE_USER:$SERVICE_GROUP" "$local_dir"
  info "model ${CFG_MODEL} ready in $(model_dir) ($(du -sh "$local_dir" | cut -f1))"
}

# The first VM: the hub, with the worker's own code as the service user, then the upload.
fill_model_cache() {
  local local_dir
  local_dir="${VM_ROOT}$(model_dir)"
  mkdir -p "$local_dir"
  chown -R "$SERVICE_USER:$SERVICE_GROUP" "$local_dir"
  info "fetching ${CFG_MODEL} from the hub with python -m gpu_worker.fetch_model"
  (
    set -a
    # shellcheck source=/dev/null
    . "$ENV_FILE"
    set +a
    export LTXV_MODEL_DIR="$local_dir" HF_HOME="${CACHE_DIR}/huggingface"
    cd "$local_dir"
    runuser -u "$SERVICE_USER" -- "${VENV}/bin/python" -m gpu_worker.fetch_model
  ) || die "python -m gpu_worker.fetch_model failed for ${CFG_MODEL}"
  gcloud storage rsync --recursive --exclude='^\.(complete|lock)$' "$local_dir" "$(cache_bucket)/${CFG_MODEL}"
}

model_wait_timeout() {
  die "timed out after ${MODEL_WAIT_SECONDS}s waiting for another VM to fill $(cache_bucket)/${CFG_MODEL}/"
}

ensure_model() {
  local kind
  # The profile's source kind (schemas/model-profiles.json); fails on a model without one.
  kind="$("${VENV}/bin/python" -c '
import sys
from ltxv.core.profiles import all_profiles
profiles = all_profiles()
if sys.argv[1] not in profiles:
    sys.exit(f"no model profile {sys.argv[1]!r}; profiles: {sorted(profiles)}")
print(profiles[sys.argv[1]].source["kind"])
' "$CFG_MODEL")" || die "model ${CFG_MODEL} has no usable profile (see the error above)"
  if [[ "$kind" != "huggingface" ]]; then
    info "model ${CFG_MODEL} (source ${kind}) needs no weights"
    return 0
  fi
  cached "$(cache_bucket)/${CFG_MODEL}" "$MODEL_WAIT_SECONDS" download_model fill_model_cache model_wait_timeout
}

# ---- Ops Agent: the workers' JSON log lines as structured Cloud Logging entries ----------

# packaged NAME: the path of gpu_worker/vm/NAME in the installed worker package.
packaged() {
  local path
  path="$("${VENV}/bin/python" -c 'import pathlib, sys, gpu_worker
print(pathlib.Path(gpu_worker.__file__).parent / "vm" / sys.argv[1])' "$1")" &&
    [[ -f "$path" ]] || die "the worker package has no gpu_worker/vm/$1"
  printf '%s' "$path"
}


# Installed from the internet only when absent; restarted only when its config changed.
install_ops_agent() {
  local changed=$CHANGED installer
  if ! systemctl cat google-cloud-ops-agent.service >/dev/null 2>&1; then
    info "installing the Ops Agent"
    installer="$(mktemp)"
    if ! curl --silent --show-error --fail --retry 5 -o "$installer" "$OPS_AGENT_INSTALLER" ||
      ! bash "$installer" --also-install; then
      rm -f "$installer"
      # Not fatal, so not an ERROR line (those count as failed boots, monitoring.tf).
      warn "Ops Agent install failed: worker logs stay in the journal only"
      return 0
    fi
    rm -f "$installer"
  fi
  CHANGED=0
  write_if_changed "$OPS_AGENT_CONFIG" 0644 <"$(packaged ops-agent.yaml)"
  if ((CHANGED)) || ! systemctl is-active --quiet google-cloud-ops-agent; then
    systemctl enable google-cloud-ops-agent
    systemctl restart google-cloud-ops-agent
    info "Ops Agent configured"
  fi
  CHANGED=$changed
}

# ---- The workers -------------------------------------------------------------------------

# The unit from the installed package; one instance per GPU, started here on every boot (not
# enabled: a worker runs only after a boot that set up its package, settings and weights).
start_workers() {
  local index name keep
  write_if_changed "${SYSTEMD_DIR}/${UNIT_NAME}" 0644 <"$(packaged "$UNIT_NAME")"
  systemctl daemon-reload
  for index in "${GPU_INDICES[@]}"; do
    if ((CHANGED)); then
      systemctl restart "ltxv-worker@${index}.service"
    else
      systemctl start "ltxv-worker@${index}.service"
    fi
    info "started ltxv-worker@${index} (CUDA_VISIBLE_DEVICES=${index}, /healthz on :$((HEALTH_PORT + index)))"
  done
  while read -r name _; do # instances for GPUs this VM no longer has
    [[ "$name" =~ ^ltxv-worker@([0-9]+)\.service$ ]] || continue
    keep=0
    for index in "${GPU_INDICES[@]}"; do [[ "${BASH_REMATCH[1]}" == "$index" ]] && keep=1; done
    if ((!keep)); then
      warn "stopping ${name}: no GPU ${BASH_REMATCH[1]}"
      systemctl disable --now --no-block "$name" || true
    fi
  done < <(systemctl list-units --all --plain --no-legend 'ltxv-worker@*.service' 2>/dev/null || true)
}

# A VM the group creates for its standby pool (terraform worker_standby_stopped) boots,
# fills its disk and is stopped by the group once standby_policy.initial_delay_sec has
# passed. A worker started on it would take a job and be stopped in the middle of it (one
# more delivery attempt spent), so such a boot waits before the workers start: for the
# stop, or for the group to claim the still-running VM for a scale-out (then its workers
# start at once). The group marks those VMs: their managed instance's targetStatus is
# STOPPED (instanceGroupManagers.listManagedInstances); the group is named in the
# `created-by` metadata it sets on its VMs. Any doubt (no group, no answer) is a normal
# boot.
target_status() {
  local created_by scope location group name
  created_by="$(attr created-by "")"
  [[ "$created_by" =~ /(region|zone)s/([^/]+)/instanceGroupManagers/([^/]+)$ ]] || return 0
  scope="${BASH_REMATCH[1]}" location="${BASH_REMATCH[2]}" group="${BASH_REMATCH[3]}"
  name="$(metadata_get instance/name)"
  gcloud compute instance-groups managed list-instances "$group" "--${scope}=${location}" \
    --project="$CFG_PROJECT" --filter="instance~/instances/${name}\$" \
    --format='value(targetStatus)' ||
    warn "cannot read this VM's target status from instance group ${group}: booting as a worker"
}

wait_while_standby() {
  [[ "$(target_status)" == "STOPPED" ]] || return 0
  info "prepared for the group's standby pool in ${SECONDS} s: no worker runs until the" \
    "group starts this VM (or claims it now for a scale-out)"
  # The group's stop is a shutdown: SIGTERM ends this wait, and is no failed boot.
  trap 'info "stopped by the group: in its standby pool now"; trap - EXIT; exit 0' TERM
  while [[ "$(target_status)" == "STOPPED" ]]; do
    sleep "$STANDBY_POLL_SECONDS" &
    wait $!
  done
  trap - TERM
  info "the group claims this VM for a scale-out: starting its workers"
}

# A worker that crash-loops or never loads fails the boot here, within the model load budget.
wait_ready() {
  local url="http://127.0.0.1:$((HEALTH_PORT + GPU_INDICES[0]))/healthz" body="" deadline
  deadline=$((SECONDS + CFG_BOOT_READY_SECONDS))
  while :; do
    if body="$(curl --silent --fail-with-body --max-time 5 "$url" 2>/dev/null)"; then
      info "ltxv-worker@${GPU_INDICES[0]} is ready: ${body}"
      return 0
    fi
    ((SECONDS < deadline)) || die "ltxv-worker@${GPU_INDICES[0]} not ready at ${url} after" \
      "${CFG_BOOT_READY_SECONDS}s (metadata ltxv-boot-ready-seconds); last answer: ${body:-none};" \
      "see journalctl -u ltxv-worker@${GPU_INDICES[0]}"
    sleep "$HEALTH_POLL_SECONDS"
  done
}

main() {
  trap 'log ERROR "failed at line ${LINENO}: ${BASH_COMMAND}"' ERR
  trap on_exit EXIT
  mkdir -p "${VM_ROOT}/run/lock" # one run at a time (a manual re-run during the boot's)
  exec 9>"${VM_ROOT}/run/lock/ltxv-startup.lock"
  flock -w 3600 9 || die "another ltxv startup run holds ${VM_ROOT}/run/lock/ltxv-startup.lock"
  info "starting on $(hostname)"
  stage config read_config
  stage gpus check_gpus
  stage user ensure_user
  stage env ensure_env
  stage torch verify_torch_cuda
  write_env_file
  stage model ensure_model
  stage ops-agent install_ops_agent
  wait_while_standby
  stage workers start_workers
  stage ready wait_ready
  info "done in ${SECONDS} s: ${#GPU_INDICES[@]} worker(s) for model ${CFG_MODEL}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
