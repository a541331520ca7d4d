locals {
  buckets = {
    (local.bucket_prompts)     = { purpose = "prompts" }
    (local.bucket_outputs)     = { purpose = "outputs" }
    (local.bucket_inputs)      = { purpose = "inputs" }
    (local.bucket_model_cache) = { purpose = "model-cache" }
    (local.bucket_source)      = { purpose = "function-source" }
  }
  # What each bucket forgets, and when (by purpose): `days` after creation, or after the
  # object's Custom-Time where `since_custom_time`.
  bucket_expiry = {
    prompts = [{ prefixes = ["incoming/", "receipts/"], days = var.prompt_retention_days, since_custom_time = false }]
    # jobs/: each job's own files; destinations/KEY/: the keys' custom gcs_destination
    # videos (src/ltxv/core/results.py names both).
    outputs = [{ prefixes = ["jobs/", "destinations/"], days = var.output_retention_days, since_custom_time = false }]
    # keys/KEY/uploads/ and keys/KEY/inline/ (src/ltxv/core/inputs.py): conditioning media,
    # pinned again by later jobs long after they were written. Intake sets Custom-Time when
    # it writes or signs one and moves it forward when a job pins it (docs/architecture.md,
    # "Retention"); an object whose Custom-Time is unset never matches, and intake sets it
    # on every object it writes under keys/.
    inputs = [{ prefixes = ["keys/"], days = var.inputs_retention_days, since_custom_time = true }]
  }
  # Browsers PUT uploads straight to the inputs bucket with a signed URL (POST /v1/uploads)
  # from the web page's origin, sending the signed headers (src/ltxv/intake/uploads.py,
  # UPLOAD_CORS_HEADERS). Its origin is the API function's URL, known before apply in its
  # cloudfunctions.net form; referring to the function itself would be a cycle (it waits
  # for the grants on this bucket).
  bucket_cors = {
    inputs = [{
      origins = concat(["https://${var.region}-${var.project_id}.cloudfunctions.net"], var.inputs_cors_origins)
      methods = ["PUT"]
      headers = ["Content-Type", "x-goog-content-length-range", "x-goog-if-generation-match", "x-goog-custom-time"]
    }]
  }
}

resource "google_storage_bucket" "this" {
  # checkov:skip=CKV_GCP_62:Access logs would record every video download; Cloud Audit Logs (data access) are the place to turn that on.
  # checkov:skip=CKV_GCP_78:Objects are written once (result.json with if_generation_match=0); versioning would only keep deleted videos past their retention.
  for_each = local.buckets

  name                        = each.key
  location                    = var.region
  labels                      = merge(local.labels, { purpose = each.value.purpose })
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Deleted objects stay recoverable for a week.
  soft_delete_policy {
    retention_duration_seconds = 604800
  }

  dynamic "lifecycle_rule" {
    for_each = lookup(local.bucket_expiry, each.value.purpose, [])
    content {
      condition {
        age                    = lifecycle_rule.value.since_custom_time ? null : lifecycle_rule.value.days
        days_since_custom_time = lifecycle_rule.value.since_custom_time ? lifecycle_rule.value.days : null
        matches_prefix         = lifecycle_rule.value.prefixes
        # Provider 6+: an unset age is not sent as 0 unless this is true (explicit here, as
        # an age of 0 would match every object at once).
        send_age_if_zero = false
      }
      action {
        type = "Delete"
      }
    }
  }

  dynamic "cors" {
    for_each = lookup(local.bucket_cors, each.value.purpose, [])
    content {
      origin          = cors.value.origins
      method          = cors.value.methods
      response_header = cors.value.headers
      max_age_seconds = 3600
    }
  }

  depends_on = [time_sleep.apis_ready]
}

# Archives built by tools/package.py (the same step as `make package`): the two function
# sources and the worker's source distribution. The MD5 in each name makes a changed archive
# a new object, which redeploys what uses it; an unchanged tree uploads nothing.
data "external" "package" {
  for_each = toset(["submit", "notify", "worker"])
  program  = ["python3", "${path.module}/../tools/package.py", "--terraform"]
  query = {
    target  = each.key
    out_dir = "${path.module}/../build/package"
  }
}

resource "google_storage_bucket_object" "package" {
  for_each = data.external.package

  bucket = google_storage_bucket.this[local.bucket_source].name
  name   = "${each.key}/${each.key}-${each.value.result.md5}.zip"
  source = each.value.result.path
}
