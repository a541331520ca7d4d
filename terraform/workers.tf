# GPU workers: one pool per model in var.models (local.worker_pools), each a regional
# managed instance group of g2 (NVIDIA L4) VMs running gpu_worker/vm/startup.sh with that
# model loaded, scaled on that model's subscription backlog, down to zero. A pool never
# renders another model's job, so a request's model decides which VMs start.

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
    disk_type    = "pd-balanced"
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
    startup-script              = file("${path.module}/../gpu_worker/vm/startup.sh")
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
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Auto-healing: a VM whose sshd stops answering is recreated (the worker processes
# themselves are restarted by systemd).
resource "google_compute_health_check" "worker" {
  name                = "${var.prefix}-worker"
  check_interval_sec  = 30
  timeout_sec         = 10
  healthy_threshold   = 1
  unhealthy_threshold = 4

  tcp_health_check {
    port = 22
  }

  log_config {
    enable = false
  }

  depends_on = [time_sleep.apis_ready]
}

resource "google_compute_region_instance_group_manager" "workers" {
  for_each                  = local.worker_pools
  name                      = "${var.prefix}-workers-${each.value.slug}"
  region                    = var.region
  base_instance_name        = "${var.prefix}-worker-${each.value.slug}"
  distribution_policy_zones = var.worker_zones

  version {
    instance_template = google_compute_instance_template.worker[each.key].id
  }

  auto_healing_policies {
    health_check = google_compute_health_check.worker.id
    # Boot: driver check, Python environment, weights from the model cache.
    initial_delay_sec = 900
  }

  # A new template (new worker package) replaces VMs one at a time; never more GPUs than
  # the quota allows (no surge), and a replaced VM's job is requeued by its SIGTERM handler.
  update_policy {
    type                         = "PROACTIVE"
    minimal_action               = "REPLACE"
    instance_redistribution_type = "NONE"
    max_surge_fixed              = 0
    max_unavailable_fixed        = max(length(var.worker_zones), 1)
    replacement_method           = "RECREATE"
  }

  # The autoscaler owns the size.
  lifecycle {
    ignore_changes = [target_size]
  }
}

# Scale each pool on its own subscription's unacknowledged messages: jobs waiting *and*
# jobs being rendered (a worker holds its message until the video is done), so a VM that is
# rendering is still counted and the group does not shrink under it.
resource "google_compute_region_autoscaler" "workers" {
  for_each = local.worker_pools
  name     = "${var.prefix}-workers-${each.value.slug}"
  region   = var.region
  target   = google_compute_region_instance_group_manager.workers[each.key].id

  autoscaling_policy {
    min_replicas = var.worker_min_replicas
    max_replicas = var.worker_max_replicas
    # A new VM needs minutes before it renders (boot, driver, weights).
    cooldown_period = 600
    mode            = "ON"

    metric {
      name                       = "pubsub.googleapis.com/subscription/num_undelivered_messages"
      filter                     = "resource.type = pubsub_subscription AND resource.labels.subscription_id = \"${google_pubsub_subscription.worker[each.key].name}\""
      single_instance_assignment = var.jobs_per_worker
    }

    # Remove at most one VM per 15 minutes: a short lull does not tear down warm workers.
    scale_in_control {
      max_scaled_in_replicas {
        fixed = 1
      }
      time_window_sec = 900
    }
  }
}
