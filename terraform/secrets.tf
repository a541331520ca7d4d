# API keys are generated here; Secret Manager holds only their SHA-256 hashes (the JSON
# object src/ltxv/auth.py reads). The plaintext keys are in the sensitive output api_keys,
# and in the terraform state: keep the state in a private, encrypted backend.
resource "random_password" "api_key" {
  for_each = var.api_key_ids
  length   = 43
  special  = false
}

locals {
  api_keys = { for id, key in random_password.api_key : id => "ltxv_${key.result}" }
}

resource "google_secret_manager_secret" "api_keys" {
  secret_id = "${var.prefix}-api-keys"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "api_keys" {
  secret      = google_secret_manager_secret.api_keys.id
  secret_data = jsonencode({ for id, key in local.api_keys : id => sha256(key) })
}

# The Standard Webhooks signing secret: whsec_ and 32 random bytes, base64.
resource "random_bytes" "webhook_secret" {
  length = 32
}

resource "google_secret_manager_secret" "webhook_secret" {
  secret_id = "${var.prefix}-webhook-secret"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "webhook_secret" {
  secret      = google_secret_manager_secret.webhook_secret.id
  secret_data = "whsec_${random_bytes.webhook_secret.base64}"
}
