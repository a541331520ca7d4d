locals {
  labels = merge({ app = "ltx-video-pipeline", deployment = var.prefix }, var.labels)

  # Resource names and the worker subscriptions' delivery policy are stated once, in
  # schemas/resources.json, which src/ltxv/core/resources.py reads too: the code finds every
  # resource from LTXV_PREFIX alone, and the local stack delivers as Pub/Sub does here.
  resources = jsondecode(file("${path.module}/../schemas/resources.json"))
  names     = { for kind, pattern in local.resources.names : kind => replace(pattern, "{prefix}", var.prefix) }

  topic_jobs        = local.names.topic
  topic_dead_letter = local.names.dead_letter_topic
  topic_sweep       = local.names.sweep_topic

  bucket_prompts     = local.names.prompts_bucket
  bucket_outputs     = local.names.outputs_bucket
  bucket_inputs      = local.names.inputs_bucket
  bucket_model_cache = local.names.model_cache_bucket
  bucket_source      = local.names.function_source_bucket

  # What every model's worker subscription starts with (the oldest-job alert covers them).
  worker_subscription_prefix = replace(local.names.worker_subscription, "{model}", "")
  # The table's policy, with the two values a deployment may override (variables.tf).
  worker_delivery = merge(local.resources.worker_subscription, {
    ack_deadline_seconds  = coalesce(var.worker_ack_deadline_seconds, local.resources.worker_subscription.ack_deadline_seconds)
    max_delivery_attempts = coalesce(var.max_delivery_attempts, local.resources.worker_subscription.max_delivery_attempts)
  })

  # Every model in var.models gets its own worker pool (a subscription, an instance
  # template, a group and its autoscaler); the first also takes requests that name none.
  default_model = var.models[0]
  worker_pools = {
    for model in var.models : model => {
      # As src/ltxv/core/settings.py names it too (Settings.subscription_for).
      subscription = replace(local.names.worker_subscription, "{model}", model)
      # The model half of src/ltxv/core/dispatch.py's subscription_filter() (see
      # worker_lanes). The default pool also takes messages without a model attribute,
      # published before messages carried one.
      model_filter = (
        model == local.default_model
        ? "(attributes.model = \"${model}\" OR NOT attributes:model)"
        : "attributes.model = \"${model}\""
      )
      # Compute names are short: an instance template's name_prefix keeps its unique
      # suffix only up to 37 characters, of which "PREFIX-worker-" takes up to 24, so the
      # pool's compute resources are named after the model without the "ltx-video-" that
      # every real profile starts with ("2b-distilled", "2b", "tiny-random": at most 12
      # characters; var.models is validated to keep it so).
      slug = trimprefix(model, "ltx-video-")
    }
  }

  # Priority lanes (schemas/resources.json worker_lanes): each pool pulls one subscription
  # per lane, highest first. The default lane's is keyed by the model alone and keeps the
  # name the pool's only subscription had before lanes, so it stays the same resource in
  # the state (its new filter replaces it: docs/architecture.md "Priority lanes" says how
  # to replay what waited in it); the others are "MODEL/LANE".
  lanes = local.resources.worker_lanes
  worker_lanes = merge([
    for model, pool in local.worker_pools : {
      for lane in local.lanes.order : (lane == local.lanes.default ? model : "${model}/${lane}") => {
        model        = model
        lane         = lane
        subscription = "${pool.subscription}${local.lanes.subscription_suffix[lane]}"
        # src/ltxv/core/dispatch.py's subscription_filter(), character for character
        # (tests/terraform compares them). The default lane also takes messages without a
        # lane attribute, published before messages carried one.
        filter = join(" AND ", [pool.model_filter, (
          lane == local.lanes.default
          ? "(attributes.lane = \"${lane}\" OR NOT attributes:lane)"
          : "attributes.lane = \"${lane}\""
        )])
      }
    }
  ]...)
  # Each pool's local.worker_lanes keys, highest lane first (its autoscaler's signals).
  pool_lane_keys = {
    for model in var.models : model => [
      for lane in local.lanes.order : lane == local.lanes.default ? model : "${model}/${lane}"
    ]
  }

  # What every function reads (src/ltxv/core/settings.py); secrets are added per function.
  function_env = {
    LTXV_PROJECT              = var.project_id
    LTXV_PREFIX               = var.prefix
    LTXV_MODELS               = join(",", var.models)
    LTXV_DEFAULT_MODEL        = local.default_model
    LTXV_DESTINATION_BUCKETS  = jsonencode(var.destination_buckets)
    LTXV_INPUTS_BUCKET        = local.bucket_inputs
    LTXV_INPUT_BUCKETS        = jsonencode(var.input_buckets)
    LTXV_PROMPT_FILE_OWNER    = var.prompt_file_owner
    LTXV_JOB_TTL_DAYS         = tostring(var.job_ttl_days)
    LTXV_PREDICT_WAIT_SECONDS = tostring(var.predict_wait_seconds)
    LTXV_MAX_JOBS_IN_FLIGHT   = tostring(var.max_jobs_in_flight_per_key)
    LTXV_LOG_LEVEL            = var.log_level
  }
}

# Read through Cloud Resource Manager, which a fresh project may not have on yet.
data "google_project" "this" {
  project_id = var.project_id
  depends_on = [time_sleep.apis_ready]
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudquotas.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "iap.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
  project = var.project_id
  service = each.value

  # Other things in the project may use these too: destroying the pipeline leaves them on.
  disable_on_destroy = false
}

# A service reports enabled before every API behind it answers: calls in the first
# minute of a fresh project can fail with 403 "API has not been used in project …
# or it is disabled". Everything that calls a Google API depends on this gate (the
# provider's own cloudfunctions2_function example waits 60 s the same way).
resource "time_sleep" "apis_ready" {
  create_duration = "60s"
  depends_on      = [google_project_service.apis]
}
