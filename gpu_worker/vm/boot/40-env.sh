# Part of the worker VM's boot script (00-common.sh says how the parts are joined).
# The worker's environment: /opt/ltxv/venv, one per key, shared through the cache bucket.

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
