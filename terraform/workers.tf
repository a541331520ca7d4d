# GPU workers: one pool per model in var.models (local.worker_pools), each a regional
# managed instance group of g2 (NVIDIA L4) VMs whose boot script (gpu_worker/vm/boot/) runs
# that model's workers, scaled on that model's subscription backlog, down to zero. A pool
# never renders another model's job, so a request's model decides which VMs start.
# docs/boot-budget.md times a worker's boot; the values below that follow from it say so.

locals {
  # The zones a pool's VMs spread over. With var.worker_zones empty a regional MIG chooses
  # up to three zones of the region itself (the provider's distribution_policy_zones and
  # https://cloud.google.com/compute/docs/instance-groups/distributing-instances-with-regional-instance-groups#selectingzones),
  # so 3 is at least the number of zones it uses, as max_unavailable_fixed must be.
  worker_zone_count = length(var.worker_zones) > 0 ? length(var.worker_zones) : 3

  # A fresh VM from the template when the caches exist (docs/boot-budget.md, column b):
  # the autoscaler's initialization period.
  worker_fresh_boot_seconds = 240
  # The first boot of a deployment (column c, builds the env with pip and fetches the
  # weights from Hugging Face), with a margin of about 2x: no health check or standby
  # stop may cut it short.
  worker_first_boot_seconds = 1200
  # How long a VM created for the standby pool may prepare (env and weights on its disk)
  # before the group stops it. It starts no worker (the boot script's wait_while_standby),
  # so it fails the health check: the group must stop it before auto-healing would recreate
  # it, i.e. before worker_first_boot_seconds. Column (c) is ~8 minutes estimated.
  worker_standby_prepare_seconds = 900

  # The VMs' boot script: its parts gpu_worker/vm/boot/*.sh joined in name order, i.e.
  # `cat gpu_worker/vm/boot/*.sh` (00-common.sh, the first, says what each part holds).
  # One self-contained script in metadata: a boot that cannot fetch the worker package
  # still logs why and powers off.
  worker_boot_dir    = "${path.module}/../gpu_worker/vm/boot"
  worker_boot_script = join("", [for part in sort(fileset(local.worker_boot_dir, "*.sh")) : file("${local.worker_boot_dir}/${part}")])
}

resource "google_compute_instance_template" "worker" {
  for_each     = local.worker_pools
  name_prefix  = "${var.prefix}-worker-${each.value.slug}-"
  description  = "ltx-video-pipeline GPU worker (${each.key})"
  machine_type = var.worker_machine_type
  region       = var.region
  labels       = local.labels
  tags         = ["${var.prefix}-worker"]

  disk {
    source_image = var.worker_image
    disk_size_gb = var.worker_disk_gb
    disk_type    = var.worker_disk_type
    boot         = true
    auto_delete  = true
    labels       = local.labels
  }

  # No access_config: no external IP; outbound goes through Cloud NAT.
  network_interface {
    subnetwork = google_compute_subnetwork.workers.id
  }

  scheduling {
    provisioning_model          = var.worker_spot ? "SPOT" : "STANDARD"
    preemptible                 = var.worker_spot
    automatic_restart           = !var.worker_spot
    on_host_maintenance         = "TERMINATE" # GPUs cannot live-migrate
    instance_termination_action = var.worker_spot ? "DELETE" : null
  }

  shielded_instance_config {
    enable_secure_boot          = var.worker_secure_boot
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  service_account {
    email  = google_service_account.worker.email
    scopes = ["cloud-platform"] # what it may do is decided by IAM (iam.tf), not scopes
  }

  # The boot script's configuration (gpu_worker/vm/README.md).
  metadata = {
    startup-script              = local.worker_boot_script
    enable-oslogin              = "TRUE"
    block-project-ssh-keys      = "true"
    ltxv-project                = var.project_id
    ltxv-prefix                 = var.prefix
    ltxv-model                  = each.key
    ltxv-default-model          = local.default_model
    ltxv-subscription           = each.value.subscription
    ltxv-worker-package         = "gs://${local.bucket_source}/${google_storage_bucket_object.package["worker"].name}"
    ltxv-log-level              = var.log_level
    ltxv-shutdown-grace-seconds = "20"
    ltxv-lane-aging-seconds     = tostring(var.lane_aging_seconds)
    ltxv-gpu-hour-usd           = tostring(var.gpu_hour_usd)
    ltxv-inputs-bucket          = local.bucket_inputs
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Auto-healing: the worker process answers GET /healthz on 8080 (200 ready, 503 not). A
# VM whose worker stops answering 200 is recreated: 18 failed probes 10 s apart, so a dead
# worker is replaced three minutes after it dies (plus the new VM's boot). Not sooner:
# systemd restarts a worker that exited within 5 s, and the new process answers 503
# while it loads the model again (about a minute from a cold page cache,
# docs/boot-budget.md), which must not cost the VM. A boot that
# fails, or a worker that never gets ready, powers the VM off itself (gpu_worker/vm/
# boot/00-common.sh, on_exit) and the group recreates it without waiting for the probes.
# https://cloud.google.com/compute/docs/instance-groups/autohealing-instances-in-migs
resource "google_compute_health_check" "worker" {
  name                = "${var.prefix}-worker"
  check_interval_sec  = 10
  timeout_sec         = 5
  healthy_threshold   = 1
  unhealthy_threshold = 18

  http_health_check {
    port         = 8080
    request_path = "/healthz"
  }

  log_config {
    enable = false
  }

  depends_on = [time_sleep.apis_ready]
}

resource "google_compute_region_instance_group_manager" "workers" {
  for_each           = local.worker_pools
  name               = "${var.prefix}-workers-${each.value.slug}"
  region             = var.region
  base_instance_name = "${var.prefix}-worker-${each.value.slug}"
  # Empty: the group picks up to three zones of the region (local.worker_zone_count).
  distribution_policy_zones = var.worker_zones
  # An autoscaled regional MIG needs the EVEN shape with proactive redistribution ("If you
  # want to autoscale a regional MIG ... you must set the target distribution shape to
  # EVEN ... To scale in and out, you must enable proactive instance redistribution"):
  # https://cloud.google.com/compute/docs/instance-groups/regional-mig-set-target-distribution-shape#limitations
  # BALANCED would prefer zones that have L4s left during a stockout, but it requires
  # proactive redistribution off and its autoscaling is in Preview there, so not here.
  distribution_policy_target_shape = "EVEN"

  version {
    instance_template = google_compute_instance_template.worker[each.key].id
  }

  auto_healing_policies {
    health_check = google_compute_health_check.worker.id
    # Probes only start once the longest legitimate boot is over: the first boot of a
    # deployment (local.worker_first_boot_seconds, docs/boot-budget.md column c).
    initial_delay_sec = local.worker_first_boot_seconds
  }

  # A standby pool of stopped VMs whose disks already hold the env and the weights: a
  # scale-out starts one of them (docs/boot-budget.md column a) instead of creating a VM,
  # then the group creates a replacement, lets it prepare for standby_policy.initial_delay_sec
  # (no worker runs on it meanwhile, so it takes no job it would be stopped in the middle
  # of) and stops it. Stopped, not suspended: a VM with GPUs cannot be suspended
  # (https://cloud.google.com/compute/docs/instances/suspend-resume-instance#limitations);
  # a stopped VM is billed for its disks only
  # (https://cloud.google.com/compute/docs/instances/stop-start-instance).
  # https://cloud.google.com/compute/docs/instance-groups/accelerate-mig-scale-out-with-standby-pools
  standby_policy {
    mode              = "SCALE_OUT_POOL"
    initial_delay_sec = local.worker_standby_prepare_seconds
  }
  target_stopped_size   = var.worker_standby_stopped
  target_suspended_size = 0

  # A new template (new worker package) replaces VMs up to one per zone at a time
  # (max_unavailable_fixed must be 0 or at least the number of zones: the API rejects
  # anything between); never more GPUs than the quota allows (no surge), and a replaced
  # VM's job is requeued by its SIGTERM handler.
  # https://cloud.google.com/compute/docs/instance-groups/rolling-out-updates-to-managed-instance-groups#max_unavailable
  update_policy {
    type                         = "PROACTIVE"
    minimal_action               = "REPLACE"
    instance_redistribution_type = "PROACTIVE"
    max_surge_fixed              = 0
    max_unavailable_fixed        = local.worker_zone_count
    replacement_method           = "RECREATE"
  }

  # The autoscaler owns the size.
  lifecycle {
    ignore_changes = [target_size]
  }
}

# Scale each pool on its own subscriptions' unacknowledged messages: jobs waiting *and*
# jobs being rendered (a worker holds its message, leased and unacked, until the video is
# done; num_undelivered_messages is "Number of unacknowledged messages (a.k.a. backlog
# messages) in a subscription", https://cloud.google.com/monitoring/api/metrics_gcp_p_z#gcp-pubsub).
# With one job per VM (var.jobs_per_worker = 1) the autoscaler wants at least as many VMs
# as jobs being rendered, so it scales in only when some VM is idle. Which VM goes is the
# group's choice, not the autoscaler's, and the group knows nothing of jobs: it may stop a
# busy one (as proactive redistribution may), whose worker then requeues its job on
# SIGTERM, at the cost of one delivery attempt (max_delivery_attempts).
#
# A pool has one subscription per priority lane, and it should scale on their sum. One
# metric whose filter selects all of them would be summed ("If multiple TimeSeries are
# returned upon the query execution, the autoscaler will sum their respective values to
# obtain its scaling value"), but the filter may not select them: "You can only use the AND
# operator for joining selectors" and "only use direct equality comparison operator (=)
# without any functions for each selector" (AutoscalingPolicyCustomMetricUtilization.filter,
# https://cloud.google.com/compute/docs/reference/rest/v1/autoscalers), and a
# pubsub_subscription's only labels are project_id and subscription_id, so no equality
# selects a pool's subscriptions and no others (no OR, no starts_with). So: one metric per
# lane, up to the 5 Monitoring signals an autoscaler takes, and "the autoscaler calculates
# the recommended number of VMs for each signal and then picking the signal that results
# in the largest number of VMs" (https://cloud.google.com/compute/docs/autoscaler/multiple-signals):
# the pool runs max over lanes of ceil(lane's unacked / jobs_per_worker) VMs, not the sum.
# What that means: never zero VMs while any lane holds a job; with several lanes busy at
# once, up to 3x fewer VMs than jobs (the backlog drains slower: high first, see the
# worker); and, when renders in progress are spread over lanes while no lane waits, fewer
# VMs wanted than renders, so scale-in (1 VM per 15 minutes, below) may stop a busy VM,
# whose job is requeued at the cost of a delivery attempt, as above. Summing exactly needs
# a metric of our own per pool (a scheduled count written to Cloud Monitoring); see
# docs/architecture.md "Priority lanes".
resource "google_compute_region_autoscaler" "workers" {
  for_each = local.worker_pools
  name     = "${var.prefix}-workers-${each.value.slug}"
  region   = var.region
  target   = google_compute_region_instance_group_manager.workers[each.key].id

  autoscaling_policy {
    min_replicas = var.worker_min_replicas
    max_replicas = var.worker_max_replicas
    # The initialization period: how long a new VM takes to start rendering, here a fresh
    # VM with the caches in place (local.worker_fresh_boot_seconds, docs/boot-budget.md).
    # https://cloud.google.com/compute/docs/autoscaler/understanding-autoscaler-decisions#cool_down_period
    cooldown_period = local.worker_fresh_boot_seconds
    mode            = "ON"

    # One signal per lane (see above), highest lane first: as many blocks as
    # schemas/resources.json has lanes (a test counts them; written out rather than a
    # dynamic block, which the offline evaluation in tests/terraform does not expand).
    metric {
      name                       = "pubsub.googleapis.com/subscription/num_undelivered_messages"
      filter                     = "resource.type = pubsub_subscription AND resource.labels.subscription_id = \"${google_pubsub_subscription.worker[local.pool_lane_keys[each.key][0]].name}\""
      single_instance_assignment = var.jobs_per_worker
    }

    metric {
      name                       = "pubsub.googleapis.com/subscription/num_undelivered_messages"
      filter                     = "resource.type = pubsub_subscription AND resource.labels.subscription_id = \"${google_pubsub_subscription.worker[local.pool_lane_keys[each.key][1]].name}\""
      single_instance_assignment = var.jobs_per_worker
    }

    metric {
      name                       = "pubsub.googleapis.com/subscription/num_undelivered_messages"
      filter                     = "resource.type = pubsub_subscription AND resource.labels.subscription_id = \"${google_pubsub_subscription.worker[local.pool_lane_keys[each.key][2]].name}\""
      single_instance_assignment = var.jobs_per_worker
    }

    # The pool's jobs queued or running over all its lanes, written by the sweep each
    # minute (src/ltxv/intake/pool_metric.py): given several signals the autoscaler follows
    # the one asking for the most VMs, so with this one among them the pool is as large as
    # its lanes together want, while the lane signals above answer a submit sooner.
    # https://cloud.google.com/compute/docs/autoscaler/multiple-signals
    metric {
      name                       = google_monitoring_metric_descriptor.pool_jobs.type
      filter                     = "resource.type = \"global\" AND metric.labels.deployment = \"${var.prefix}\" AND metric.labels.model = \"${each.key}\""
      single_instance_assignment = var.jobs_per_worker
    }

    # Remove at most one VM per 15 minutes: a short lull does not tear down warm workers
    # (a VM recreated later pays the boot in docs/boot-budget.md again).
    scale_in_control {
      max_scaled_in_replicas {
        fixed = 1
      }
      time_window_sec = 900
    }
  }
}

# Each pool's load, written by the sweep (the redispatch function, LTXV_POOL_METRIC): a
# per-group metric on the `global` resource, selected by its labels in each autoscaler.
resource "google_monitoring_metric_descriptor" "pool_jobs" {
  type         = "custom.googleapis.com/ltxv/pool_jobs"
  display_name = "ltx-video-pipeline pool jobs"
  description  = "Jobs queued or running for one model's worker pool, over all its priority lanes."
  metric_kind  = "GAUGE"
  value_type   = "INT64"
  unit         = "1"

  labels {
    key         = "deployment"
    value_type  = "STRING"
    description = "The deployment's prefix (var.prefix)."
  }

  labels {
    key         = "model"
    value_type  = "STRING"
    description = "The model profile whose pool the jobs are for."
  }

  depends_on = [time_sleep.apis_ready]
}
