output "api_url" {
  description = "Base URL of the jobs API (POST /v1/jobs, GET /v1/jobs/{id}, POST /predict, GET /openapi.json)."
  value       = google_cloudfunctions2_function.api.url
}

output "api_keys" {
  description = "The generated API keys by id (send as X-API-Key or Authorization: Bearer). `terraform output -json api_keys`."
  value       = local.api_keys
  sensitive   = true
}

output "prompts_bucket" {
  description = "Drop prompt files into gs://BUCKET/incoming/ (.json or .jsonl); receipts appear under receipts/."
  value       = google_storage_bucket.this[local.bucket_prompts].name
}

output "outputs_bucket" {
  description = "Videos, posters and result.json files: gs://BUCKET/jobs/JOB_ID/."
  value       = google_storage_bucket.this[local.bucket_outputs].name
}

output "api_keys_secret" {
  description = "Secret Manager secret holding the API keys' SHA-256 hashes (JSON object key id -> hash)."
  value       = google_secret_manager_secret.api_keys.id
}

output "webhook_secrets" {
  description = "Each API key's current webhook signing secret (whsec_...) by key id: give each client its own (`terraform output -json webhook_secrets`); a client can also ask for its own with GET /v1/webhooks/secret."
  value       = { for id, secrets in local.webhook_secrets : id => secrets[0] }
  sensitive   = true
}

output "webhook_secrets_secret" {
  description = "Secret Manager secret holding every API key's webhook signing secrets (JSON key id -> [current, previous])."
  value       = google_secret_manager_secret.webhook_secrets.secret_id
}

output "worker_subscriptions" {
  description = "The Pub/Sub subscriptions each model's GPU workers pull, one per priority lane: keyed MODEL (the normal lane) and MODEL/high, MODEL/low; their backlogs drive that model's autoscaler."
  value       = { for model, subscription in google_pubsub_subscription.worker : model => subscription.name }
}

output "dead_letter_subscription" {
  description = "Dead-lettered job messages kept for inspection (the alert's backlog)."
  value       = google_pubsub_subscription.dead_letter_audit.name
}

output "example_request" {
  description = "A first request, the old /predict example as a job."
  value       = <<-EOT
    curl -s -X POST "${google_cloudfunctions2_function.api.url}/v1/jobs" \
      -H "Content-Type: application/json" \
      -H "X-API-Key: $(terraform output -json api_keys | jq -r '.["${var.prompt_file_owner}"]')" \
      -d '{"prompt": "A cinematic shot of a cyberpunk city in rain", "num_frames": 121, "width": 1216, "height": 704}'
  EOT
}
