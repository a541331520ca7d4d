resource "google_firestore_database" "this" {
  name                              = "(default)"
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "OPTIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  deletion_policy                   = "ABANDON"
  depends_on                        = [time_sleep.apis_ready]
}

# The queries of src/ltxv/core/store.py: a key's jobs newest first (GET /v1/jobs), optionally
# of one state; how many of a key's jobs are queued or running (a count at each submit) and
# of a model's (the sweep's pool load); the sweep's unpublished jobs older than a minute,
# and its queued jobs past their queue deadline. And of src/ltxv/intake/queue_estimates.py
# (GET /v1/jobs/{id}): how many queued jobs of a model and lane are older than a job, and
# how many wait in the higher lanes.
locals {
  firestore_indexes = {
    list_by_key = [
      { field = "api_key_id", order = "ASCENDING" },
      { field = "created_at", order = "DESCENDING" },
      { field = "job_id", order = "DESCENDING" },
    ]
    list_by_key_and_state = [
      { field = "api_key_id", order = "ASCENDING" },
      { field = "state", order = "ASCENDING" },
      { field = "created_at", order = "DESCENDING" },
      { field = "job_id", order = "DESCENDING" },
    ]
    in_flight_by_key = [
      { field = "api_key_id", order = "ASCENDING" },
      { field = "state", order = "ASCENDING" },
    ]
    # Each pool's load, counted by the sweep (ltxv.intake.pool_metric).
    active_by_model = [
      { field = "model", order = "ASCENDING" },
      { field = "state", order = "ASCENDING" },
    ]
    unpublished = [
      { field = "published", order = "ASCENDING" },
      { field = "created_at", order = "ASCENDING" },
    ]
    queued_past_deadline = [
      { field = "state", order = "ASCENDING" },
      { field = "queue_deadline_at", order = "ASCENDING" },
    ]
    queued_ahead_in_lane = [
      { field = "model", order = "ASCENDING" },
      { field = "priority", order = "ASCENDING" },
      { field = "state", order = "ASCENDING" },
      { field = "created_at", order = "ASCENDING" },
    ]
    queued_in_lanes = [
      { field = "model", order = "ASCENDING" },
      { field = "priority", order = "ASCENDING" },
      { field = "state", order = "ASCENDING" },
    ]
  }
}

resource "google_firestore_index" "jobs" {
  for_each = local.firestore_indexes

  database    = google_firestore_database.this.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value
    content {
      field_path = fields.value.field
      order      = fields.value.order
    }
  }
}

# Jobs delete themselves at expires_at (LTXV_JOB_TTL_DAYS after creation).
resource "google_firestore_field" "jobs_ttl" {
  database   = google_firestore_database.this.name
  collection = "jobs"
  field      = "expires_at"

  ttl_config {}

  # A TTL field needs no single-field index.
  index_config {}
}

# A prompt file's batch (src/ltxv/core/batches.py) lives as long as its jobs.
resource "google_firestore_field" "batches_ttl" {
  database   = google_firestore_database.this.name
  collection = "batches"
  field      = "expires_at"

  ttl_config {}

  index_config {}
}

# Each API key's count of upload URLs per hour (src/ltxv/intake/upload_quota.py) is kept a day.
resource "google_firestore_field" "upload_counts_ttl" {
  database   = google_firestore_database.this.name
  collection = "upload_counts"
  field      = "expires_at"

  ttl_config {}

  index_config {}
}

# A batch's lists hold one entry per line of its file (up to LTXV_PROMPT_FILE_MAX_LINES), and
# nothing queries them: unindexed, each settle's ArrayUnion writes one entry, not an index
# entry per element (and a 5000-line file stays far from 40,000 index entries a document).
resource "google_firestore_field" "batches_unindexed" {
  for_each = toset(["accepted", "rejected", "settled"])

  database   = google_firestore_database.this.name
  collection = "batches"
  field      = each.key

  index_config {}
}

# Each GPU worker's heartbeat (src/ltxv/core/workers.py): queue estimates read the live
# workers of a model, those that beat since a moment ago.
resource "google_firestore_index" "workers_live" {
  database    = google_firestore_database.this.name
  collection  = "workers"
  query_scope = "COLLECTION"

  fields {
    field_path = "model"
    order      = "ASCENDING"
  }
  fields {
    field_path = "last_seen"
    order      = "ASCENDING"
  }
}

# A worker deletes its document when it stops; one that died leaves it behind, and the TTL
# removes it a day after its last beat (estimates ignore it long before: last_seen).
resource "google_firestore_field" "workers_ttl" {
  database   = google_firestore_database.this.name
  collection = "workers"
  field      = "expires_at"

  ttl_config {}

  index_config {}
}
