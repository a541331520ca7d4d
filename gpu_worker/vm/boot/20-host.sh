# Part of the worker VM's boot script (00-common.sh says how the parts are joined).
# The host: its GPUs and driver, the service user, its directories and disks.

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
