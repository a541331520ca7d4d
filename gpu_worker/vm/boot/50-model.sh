# Part of the worker VM's boot script (00-common.sh says how the parts are joined).
# Model weights: gs://PREFIX-model-cache/MODEL/, filled from the hub by the first VM.

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
