#!/usr/bin/env bash
# Boot script of an ltxv GPU worker VM: the instance template's `startup-script` metadata,
# which terraform (workers.tf) joins from the files gpu_worker/vm/boot/*.sh in name order,
# this one first: `cat gpu_worker/vm/boot/*.sh` is the script. Each file is one part: 00
# these settings, logging and the failure policy; 10 config (metadata, worker.env); 20 the
# GPUs, user and disks; 30 the shared cache protocol; 40 the worker's venv; 50 the model
# weights; 60 the Ops Agent and the workers; 90 main, the order of the stages.
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
# `ltxv-startup:`. `main` runs only when the script is executed: tests source the joined
# parts and call the functions with stub commands on PATH; VM_ROOT (empty on a VM) prefixes
# every path written.

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
CFG_TORCH_INDEX_URL="" CFG_WORKER_EXTRAS="" CFG_BOOT_READY_SECONDS="" CFG_LANE_AGING_SECONDS=""
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
