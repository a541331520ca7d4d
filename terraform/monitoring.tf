# Alerts go to var.alert_notification_channels and to an email channel per var.alert_emails.
resource "google_monitoring_notification_channel" "email" {
  for_each     = toset(var.alert_emails)
  display_name = "${var.prefix} alerts: ${each.value}"
  type         = "email"
  labels       = { email_address = each.value }
  user_labels  = local.labels
  depends_on   = [time_sleep.apis_ready]
}

locals {
  alert_channels = concat(var.alert_notification_channels, [for c in google_monitoring_notification_channel.email : c.id])
}

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "${var.prefix}: jobs dead-lettered"
  combiner              = "OR"
  notification_channels = local.alert_channels
  user_labels           = local.labels

  documentation {
    mime_type = "text/markdown"
    content   = "Job messages reached ${local.topic_dead_letter} after ${local.worker_delivery.max_delivery_attempts} deliveries: those jobs failed with attempts_exhausted. Inspect them with `gcloud pubsub subscriptions pull ${google_pubsub_subscription.dead_letter_audit.name} --limit 10` and the workers' logs (jsonPayload.job_id); ack them once handled."
  }

  conditions {
    display_name = "dead letters waiting for an operator"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.dead_letter_audit.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "300s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "oldest_job" {
  display_name          = "${var.prefix}: oldest job waiting too long"
  combiner              = "OR"
  notification_channels = local.alert_channels
  user_labels           = local.labels

  documentation {
    mime_type = "text/markdown"
    content   = "The oldest unacknowledged job in a model's worker subscription (${join(", ", [for lane in local.worker_lanes : lane.subscription])}; the incident names which) is older than ${var.oldest_job_alert_seconds} s: that model's workers are not starting (GPU quota or stockout in ${var.region}, boot script failing) or not keeping up (raise worker_max_replicas)."
  }

  conditions {
    display_name = "oldest unacknowledged job message"
    condition_threshold {
      # Every model's worker subscription (each is its own time series, so each alerts).
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = starts_with(\"${local.worker_subscription_prefix}\") AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.oldest_job_alert_seconds
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
}

# A worker VM whose boot fails powers itself off and the group recreates it
# (gpu_worker/vm/README.md): without this alert a bad template, a missing quota or a
# broken package would loop VMs through boots quietly, each one billed. A log-match
# condition rather than a log-based metric: an alert on a metric created in the same apply
# fails with "Cannot find metric(s)" for up to 10 minutes
# (hashicorp/terraform-provider-google#11102), which would stop a fresh project's apply.
resource "google_monitoring_alert_policy" "worker_boot_failures" {
  display_name          = "${var.prefix}: worker VMs failing to boot"
  combiner              = "OR"
  notification_channels = local.alert_channels
  user_labels           = local.labels

  documentation {
    mime_type = "text/markdown"
    content   = "A worker VM's boot script failed (no GPU, bad metadata, no package, the worker never became ready); the VM powered off and its instance group recreates it, so this repeats until fixed. The reason is the `ltxv-startup: ERROR` line: `gcloud logging read '\"ltxv-startup: ERROR\"' --freshness 1h`."
  }

  conditions {
    display_name = "ltxv-startup ERROR lines"
    condition_matched_log {
      # The boot script logs through the guest agent's metadata script runner; the log
      # name differs between guest agent versions, the text does not.
      filter = "resource.type=\"gce_instance\" AND (log_id(\"GCEMetadataScripts\") OR log_id(\"google_metadata_script_runner\")) AND \"ltxv-startup: ERROR\""
    }
  }

  # Log-match conditions need a notification rate limit: one notification per 30 minutes
  # for a loop of failing boots, and the incident closes a day after the last one.
  alert_strategy {
    notification_rate_limit {
      period = "1800s"
    }
    auto_close = "86400s"
  }
}
