# Part of the worker VM's boot script (00-common.sh says how the parts are joined).
# Configuration: the instance metadata `ltxv-*` (checked) and /etc/ltxv/worker.env.

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
  cfg CFG_GPU_HOUR_USD ltxv-gpu-hour-usd "" '^([0-9]{1,4}(\.[0-9]{1,6})?)?$'
  cfg CFG_SUBSCRIPTION ltxv-subscription "" '^[-A-Za-z0-9_.~+%]*$'
  cfg CFG_LANE_AGING_SECONDS ltxv-lane-aging-seconds "" '^([0-9]+)?$'
  cfg CFG_OUTPUTS_BUCKET ltxv-outputs-bucket "" '^[-a-z0-9_.]*$'
  cfg CFG_INPUTS_BUCKET ltxv-inputs-bucket "" '^[-a-z0-9_.]*$'
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
    echo "# Written by the boot script (gpu_worker/vm/boot/) from instance metadata; edits are lost."
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
    # What each job's usage.cost_usd is priced at (terraform gpu_hour_usd).
    [[ -z "$CFG_GPU_HOUR_USD" ]] || echo "LTXV_GPU_HOUR_USD=${CFG_GPU_HOUR_USD}"
    [[ -z "$CFG_SUBSCRIPTION" ]] || echo "LTXV_SUBSCRIPTION=${CFG_SUBSCRIPTION}"
    [[ -z "$CFG_LANE_AGING_SECONDS" ]] || echo "LTXV_LANE_AGING_SECONDS=${CFG_LANE_AGING_SECONDS}"
    [[ -z "$CFG_OUTPUTS_BUCKET" ]] || echo "LTXV_OUTPUTS_BUCKET=${CFG_OUTPUTS_BUCKET}"
    [[ -z "$CFG_INPUTS_BUCKET" ]] || echo "LTXV_INPUTS_BUCKET=${CFG_INPUTS_BUCKET}"
    # GET /healthz on every address (the MIG's probes come from Google's ranges).
    echo "LTXV_HEALTH_PORT=${HEALTH_PORT}"
    echo "LTXV_HEALTH_HOST=0.0.0.0"
    # What the loader still asks the hub for (diffusers' model configs) is cached here.
    echo "HF_HOME=/var/cache/ltxv/huggingface"
    echo "PYTHONUNBUFFERED=1"
  )
}
