# Cloud Functions (2nd gen). Sources: the archives tools/package.py builds (storage.tf).
#
#   api           HTTP      the jobs API and the old /predict; waits up to predict_wait_seconds
#   prompt-file   storage   prompt files in the prompts bucket -> jobs and a receipt
#   redispatch    Pub/Sub   Cloud Scheduler's tick -> publishes jobs a crash left unpublished
#   result-ready  storage   result.json in the outputs bucket -> the signed webhook
#   dead-letter   Pub/Sub   a dead-lettered job message -> the job fails, with a result.json
#
# Event functions retry (Eventarc redelivers for 24 h with backoff): each handler is
# idempotent, and result-ready relies on it to pace webhook retries.

locals {
  runtime = "python312"
  # Requests one API instance serves at once. functions-framework runs that many gunicorn
  # threads only when THREADS says so (else 4 per CPU), and each open event stream
  # (GET /v1/jobs/{id}/events) holds one thread: streams may take at most half of them.
  api_concurrency = 80

  # Functions triggered by objects finalized in a bucket.
  storage_function = {
    prompt-file = {
      source      = "submit"
      entry_point = "prompt_file"
      description = "Prompt files dropped into gs://${local.bucket_prompts}/incoming/ become jobs and a receipt."
      # A prompt file holds up to 5000 lines and 8 MiB: room to parse and validate it.
      memory        = "1Gi"
      cpu           = "1"
      timeout       = 540
      max_instances = 10
      bucket        = local.bucket_prompts
      env           = {}
    }
    result-ready = {
      source        = "notify"
      entry_point   = "result_ready"
      description   = "result.json -> the job's signed webhook, each attempt recorded on the job."
      memory        = "256Mi"
      cpu           = "0.167"
      timeout       = 60 # one attempt: a lookup (<= 5 s) and a POST (<= 10 s) between two transactions
      max_instances = 50
      bucket        = local.bucket_outputs
      env = {
        LTXV_WEBHOOK_SECRETS_SECRET = local.webhook_secrets_secret
      }
    }
  }

  # Functions triggered by messages on a topic.
  pubsub_function = {
    redispatch = {
      source        = "submit"
      entry_point   = "redispatch"
      description   = "Publishes jobs recorded but never published (a crash between the two)."
      memory        = "256Mi"
      cpu           = "0.167"
      timeout       = 300
      max_instances = 1
      topic         = "projects/${var.project_id}/topics/${local.topic_sweep}"
      env           = { LTXV_POOL_METRIC = "true" }
    }
    dead-letter = {
      source        = "notify"
      entry_point   = "dead_letter"
      description   = "A job message Pub/Sub gave up on -> the job fails with a result.json."
      memory        = "256Mi"
      cpu           = "0.167"
      timeout       = 60
      max_instances = 5
      topic         = "projects/${var.project_id}/topics/${local.topic_dead_letter}"
      env           = {}
    }
  }

  # Shared by both kinds: only Eventarc calls them, one event at a time.
  event_function = merge(local.storage_function, local.pubsub_function)

  webhook_secrets_secret = "projects/${var.project_id}/secrets/${var.prefix}-webhook-secrets"
}

# The functions' images, in a repository of the deployment's own (build_config
# docker_repository) rather than the project-wide gcf-artifacts one: the build account may
# push here and nowhere else, and old images are cleaned up.
resource "google_artifact_registry_repository" "functions" {
  # checkov:skip=CKV_GCP_84:The images hold this open-source project's code and its public dependencies, no data; Google-managed encryption suffices.
  location      = var.region
  repository_id = "${var.prefix}-functions"
  description   = "ltx-video-pipeline function images (Cloud Build output)."
  format        = "DOCKER"
  labels        = local.labels

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s" # 30 days; the ten newest are kept whatever their age
    }
  }

  depends_on = [time_sleep.apis_ready]
}

resource "google_cloudfunctions2_function" "api" {
  # checkov:skip=CKV_GCP_124:The jobs API is a public HTTPS API like the /predict it replaces; every route but /healthz and /openapi.json checks an API key.
  name        = "${var.prefix}-api"
  location    = var.region
  description = "The jobs API (POST/GET /v1/jobs, cancel), the old POST /predict, health and OpenAPI."
  labels      = local.labels

  build_config {
    runtime           = local.runtime
    entry_point       = "api"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.this[local.bucket_source].name
        object = google_storage_bucket_object.package["submit"].name
      }
    }
  }

  service_config {
    service_account_email = google_service_account.function["api"].email
    # Two conditioning-media checks at once hold up to ~390 MiB beside the requests'
    # own (LTXV_MAX_INSPECTIONS; docs/architecture.md, "Where inputs live").
    available_memory = "1Gi"
    available_cpu    = "1"
    # Requests mostly wait on Firestore and Pub/Sub (and /predict on the render): one
    # instance serves many at once.
    max_instance_request_concurrency = local.api_concurrency
    min_instance_count               = 0
    max_instance_count               = var.api_max_instances
    timeout_seconds                  = var.predict_wait_seconds + 60
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    environment_variables = merge(local.function_env, {
      LTXV_API_KEYS_SECRET        = "projects/${var.project_id}/secrets/${var.prefix}-api-keys"
      LTXV_WEBHOOK_SECRETS_SECRET = local.webhook_secrets_secret # GET /v1/webhooks/secret
      THREADS                     = tostring(local.api_concurrency)
    })
  }

  depends_on = [
    # Its build, its secrets and its first calls need its grants in effect.
    time_sleep.iam_ready,
    google_secret_manager_secret_version.api_keys,
    google_secret_manager_secret_version.webhook_secrets,
    # Its queries (the per-key list, the in-flight count) fail until their indexes exist.
    google_firestore_index.jobs,
  ]

  lifecycle {
    precondition {
      condition     = alltrue([for keys in values(var.destination_buckets) : alltrue([for key in keys : contains(var.api_key_ids, key)])])
      error_message = "destination_buckets names API key ids that are not in api_key_ids."
    }
    precondition {
      condition     = length(setintersection(keys(var.destination_buckets), [local.bucket_outputs, local.bucket_prompts, local.bucket_model_cache, local.bucket_source])) == 0
      error_message = "destination_buckets must not name the deployment's own buckets (custom destinations in the outputs bucket go under destinations/KEY_ID/)."
    }
    precondition {
      condition     = alltrue([for keys in values(var.input_buckets) : alltrue([for key in keys : contains(var.api_key_ids, key)])])
      error_message = "input_buckets names API key ids that are not in api_key_ids."
    }
    precondition {
      condition     = length(setintersection(keys(var.input_buckets), [local.bucket_outputs, local.bucket_prompts, local.bucket_inputs, local.bucket_model_cache, local.bucket_source])) == 0
      error_message = "input_buckets must not name the deployment's own buckets (each key's own inputs go under gs://PREFIX-inputs/keys/KEY_ID/)."
    }
  }
}

# The two event kinds differ only in their trigger; the map above holds the rest.
resource "google_cloudfunctions2_function" "on_storage" {
  for_each = local.storage_function

  name        = "${var.prefix}-${each.key}"
  location    = var.region
  description = each.value.description
  labels      = local.labels

  event_trigger {
    trigger_region        = var.region # a storage trigger must be in its bucket's location
    event_type            = "google.cloud.storage.object.v1.finalized"
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.function[each.key].email
    event_filters {
      attribute = "bucket"
      value     = each.value.bucket
    }
  }

  build_config {
    runtime           = local.runtime
    entry_point       = each.value.entry_point
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.this[local.bucket_source].name
        object = google_storage_bucket_object.package[each.value.source].name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.function[each.key].email
    available_memory                 = each.value.memory
    available_cpu                    = each.value.cpu
    max_instance_request_concurrency = 1
    min_instance_count               = 0
    max_instance_count               = each.value.max_instances
    timeout_seconds                  = each.value.timeout
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    environment_variables            = merge(local.function_env, each.value.env)
  }

  depends_on = [
    # Eventarc checks the storage agent's publisher grant and the trigger account's
    # eventReceiver grant when it creates the trigger.
    time_sleep.iam_ready,
    google_secret_manager_secret_version.webhook_secrets,
  ]
}

resource "google_cloudfunctions2_function" "on_pubsub" {
  for_each = local.pubsub_function

  name        = "${var.prefix}-${each.key}"
  location    = var.region
  description = each.value.description
  labels      = local.labels

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic          = each.value.topic
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.function[each.key].email
  }

  build_config {
    runtime           = local.runtime
    entry_point       = each.value.entry_point
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.this[local.bucket_source].name
        object = google_storage_bucket_object.package[each.value.source].name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.function[each.key].email
    available_memory                 = each.value.memory
    available_cpu                    = each.value.cpu
    max_instance_request_concurrency = 1
    min_instance_count               = 0
    max_instance_count               = each.value.max_instances
    timeout_seconds                  = each.value.timeout
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    environment_variables            = merge(local.function_env, each.value.env)
  }

  depends_on = [
    time_sleep.iam_ready,
    google_pubsub_topic.sweep,
    google_pubsub_topic.dead_letter,
  ]
}
