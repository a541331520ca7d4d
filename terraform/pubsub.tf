resource "google_pubsub_topic" "jobs" {
  # checkov:skip=CKV_GCP_83:Messages carry only job ids (no prompts or user data); Google-managed encryption suffices.
  name                       = local.topic_jobs
  labels                     = local.labels
  message_retention_duration = "604800s"
  depends_on                 = [time_sleep.apis_ready]
}

resource "google_pubsub_topic" "dead_letter" {
  # checkov:skip=CKV_GCP_83:Messages carry only job ids (no prompts or user data); Google-managed encryption suffices.
  name                       = local.topic_dead_letter
  labels                     = local.labels
  message_retention_duration = "604800s"
  depends_on                 = [time_sleep.apis_ready]
}

# Cloud Scheduler's tick for the redispatch sweep (functions/submit `redispatch`).
resource "google_pubsub_topic" "sweep" {
  # checkov:skip=CKV_GCP_83:Messages carry only job ids (no prompts or user data); Google-managed encryption suffices.
  name       = local.topic_sweep
  labels     = local.labels
  depends_on = [time_sleep.apis_ready]
}

# What each model's GPU workers pull: one subscription per model and priority lane
# (local.worker_lanes), filtered on the message's model and lane attributes, so a pool only
# receives jobs recorded for the model it loads, and its workers can take a higher lane's
# job first (the worker checks again, see docs/architecture.md "Routing" and "Priority
# lanes"). A filter cannot be changed: a new one replaces the subscription and what waits in
# it, so drain the queue before such an apply (or replay it: "Priority lanes" says how).
# How Pub/Sub delivers to the workers is schemas/resources.json's worker_subscription
# (local.worker_delivery), which the local stack's subscriptions follow too. A render takes
# minutes: workers set the deadline as soon as they pull and keep extending it, so the
# subscription's own deadline only decides how fast a killed worker's job comes back.
resource "google_pubsub_subscription" "worker" {
  for_each                     = local.worker_lanes
  name                         = each.value.subscription
  topic                        = google_pubsub_topic.jobs.id
  labels                       = local.labels
  filter                       = each.value.filter
  ack_deadline_seconds         = local.worker_delivery.ack_deadline_seconds
  enable_exactly_once_delivery = local.worker_delivery.enable_exactly_once_delivery
  message_retention_duration   = "604800s"

  retry_policy {
    minimum_backoff = "${local.worker_delivery.minimum_backoff_seconds}s"
    maximum_backoff = "${local.worker_delivery.maximum_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = local.worker_delivery.max_delivery_attempts
  }

  # Never delete the subscription for inactivity (a deployment may idle for months).
  expiration_policy {
    ttl = ""
  }
}

# Dead letters kept for operators to inspect (and the alert's backlog); the notify function
# gets its own copy through its Eventarc trigger.
resource "google_pubsub_subscription" "dead_letter_audit" {
  name                       = "${local.topic_dead_letter}-audit"
  topic                      = google_pubsub_topic.dead_letter.id
  labels                     = local.labels
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering needs the Pub/Sub service agent to publish to the dead-letter topic and to
# subscribe to the source subscription (without it, delivery attempts are not even counted).
locals {
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_source_subscriber" {
  for_each     = local.worker_lanes
  subscription = google_pubsub_subscription.worker[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

resource "google_cloud_scheduler_job" "sweep" {
  name        = "${var.prefix}-redispatch-sweep"
  region      = var.region
  description = "Publishes jobs a crash left recorded but unpublished (functions/submit redispatch)."
  schedule    = "*/5 * * * *"

  pubsub_target {
    topic_name = google_pubsub_topic.sweep.id
    data       = base64encode("sweep")
  }

  depends_on = [time_sleep.apis_ready]
}
