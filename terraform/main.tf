# Names follow src/ltxv/settings.py, so the code finds every resource from LTXV_PREFIX alone.
locals {
  labels = merge({ app = "ltx-video-pipeline", deployment = var.prefix }, var.labels)

  topic_jobs        = "${var.prefix}-jobs"
  subscription_jobs = "${var.prefix}-jobs-worker"
  topic_dead_letter = "${var.prefix}-jobs-dead-letter"
  topic_sweep       = "${var.prefix}-sweep"

  bucket_prompts     = "${var.prefix}-prompts"
  bucket_outputs     = "${var.prefix}-outputs"
  bucket_model_cache = "${var.prefix}-model-cache"
  bucket_source      = "${var.prefix}-function-source"

  # Every model in var.models gets its own worker pool (a subscription, an instance
  # template, a group and its autoscaler); the first also takes requests that name none.
  default_model = var.models[0]
  worker_pools = {
    for model in var.models : model => {
      # As src/ltxv/settings.py names it (Settings.subscription_for).
      subscription = "${local.subscription_jobs}-${model}"
      # The same filter as src/ltxv/dispatch.py's subscription_filter(), character for
      # character (tests/terraform compares them). The default pool also takes messages
      # without a model attribute, published before messages carried one.
      filter = (
        model == local.default_model
        ? "attributes.model = \"${model}\" OR NOT attributes:model"
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

  # What every function reads (src/ltxv/settings.py); secrets are added per function.
  function_env = {
    LTXV_PROJECT              = var.project_id
    LTXV_PREFIX               = var.prefix
    LTXV_MODELS               = join(",", var.models)
    LTXV_DEFAULT_MODEL        = local.default_model
    LTXV_DESTINATION_BUCKETS  = jsonencode(var.destination_buckets)
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
