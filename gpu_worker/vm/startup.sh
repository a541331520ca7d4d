#!/usr/bin/env bash
# Boot script of an ltxv GPU worker VM: the instance template's `startup-script` metadata.
#
# Runs as root on every boot of a GPU-ready image (a Deep Learning VM `common-cu12x`
# image: Debian/Ubuntu with the NVIDIA driver preinstalled) and is safe to run again by
# hand (`sudo google_metadata_script_runner startup`). In order, it:
#   1. reads its configuration from instance metadata (keys `ltxv-*`, see README.md);
#   2. checks the NVIDIA driver with nvidia-smi and counts the GPUs (no GPU: exit 1);
#   3. creates the service user `ltxv`, installs torch and the worker package into the
#      venv /opt/ltxv/venv (skipped when what is installed is what metadata asks for);
#   4. writes /etc/ltxv/worker.env, the worker's LTXV_* settings (mode 0640);
#   5. syncs the model's weights from gs://PREFIX-model-cache/MODEL/ to
#      /var/lib/ltxv/models/MODEL; on the very first boot of a deployment, when the cache
#      is empty, one VM (the holder of a lock object) fetches them from the hub with
#      `python -m gpu_worker.fetch_model` and uploads them, with a `.complete` marker last;
#   6. installs the Ops Agent and its config, so the workers' JSON log lines reach Cloud
#      Logging as structured entries;
#   7. installs the systemd template unit ltxv-worker@.service and starts one instance
#      per GPU: ltxv-worker@0, ltxv-worker@1, ... each with CUDA_VISIBLE_DEVICES=<index>.
#
# Its output goes to the journal (`journalctl -u google-startup-scripts`), the serial
# console and Cloud Logging, every line prefixed `ltxv-startup:`. Any failure exits
# non-zero with an ERROR line saying what failed.
#
# The logic lives in functions; `main` runs only when the file is executed, so tests can
# source it and call the functions with stub commands on PATH (tests/worker/test_vm_files.py).
# VM_ROOT (empty on a VM) prefixes every path the script writes, for those tests.

set -Eeuo pipefail

# ---- Knobs (environment overrides are for tests and manual runs; metadata is the API) --

VM_ROOT="${VM_ROOT:-}"
SERVICE_USER="${SERVICE_USER:-ltxv}"
SERVICE_GROUP="${SERVICE_GROUP:-ltxv}"
METADATA_URL="${METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}"

# torch is pinned here, not in the worker package, because the right build depends on the
# image's driver. torch==2.13.0's default wheel on PyPI is built for CUDA 13.0 (it requires
# cuda-toolkit 13.0.x; seen with `pip install --dry-run --report torch==2.13.0`), and CUDA
# 13 needs an NVIDIA driver >= 580. The common-cu12x images ship 570/575-series drivers
# (CUDA 12.8/12.9) on which that wheel sees no GPU. So `torch_index_url` picks:
#   driver supports CUDA >= 13  -> PyPI (its default build is CUDA 13.0);
#   driver supports CUDA 12.x   -> PyTorch's cu128 index, whose wheels run on any CUDA 12
#                                  driver (minor-version compatibility) and include the
#                                  L4's sm_89 kernels.
# Metadata `ltxv-torch-index-url` overrides the choice (e.g. .../whl/cu126 or .../whl/cu129
# if a torch release stops publishing cu128). Whatever is chosen, `verify_torch_cuda`
# fails the boot when torch cannot see the GPU.
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX_URL_CUDA13="https://pypi.org/simple"
TORCH_INDEX_URL_CUDA12="https://download.pytorch.org/whl/cu128"

# The worker's grace period (LTXV_SHUTDOWN_GRACE_SECONDS) must end before systemd's
# TimeoutStopSec (25 s in ltxv-worker@.service) and a spot VM's ~30 s preemption window.
DEFAULT_SHUTDOWN_GRACE_SECONDS=20
MAX_SHUTDOWN_GRACE_SECONDS=24

# How long to wait for nvidia-smi (an image may still be building its driver module on
# first boot), and for another VM that is filling the model cache.
NVIDIA_WAIT_SECONDS="${NVIDIA_WAIT_SECONDS:-180}"
MODEL_WAIT_SECONDS="${MODEL_WAIT_SECONDS:-5400}"
MODEL_LOCK_STALE_SECONDS="${MODEL_LOCK_STALE_SECONDS:-3600}"
POLL_SECONDS="${POLL_SECONDS:-30}"

UNIT_NAME="ltxv-worker@.service"
OPS_AGENT_INSTALLER="https://dl.google.com/cloudagents/add-google-cloud-ops-agent-repo.sh"

# Paths on the VM. The unit file names the same ones (venv, env file, state directory).
ETC_DIR="${VM_ROOT}/etc/ltxv"
ENV_FILE="${ETC_DIR}/worker.env"
OPT_DIR="${VM_ROOT}/opt/ltxv"
VENV="${OPT_DIR}/venv"
INSTALL_STAMP="${OPT_DIR}/installed.txt"
TORCH_STAMP="${OPT_DIR}/torch.txt"
DIST_DIR="${OPT_DIR}/dist"
STATE_DIR="${VM_ROOT}/var/lib/ltxv"
CACHE_DIR="${VM_ROOT}/var/cache/ltxv"
MODELS_DIR="${STATE_DIR}/models"
SYSTEMD_DIR="${VM_ROOT}/etc/systemd/system"
OPS_AGENT_CONFIG="${VM_ROOT}/etc/google-cloud-ops-agent/config.yaml"

# Set by read_config / check_gpus.
CFG_PROJECT=""
CFG_PREFIX=""
CFG_MODEL=""
CFG_DEFAULT_MODEL=""
CFG_WORKER_PACKAGE=""
CFG_SHUTDOWN_GRACE_SECONDS=""
CFG_LOG_LEVEL=""
CFG_SUBSCRIPTION=""
CFG_OUTPUTS_BUCKET=""
CFG_TORCH_INDEX_URL=""
CFG_WORKER_EXTRAS=""
CFG_WORKER_UNIT=""
GPU_INDICES=()
DRIVER_CUDA=""
# What changed on this run (a running worker is restarted when one did).
CHANGED=0

# ---- Logging -----------------------------------------------------------------------

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

# ---- Configuration from instance metadata -------------------------------------------

# metadata_get PATH [DEFAULT]: a value from the metadata server. A missing key (HTTP 404,
# curl exit 22) gives DEFAULT, or fails when no default is given; an unreachable metadata
# server always fails.
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

# require_match NAME VALUE REGEX: values go unquoted into a systemd EnvironmentFile and
# into paths and bucket names, so each must be plain.
require_match() {
  local name="$1" value="$2" regex="$3"
  [[ "$value" =~ $regex ]] || die "metadata ${name}='${value}' is not valid (expected ${regex})"
}

read_config() {
  CFG_PROJECT="$(attr ltxv-project "")"
  if [[ -z "$CFG_PROJECT" ]]; then
    CFG_PROJECT="$(metadata_get project/project-id)"
  fi
  CFG_PREFIX="$(attr ltxv-prefix)"
  CFG_MODEL="$(attr ltxv-model)"
  # The deployment's default model: its pool also takes messages that name no model. A VM
  # of a one-model deployment may leave it out.
  CFG_DEFAULT_MODEL="$(attr ltxv-default-model "$CFG_MODEL")"
  CFG_WORKER_PACKAGE="$(attr ltxv-worker-package)"
  CFG_SHUTDOWN_GRACE_SECONDS="$(attr ltxv-shutdown-grace-seconds "$DEFAULT_SHUTDOWN_GRACE_SECONDS")"
  CFG_LOG_LEVEL="$(attr ltxv-log-level INFO)"
  CFG_SUBSCRIPTION="$(attr ltxv-subscription "")"
  CFG_OUTPUTS_BUCKET="$(attr ltxv-outputs-bucket "")"
  CFG_TORCH_INDEX_URL="$(attr ltxv-torch-index-url "")"
  CFG_WORKER_EXTRAS="$(attr ltxv-worker-extras worker)"
  CFG_WORKER_UNIT="$(attr ltxv-worker-unit "")"

  require_match ltxv-project "$CFG_PROJECT" '^[a-z][-a-z0-9.:]{4,62}$'
  require_match ltxv-prefix "$CFG_PREFIX" '^[a-z0-9][-a-z0-9]{0,40}$'
  require_match ltxv-model "$CFG_MODEL" '^[A-Za-z0-9][-A-Za-z0-9_.]*$'
  require_match ltxv-default-model "$CFG_DEFAULT_MODEL" '^[A-Za-z0-9][-A-Za-z0-9_.]*$'
  require_match ltxv-worker-package "$CFG_WORKER_PACKAGE" \
    '^gs://[a-z0-9][-a-z0-9_.]*/[^[:space:]]+\.(whl|tar\.gz|zip)$'
  require_match ltxv-shutdown-grace-seconds "$CFG_SHUTDOWN_GRACE_SECONDS" '^[0-9]+$'
  if ((CFG_SHUTDOWN_GRACE_SECONDS < 1 || CFG_SHUTDOWN_GRACE_SECONDS > MAX_SHUTDOWN_GRACE_SECONDS)); then
    die "metadata ltxv-shutdown-grace-seconds=${CFG_SHUTDOWN_GRACE_SECONDS} must be 1..${MAX_SHUTDOWN_GRACE_SECONDS}:" \
      "systemd kills the worker 25 s after SIGTERM and a spot VM stops ~30 s after its preemption notice"
  fi
  require_match ltxv-log-level "$CFG_LOG_LEVEL" '^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$'
  require_match ltxv-subscription "$CFG_SUBSCRIPTION" '^[-A-Za-z0-9_.~+%]*$'
  require_match ltxv-outputs-bucket "$CFG_OUTPUTS_BUCKET" '^[-a-z0-9_.]*$'
  require_match ltxv-torch-index-url "$CFG_TORCH_INDEX_URL" '^(https://[^[:space:]]+)?$'
  require_match ltxv-worker-extras "$CFG_WORKER_EXTRAS" '^[-A-Za-z0-9_,]*$'
  info "config: project=${CFG_PROJECT} prefix=${CFG_PREFIX} model=${CFG_MODEL}" \
    "default-model=${CFG_DEFAULT_MODEL}" \
    "package=${CFG_WORKER_PACKAGE} grace=${CFG_SHUTDOWN_GRACE_SECONDS}s"
}

model_dir() { printf '%s' "/var/lib/ltxv/models/${CFG_MODEL}"; }
model_cache_uri() { printf '%s' "gs://${CFG_PREFIX}-model-cache/${CFG_MODEL}"; }

# write_if_changed PATH MODE: stdin becomes PATH (atomically) unless PATH already holds
# exactly that; WROTE says whether it wrote.
WROTE=0
write_if_changed() {
  local path="$1" mode="$2" tmp
  WROTE=0
  mkdir -p "$(dirname "$path")"
  tmp="$(mktemp "${path}.XXXXXX")"
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -f "$path" ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    return 0
  fi
  mv -f "$tmp" "$path"
  WROTE=1
  info "wrote ${path#"$VM_ROOT"}"
}

# The worker's settings (src/ltxv/settings.py). Read by systemd (as root) before it drops
# to the service user, so the file stays root's: mode 0640.
write_env_file() {
  local content
  content="$(
    echo "# Written by gpu_worker/vm/startup.sh from instance metadata on every boot; edits are lost."
    echo "LTXV_PROJECT=${CFG_PROJECT}"
    echo "GOOGLE_CLOUD_PROJECT=${CFG_PROJECT}"
    echo "LTXV_PREFIX=${CFG_PREFIX}"
    echo "LTXV_WORKER_MODEL=${CFG_MODEL}"
    echo "LTXV_DEFAULT_MODEL=${CFG_DEFAULT_MODEL}"
    echo "LTXV_MODEL_DIR=$(model_dir)"
    echo "LTXV_SHUTDOWN_GRACE_SECONDS=${CFG_SHUTDOWN_GRACE_SECONDS}"
    echo "LTXV_LOG_LEVEL=${CFG_LOG_LEVEL}"
    [[ -z "$CFG_SUBSCRIPTION" ]] || echo "LTXV_SUBSCRIPTION=${CFG_SUBSCRIPTION}"
    [[ -z "$CFG_OUTPUTS_BUCKET" ]] || echo "LTXV_OUTPUTS_BUCKET=${CFG_OUTPUTS_BUCKET}"
    # The weights are in LTXV_MODEL_DIR before the workers start; what the loader still
    # asks the hub for (diffusers' single-file loader fetches model configs) is cached here.
    echo "HF_HOME=/var/cache/ltxv/huggingface"
    echo "PYTHONUNBUFFERED=1"
  )"
  write_if_changed "$ENV_FILE" 0640 <<<"$content"
  if ((WROTE)); then CHANGED=1; fi
}

# ---- GPUs -----------------------------------------------------------------------------

# Sets GPU_INDICES (nvidia-smi's indices) and DRIVER_CUDA (the newest CUDA the driver
# supports, e.g. 12.8). Exits 1 with the reason when the driver does not answer.
check_gpus() {
  local out="" rc=1 waited=0
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    die "NVIDIA driver check failed: nvidia-smi not found. Use a GPU image with the driver" \
      "preinstalled (Deep Learning VM common-cu12x) and attach a GPU."
  fi
  while :; do
    rc=0
    out="$(nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>&1)" || rc=$?
    if ((rc == 0)) && [[ -n "$out" ]]; then
      break
    fi
    if ((waited >= NVIDIA_WAIT_SECONDS)); then
      die "NVIDIA driver check failed: nvidia-smi exited ${rc} after ${waited}s (${out:-no GPU listed});" \
        "no GPU attached, or the driver is not loaded (see: dmesg | grep -i nvidia)"
    fi
    info "nvidia-smi not ready (exit ${rc}); retrying"
    sleep "$POLL_SECONDS"
    waited=$((waited + POLL_SECONDS))
  done
  GPU_INDICES=()
  local line index
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

# The pip index to install torch from (see TORCH_INDEX_URL_* above).
torch_index_url() {
  if [[ -n "$CFG_TORCH_INDEX_URL" ]]; then
    printf '%s' "$CFG_TORCH_INDEX_URL"
  elif [[ "${DRIVER_CUDA%%.*}" =~ ^[0-9]+$ ]] && ((${DRIVER_CUDA%%.*} >= 13)); then
    printf '%s' "$TORCH_INDEX_URL_CUDA13"
  else
    printf '%s' "$TORCH_INDEX_URL_CUDA12"
  fi
}

# ---- Service user and the worker's venv -----------------------------------------------

ensure_user() {
  if ! getent group "$SERVICE_GROUP" >/dev/null; then
    groupadd --system "$SERVICE_GROUP"
  fi
  if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --gid "$SERVICE_GROUP" --home-dir /var/lib/ltxv --no-create-home \
      --shell /usr/sbin/nologin --comment "ltxv GPU worker" "$SERVICE_USER"
    info "created user ${SERVICE_USER}"
  fi
  # Owned by the service user before systemd sees StateDirectory=, so systemd has no
  # reason to chown the (large) models tree below it on every start.
  install -d -o "$SERVICE_USER" -g "$SERVICE_GROUP" -m 0750 "$STATE_DIR"
  install -d -o "$SERVICE_USER" -g "$SERVICE_GROUP" -m 0750 "$CACHE_DIR"
  install -d -o "$SERVICE_USER" -g "$SERVICE_GROUP" -m 0755 "$MODELS_DIR"
  install -d -m 0755 "$OPT_DIR" "$DIST_DIR"
  install -d -m 0755 "$ETC_DIR"
}

# A local NVMe SSD, when the template attaches one, holds the models (faster loads).
# Its data does not survive a stop, so it is formatted when it has no filesystem.
mount_local_ssd() {
  local dev="${VM_ROOT}/dev/disk/by-id/google-local-nvme-ssd-0"
  [[ -b "$dev" ]] || return 0
  if mountpoint -q "$MODELS_DIR"; then
    return 0
  fi
  if ! blkid "$dev" >/dev/null 2>&1; then
    info "formatting local SSD ${dev}"
    mkfs.ext4 -q -F -L ltxv-models "$dev"
  fi
  mount -o discard,defaults "$dev" "$MODELS_DIR"
  chown "$SERVICE_USER:$SERVICE_GROUP" "$MODELS_DIR"
  info "models on local SSD ${dev}"
}

find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  die "no Python >= 3.11 on this image (the worker needs it); use an image based on" \
    "Debian 12 or Ubuntu 24.04"
}

ensure_venv() {
  local python
  if [[ -x "${VENV}/bin/python" ]] && "${VENV}/bin/python" -c 'import sys' 2>/dev/null; then
    return 0
  fi
  python="$(find_python)"
  rm -rf "$VENV"
  if ! "$python" -m venv "$VENV" 2>/dev/null; then
    info "installing the venv module for ${python}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$(basename "$python")-venv" ||
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
  fi
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  info "created venv ${VENV#"$VM_ROOT"} with $("${VENV}/bin/python" --version)"
}

# Installs torch and the worker package; skipped when the stamp says that this very package
# file (sha256), torch version and index are what the venv already holds.
install_worker() {
  local name file sha index want spec torch_want
  local -a torch_flags=()
  name="${CFG_WORKER_PACKAGE##*/}"
  file="${DIST_DIR}/${name}"
  gcloud storage cp --quiet "$CFG_WORKER_PACKAGE" "${file}.download"
  mv -f "${file}.download" "$file"
  sha="$(sha256sum "$file" | cut -d' ' -f1)"
  index="$(torch_index_url)"
  want="package=${name} sha256=${sha} torch=${TORCH_VERSION} index=${index} extras=${CFG_WORKER_EXTRAS}"
  if [[ -f "$INSTALL_STAMP" && "$(cat "$INSTALL_STAMP")" == "$want" ]] &&
    "${VENV}/bin/python" -c 'import gpu_worker, torch' 2>/dev/null; then
    info "worker package ${name} (sha256 ${sha:0:12}) already installed"
    return 0
  fi
  # Replacing files under a running worker is asking for trouble: stop them (SIGTERM,
  # so a job in progress is requeued) and let start_workers bring them back.
  systemctl stop 'ltxv-worker@*.service' || true
  ensure_venv
  # pip takes any installed 2.13.0 build as satisfying torch==2.13.0, so a build from
  # another index (another CUDA) is only replaced by force.
  torch_want="torch==${TORCH_VERSION} ${index}"
  if [[ -f "$TORCH_STAMP" && "$(cat "$TORCH_STAMP")" != "$torch_want" ]]; then
    torch_flags+=(--force-reinstall)
  fi
  info "installing torch==${TORCH_VERSION} from ${index}"
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "${torch_flags[@]}" --index-url "$index" "torch==${TORCH_VERSION}"
  echo "$torch_want" >"$TORCH_STAMP"
  spec="$file"
  [[ -z "$CFG_WORKER_EXTRAS" ]] || spec="${file}[${CFG_WORKER_EXTRAS}]"
  info "installing worker package ${name} (sha256 ${sha:0:12})"
  # First its dependencies (torch is already satisfied, so this build stays), then this
  # very file again: pip keeps an installed package of the same version otherwise.
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$spec"
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --force-reinstall --no-deps "$file"
  echo "$want" >"$INSTALL_STAMP"
  CHANGED=1
}

verify_torch_cuda() {
  local report
  if ! report="$("${VENV}/bin/python" -c '
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print(torch.__version__, "CUDA", torch.version.cuda, "devices", torch.cuda.device_count())
' 2>&1)"; then
    die "torch cannot use the GPU (${report##*$'\n'}); the torch build does not match the" \
      "driver (CUDA ${DRIVER_CUDA:-unknown}): set metadata ltxv-torch-index-url"
  fi
  info "torch ${report}"
}

# ---- Model weights ----------------------------------------------------------------------

# The profile's source kind (schemas/model-profiles.json), from the installed package; also
# fails early on a model name that has no profile.
model_source_kind() {
  "${VENV}/bin/python" -c '
import sys
from ltxv.profiles import all_profiles
profiles = all_profiles()
if sys.argv[1] not in profiles:
    sys.exit(f"no model profile {sys.argv[1]!r}; profiles: {sorted(profiles)}")
print(profiles[sys.argv[1]].source["kind"])
' "$CFG_MODEL"
}

# gcs_exists URI: 0 when the object exists, 1 when it does not; dies on any other error
# (permissions, missing bucket), so a misconfiguration is not mistaken for an empty cache.
gcs_exists() {
  local err
  if err="$(gcloud storage objects describe "$1" --format='value(name)' 2>&1 >/dev/null)"; then
    return 0
  fi
  if [[ "$err" == *"not found"* || "$err" == *"404"* || "$err" == *"matched no objects"* ]]; then
    return 1
  fi
  die "cannot read $1: ${err}"
}

# Copies the cache down; exact mirror (files the cache lacks are removed locally).
download_model() {
  local local_dir
  local_dir="${VM_ROOT}$(model_dir)"
  info "syncing $(model_cache_uri)/ to $(model_dir)"
  mkdir -p "$local_dir"
  gcloud storage rsync --recursive --delete-unmatched-destination-objects \
    --exclude='^\.(complete|lock)$' "$(model_cache_uri)" "$local_dir"
  chown -R "$SERVICE_USER:$SERVICE_GROUP" "$local_dir"
  info "model ${CFG_MODEL} ready in $(model_dir) ($(du -sh "$local_dir" | cut -f1))"
}

# Downloads the weights from the hub with the worker's own code, as the service user.
fetch_model_from_hub() {
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
}

# First boot of a deployment: fill the cache while holding the lock object.
fill_model_cache() {
  local cache lock_gen local_dir
  local_dir="${VM_ROOT}$(model_dir)"
  cache="$(model_cache_uri)"
  fetch_model_from_hub
  info "uploading $(model_dir) to ${cache}/"
  gcloud storage rsync --recursive --exclude='^\.(complete|lock)$' "$local_dir" "$cache"
  # The marker goes last and only once: a VM that sees it knows the upload is whole.
  printf '{"model": "%s", "host": "%s", "time": %s}\n' "$CFG_MODEL" "$(hostname)" "$(date +%s)" |
    gcloud storage cp --quiet --if-generation-match=0 - "${cache}/.complete" ||
    gcs_exists "${cache}/.complete" ||
    die "cannot write ${cache}/.complete"
  if lock_gen="$(gcloud storage objects describe "${cache}/.lock" --format='value(generation)' 2>/dev/null)"; then
    gcloud storage rm --quiet --if-generation-match="$lock_gen" "${cache}/.lock" || true
  fi
  chown -R "$SERVICE_USER:$SERVICE_GROUP" "$local_dir"
  info "model cache ${cache}/ filled"
}

# try_lock: 0 when this VM created the lock object (and so fills the cache).
try_lock() {
  local lock="$1"
  printf '%s %s\n' "$(hostname)" "$(date +%s)" |
    gcloud storage cp --quiet --if-generation-match=0 - "$lock" 2>/dev/null
}

# break_lock_if_stale LOCK: removes a lock left by this host (a preempted earlier boot) or
# older than MODEL_LOCK_STALE_SECONDS; the removal is conditional on its generation, so two
# VMs cannot both break it and both fill the cache.
break_lock_if_stale() {
  local lock="$1" gen holder="" since="" now
  gen="$(gcloud storage objects describe "$lock" --format='value(generation)' 2>/dev/null)" || return 0
  read -r holder since < <(gcloud storage cat "$lock" 2>/dev/null || true) || true
  now="$(date +%s)"
  [[ "$since" =~ ^[0-9]+$ ]] || since=0
  if [[ "$holder" == "$(hostname)" ]] || ((now - since > MODEL_LOCK_STALE_SECONDS)); then
    warn "breaking stale model cache lock ${lock} (holder ${holder:-unknown}, since ${since})"
    gcloud storage rm --quiet --if-generation-match="$gen" "$lock" || true
    return 0
  fi
  info "model cache is being filled by ${holder} (for $((now - since))s); waiting"
  return 1
}

ensure_model() {
  local kind cache waited=0
  kind="$(model_source_kind)" || die "model ${CFG_MODEL} has no usable profile (see the error above)"
  if [[ "$kind" != "huggingface" ]]; then
    info "model ${CFG_MODEL} (source ${kind}) needs no weights"
    return 0
  fi
  cache="$(model_cache_uri)"
  while :; do
    if gcs_exists "${cache}/.complete"; then
      download_model
      return 0
    fi
    if try_lock "${cache}/.lock"; then
      info "model cache ${cache}/ is empty; this VM fills it"
      fill_model_cache
      return 0
    fi
    gcs_exists "${cache}/.lock" ||
      die "cannot create ${cache}/.lock: does gs://${CFG_PREFIX}-model-cache exist, and may" \
        "the VM's service account create objects in it?"
    if break_lock_if_stale "${cache}/.lock"; then
      continue
    fi
    if ((waited >= MODEL_WAIT_SECONDS)); then
      die "timed out after ${waited}s waiting for another VM to fill ${cache}/"
    fi
    sleep "$POLL_SECONDS"
    waited=$((waited + POLL_SECONDS))
  done
}

# ---- Logging to Cloud Logging -----------------------------------------------------------

# The workers log one JSON object per line to stderr, which systemd puts in the journal.
# This pipeline reads the journal, keeps the ltxv-worker@ units, parses MESSAGE as JSON
# (jsonPayload.message, job_id, ...) and takes the entry's severity from the JSON.
ops_agent_config() {
  cat <<'YAML'
# Written by gpu_worker/vm/startup.sh; edits are lost on the next boot.
logging:
  receivers:
    ltxv_journal:
      type: systemd_journald
  processors:
    ltxv_only_workers:
      type: exclude_logs
      match_any:
        - 'NOT jsonPayload._SYSTEMD_UNIT =~ "^ltxv-worker@"'
    ltxv_parse_json:
      type: parse_json
      field: MESSAGE
    ltxv_severity:
      type: modify_fields
      fields:
        severity:
          move_from: jsonPayload.severity
  service:
    pipelines:
      ltxv_workers:
        receivers: [ltxv_journal]
        processors: [ltxv_only_workers, ltxv_parse_json, ltxv_severity]
YAML
}

install_ops_agent() {
  if ! systemctl cat google-cloud-ops-agent.service >/dev/null 2>&1; then
    info "installing the Ops Agent"
    local installer
    installer="$(mktemp)"
    if ! curl --silent --show-error --fail --retry 5 -o "$installer" "$OPS_AGENT_INSTALLER" ||
      ! bash "$installer" --also-install; then
      rm -f "$installer"
      # Not fatal: the workers still run and log to the journal; the next boot retries.
      log ERROR "Ops Agent install failed: worker logs stay in the journal only"
      return 0
    fi
    rm -f "$installer"
  fi
  write_if_changed "$OPS_AGENT_CONFIG" 0644 < <(ops_agent_config)
  if ((WROTE)) || ! systemctl is-active --quiet google-cloud-ops-agent; then
    systemctl enable google-cloud-ops-agent
    systemctl restart google-cloud-ops-agent
    info "Ops Agent configured"
  fi
}

# ---- systemd ------------------------------------------------------------------------------

# The unit comes from metadata `ltxv-worker-unit` (terraform passes the file
# gpu_worker/vm/ltxv-worker@.service) or, when that is unset, from the installed package.
install_unit() {
  local unit="$CFG_WORKER_UNIT" packaged
  if [[ -z "$unit" ]]; then
    packaged="$("${VENV}/bin/python" -c '
import pathlib, gpu_worker
print(pathlib.Path(gpu_worker.__file__).parent / "vm" / "ltxv-worker@.service")
' 2>/dev/null)" || true
    [[ -n "$packaged" && -f "$packaged" ]] ||
      die "no unit file: set metadata ltxv-worker-unit to the contents of gpu_worker/vm/${UNIT_NAME}"
    unit="$(cat "$packaged")"
  fi
  [[ "$unit" == *"[Service]"* ]] || die "metadata ltxv-worker-unit is not a systemd unit"
  write_if_changed "${SYSTEMD_DIR}/${UNIT_NAME}" 0644 <<<"$unit"
  if ((WROTE)); then CHANGED=1; fi
  systemctl daemon-reload
}

# One worker per GPU: ltxv-worker@<index>, enabled so a reboot starts it again (ordered
# after this script, see the unit). --no-block: systemd queues the start, which waits for
# this script to end. Running workers restart when their code or settings changed.
start_workers() {
  local index unit
  for index in "${GPU_INDICES[@]}"; do
    unit="ltxv-worker@${index}.service"
    if ((CHANGED)) && systemctl is-active --quiet "$unit"; then
      info "restarting ${unit} (configuration changed)"
      systemctl restart --no-block "$unit"
    fi
    systemctl enable --now --no-block "ltxv-worker@${index}"
    info "enabled ${unit} (CUDA_VISIBLE_DEVICES=${index})"
  done
  # Instances for GPUs this VM no longer has.
  local name keep
  while read -r name _; do
    [[ "$name" =~ ^ltxv-worker@([0-9]+)\.service$ ]] || continue
    keep=0
    for index in "${GPU_INDICES[@]}"; do
      [[ "${BASH_REMATCH[1]}" == "$index" ]] && keep=1
    done
    if ((!keep)); then
      warn "disabling ${name}: no GPU ${BASH_REMATCH[1]}"
      systemctl disable --now --no-block "$name" || true
    fi
  done < <(systemctl list-units --all --plain --no-legend 'ltxv-worker@*.service' 2>/dev/null || true)
}

# ---- main -------------------------------------------------------------------------------

main() {
  trap 'log ERROR "failed at line ${LINENO}: ${BASH_COMMAND}"' ERR
  # One run at a time (a manual re-run while the boot run is still going).
  mkdir -p "${VM_ROOT}/run/lock"
  exec 9>"${VM_ROOT}/run/lock/ltxv-startup.lock"
  flock -w 3600 9 || die "another ltxv startup run holds ${VM_ROOT}/run/lock/ltxv-startup.lock"
  info "starting on $(hostname)"
  read_config
  check_gpus
  ensure_user
  mount_local_ssd
  install_worker
  verify_torch_cuda
  write_env_file
  ensure_model
  install_ops_agent
  install_unit
  start_workers
  info "done: ${#GPU_INDICES[@]} worker(s) for model ${CFG_MODEL}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
