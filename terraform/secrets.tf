# API keys are generated here; Secret Manager holds only their SHA-256 hashes (the JSON
# object src/ltxv/intake/auth.py reads). The plaintext keys are in the sensitive output api_keys,
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

  depends_on = [time_sleep.apis_ready]
}

resource "google_secret_manager_secret_version" "api_keys" {
  secret      = google_secret_manager_secret.api_keys.id
  secret_data = jsonencode({ for id, key in local.api_keys : id => sha256(key) })
}

# Webhook signing secrets, one set per API key (the JSON src/ltxv/core/webhook_secrets.py reads:
# {"KEY": ["whsec_current", "whsec_previous"?]}), so no tenant can sign events another
# tenant's receiver accepts. Each generation of a key's secret is its own random_bytes,
# addressed "KEY/GENERATION" (whsec_ and 32 random bytes, base64, as Standard Webhooks
# spells it). Rotation without downtime:
#   1. webhook_secret_generations = { KEY = 2 } and webhook_secret_keep_previous = ["KEY"]:
#      a new secret is minted and signs first; the old one still signs next to it.
#   2. The client's receivers switch to the new one (terraform output, or the client's own
#      GET /v1/webhooks/secret) while every delivery carries both signatures.
#   3. Drop KEY from webhook_secret_keep_previous: the old secret is destroyed.
# Raising a generation without keeping the previous one replaces the secret at once (a
# leaked secret). The functions re-read the secret within LTXV_WEBHOOK_SECRETS_CACHE_SECONDS.
locals {
  webhook_secret_generation = { for id in var.api_key_ids : id => lookup(var.webhook_secret_generations, id, 1) }
  webhook_secret_signing = {
    for id, generation in local.webhook_secret_generation : id => concat(
      [generation],
      contains(var.webhook_secret_keep_previous, id) && generation > 1 ? [generation - 1] : [],
    )
  }
  webhook_secret_versions = toset(flatten([
    for id, generations in local.webhook_secret_signing : [for generation in generations : "${id}/${generation}"]
  ]))
  webhook_secrets = {
    for id, generations in local.webhook_secret_signing :
    id => [for generation in generations : "whsec_${random_bytes.webhook_secret["${id}/${generation}"].base64}"]
  }
}

resource "random_bytes" "webhook_secret" {
  for_each = local.webhook_secret_versions
  length   = 32
}

# No `moved` from the one shared secret of earlier versions: every tenant knew it, so no
# key may keep it (any tenant could forge events its receivers accept). An upgrade mints a
# fresh secret for every key; receivers switch to their own (README, "Updates, keys").

resource "google_secret_manager_secret" "webhook_secrets" {
  secret_id = "${var.prefix}-webhook-secrets"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [time_sleep.apis_ready]
}

resource "google_secret_manager_secret_version" "webhook_secrets" {
  secret      = google_secret_manager_secret.webhook_secrets.id
  secret_data = jsonencode(local.webhook_secrets)

  lifecycle {
    # The new version before the old one goes: "latest" never points at nothing.
    create_before_destroy = true

    precondition {
      condition     = alltrue([for id in keys(var.webhook_secret_generations) : contains(var.api_key_ids, id)])
      error_message = "webhook_secret_generations names a key id that is not in api_key_ids."
    }
    precondition {
      condition     = alltrue([for id in var.webhook_secret_keep_previous : contains(var.api_key_ids, id) && lookup(var.webhook_secret_generations, id, 1) > 1])
      error_message = "webhook_secret_keep_previous: each key id must be in api_key_ids and have a generation of 2 or more in webhook_secret_generations (generation 1 has no previous secret)."
    }
  }
}
