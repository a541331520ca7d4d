# Part of the worker VM's boot script (00-common.sh says how the parts are joined).
# The stages in order; the last part, so that everything is defined when main runs.

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
