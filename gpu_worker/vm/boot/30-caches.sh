# Part of the worker VM's boot script (00-common.sh says how the parts are joined).
# The shared caches in gs://PREFIX-model-cache/ (model weights, worker envs): one VM fills
# a cache under a lock, the others copy it.

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
