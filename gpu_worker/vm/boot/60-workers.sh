# Part of the worker VM's boot script (00-common.sh says how the parts are joined).
# The Ops Agent (the workers' JSON log lines as structured Cloud Logging entries) and the
# workers: one systemd unit per GPU, held back on a standby VM, then waited for.

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
