# One service account per function and one for the workers, each with only what its code
# calls; bucket-, topic-, subscription-, repository- and secret-level bindings wherever the
# resource takes them. Project-level: Firestore (datastore.user: no finer IAM exists),
# logging and monitoring writers, and Eventarc's receiver role.

locals {
  # function key => service account id suffix
  function_accounts = {
    api          = "api"
    prompt-file  = "prompts"
    redispatch   = "sweep"
    result-ready = "results"
    dead-letter  = "deadletter"
  }
  event_functions = toset(keys(local.event_function))
}

resource "google_service_account" "function" {
  for_each     = local.function_accounts
  account_id   = "${var.prefix}-${each.value}"
  display_name = "ltx-video-pipeline function ${each.key}"
  depends_on   = [time_sleep.apis_ready]
}

resource "google_service_account" "worker" {
  account_id   = "${var.prefix}-worker"
  display_name = "ltx-video-pipeline GPU worker"
  depends_on   = [time_sleep.apis_ready]
}

# Builds the functions' containers instead of the default compute service account.
resource "google_service_account" "build" {
  account_id   = "${var.prefix}-build"
  display_name = "ltx-video-pipeline function builds"
  depends_on   = [time_sleep.apis_ready]
}

locals {
  # Emails spelled out (rather than read from the accounts) so that every binding below is
  # known before apply; depends_on orders them after the accounts.
  email     = { for key, id in merge(local.function_accounts, { worker = "worker", build = "build" }) : key => "${var.prefix}-${id}@${var.project_id}.iam.gserviceaccount.com" }
  sa        = { for key in keys(local.function_accounts) : key => "serviceAccount:${local.email[key]}" }
  worker_sa = "serviceAccount:${local.email["worker"]}"
  build_sa  = "serviceAccount:${local.email["build"]}"

  project_roles = merge(
    { for key in keys(local.function_accounts) : "${key}/datastore" => { member = local.sa[key], role = "roles/datastore.user" } },
    { for key in local.event_functions : "${key}/eventarc" => { member = local.sa[key], role = "roles/eventarc.eventReceiver" } },
    {
      "worker/datastore"  = { member = local.worker_sa, role = "roles/datastore.user" }
      "worker/logging"    = { member = local.worker_sa, role = "roles/logging.logWriter" }
      "worker/monitoring" = { member = local.worker_sa, role = "roles/monitoring.metricWriter" }
      # The sweep writes each pool's load (google_monitoring_metric_descriptor.pool_jobs).
      "redispatch/monitoring" = { member = local.sa["redispatch"], role = "roles/monitoring.metricWriter" }
      # The build account writes build logs; it pushes images only to the functions'
      # repository (google_artifact_registry_repository_iam_member.build_pushes) and reads
      # only the source bucket. roles/cloudbuild.builds.builder would also let it publish
      # to any topic, read any bucket and deploy to Cloud Run and App Engine. What a custom
      # build account needs: "Custom service account for Cloud Build" in the Cloud Run
      # functions docs (Logs Writer, Artifact Registry Writer, read on the source).
      "build/logging" = { member = local.build_sa, role = "roles/logging.logWriter" }
    },
  )

  bucket_roles = merge(
    {
      "api/outputs"          = { bucket = local.bucket_outputs, member = local.sa["api"], role = "roles/storage.objectViewer" }
      "prompt-file/prompts"  = { bucket = local.bucket_prompts, member = local.sa["prompt-file"], role = "roles/storage.objectUser" }
      "result-ready/outputs" = { bucket = local.bucket_outputs, member = local.sa["result-ready"], role = "roles/storage.objectViewer" }
      "dead-letter/outputs"  = { bucket = local.bucket_outputs, member = local.sa["dead-letter"], role = "roles/storage.objectUser" }
      "worker/outputs"       = { bucket = local.bucket_outputs, member = local.worker_sa, role = "roles/storage.objectUser" }
      "worker/model-cache"   = { bucket = local.bucket_model_cache, member = local.worker_sa, role = "roles/storage.objectUser" }
      "worker/package"       = { bucket = local.bucket_source, member = local.worker_sa, role = "roles/storage.objectViewer" }
      "build/source"         = { bucket = local.bucket_source, member = local.build_sa, role = "roles/storage.objectViewer" }
    },
    # gcs_destination buckets: workers write there (create, and replace only their own job's
    # earlier attempt), the API signs URLs for what they wrote.
    { for b in keys(var.destination_buckets) : "worker/${b}" => { bucket = b, member = local.worker_sa, role = "roles/storage.objectUser" } },
    { for b in keys(var.destination_buckets) : "api/${b}" => { bucket = b, member = local.sa["api"], role = "roles/storage.objectViewer" } },
    # A prompt-file line may extend a job whose video went to such a bucket.
    { for b in keys(var.destination_buckets) : "prompt-file/${b}" => { bucket = b, member = local.sa["prompt-file"], role = "roles/storage.objectViewer" } },
    # Conditioning inputs. The API writes inline data: URLs and signs upload PUTs (a signed
    # URL carries its signer's permissions): create, never delete or replace, and reads
    # what a job names to check it at submit (the outputs bucket already, for extend). A
    # prompt-file line goes through the same checks: it may name gs:// conditions, inline
    # data: URLs (written like the API's) and extend (the earlier video, in outputs). The
    # workers read the exact generation intake checked.
    {
      "api/inputs-create"         = { bucket = local.bucket_inputs, member = local.sa["api"], role = "roles/storage.objectCreator" }
      "api/inputs"                = { bucket = local.bucket_inputs, member = local.sa["api"], role = "roles/storage.objectViewer" }
      "prompt-file/inputs-create" = { bucket = local.bucket_inputs, member = local.sa["prompt-file"], role = "roles/storage.objectCreator" }
      "prompt-file/inputs"        = { bucket = local.bucket_inputs, member = local.sa["prompt-file"], role = "roles/storage.objectViewer" }
      "prompt-file/outputs"       = { bucket = local.bucket_outputs, member = local.sa["prompt-file"], role = "roles/storage.objectViewer" }
      "worker/inputs"             = { bucket = local.bucket_inputs, member = local.worker_sa, role = "roles/storage.objectViewer" }
    },
    { for b in keys(var.input_buckets) : "api/input/${b}" => { bucket = b, member = local.sa["api"], role = "roles/storage.objectViewer" } },
    { for b in keys(var.input_buckets) : "prompt-file/input/${b}" => { bucket = b, member = local.sa["prompt-file"], role = "roles/storage.objectViewer" } },
    { for b in keys(var.input_buckets) : "worker/input/${b}" => { bucket = b, member = local.worker_sa, role = "roles/storage.objectViewer" } },
  )
}

data "google_storage_project_service_account" "gcs" {
  depends_on = [time_sleep.apis_ready]
}

resource "google_project_iam_member" "this" {
  for_each   = local.project_roles
  project    = var.project_id
  role       = each.value.role
  member     = each.value.member
  depends_on = [google_service_account.function, google_service_account.worker, google_service_account.build]
}

# Eventarc storage triggers: Cloud Storage publishes object events through Pub/Sub.
resource "google_project_iam_member" "gcs_agent_publisher" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_bucket_iam_member" "this" {
  for_each   = local.bucket_roles
  bucket     = each.value.bucket
  role       = each.value.role
  member     = each.value.member
  depends_on = [google_storage_bucket.this, google_service_account.function, google_service_account.worker, google_service_account.build]
}

# Intake publishes job ids; only the functions that create jobs may.
resource "google_pubsub_topic_iam_member" "jobs_publisher" {
  for_each   = toset(["api", "prompt-file", "redispatch"])
  topic      = google_pubsub_topic.jobs.id
  role       = "roles/pubsub.publisher"
  member     = local.sa[each.key]
  depends_on = [google_service_account.function, google_service_account.worker]
}

# Each pool's workers pull every lane of their own model, and nothing else.
resource "google_pubsub_subscription_iam_member" "worker_subscriber" {
  for_each     = local.worker_lanes
  subscription = google_pubsub_subscription.worker[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.worker_sa
  depends_on   = [google_service_account.function, google_service_account.worker]
}

resource "google_secret_manager_secret_iam_member" "api_keys" {
  secret_id  = google_secret_manager_secret.api_keys.id
  role       = "roles/secretmanager.secretAccessor"
  member     = local.sa["api"]
  depends_on = [google_service_account.function, google_service_account.worker]
}

# result-ready signs each event with its owner's secrets; the API shows a key its own.
resource "google_secret_manager_secret_iam_member" "webhook_secrets" {
  for_each   = toset(["api", "result-ready"])
  secret_id  = google_secret_manager_secret.webhook_secrets.id
  role       = "roles/secretmanager.secretAccessor"
  member     = local.sa[each.key]
  depends_on = [google_service_account.function, google_service_account.worker]
}

# A job canceled in the queue gets its result.json (and so its job.canceled webhook) from
# the API's cancel call, not from a GPU VM booted for it; a webhook redelivery is asked
# of result-ready by a jobs/JOB/redelivery-N.webhook.json trigger object (the API never
# signs: ltxv/core/webhook_triggers.py). The API may create exactly those objects.
# objectCreator holds no delete, so with the write's if_generation_match=0 nothing is
# ever overwritten. Conditions name an object as projects/_/buckets/BUCKET/objects/NAME
# (IAM Conditions, resource attributes: Cloud Storage); the bucket has uniform access.
resource "google_storage_bucket_iam_member" "api_writes_canceled_results" {
  bucket = local.bucket_outputs
  role   = "roles/storage.objectCreator"
  member = local.sa["api"]

  condition {
    title       = "canceled-job-results-and-webhook-triggers-only"
    description = "Create jobs/JOB/result.json and jobs/JOB/*.webhook.json in the outputs bucket, nothing else."
    expression  = "resource.name.startsWith(\"projects/_/buckets/${local.bucket_outputs}/objects/jobs/\") && (resource.name.endsWith(\"/result.json\") || resource.name.endsWith(\".webhook.json\"))"
  }

  depends_on = [google_storage_bucket.this, google_service_account.function]
}

# A prompt file none of whose lines became a job has no result.json to complete its batch:
# the prompt-file function writes batches/BATCH/completed.webhook.json instead, and
# result-ready sends its batch.completed event (ltxv/core/webhook_triggers.py). Create-only
# (objectCreator, with if_generation_match=0), and only such names.
resource "google_storage_bucket_iam_member" "prompt_file_writes_batch_triggers" {
  bucket = local.bucket_outputs
  role   = "roles/storage.objectCreator"
  member = local.sa["prompt-file"]

  condition {
    title       = "batch-webhook-triggers-only"
    description = "Create batches/BATCH/*.webhook.json in the outputs bucket, nothing else."
    expression  = "resource.name.startsWith(\"projects/_/buckets/${local.bucket_outputs}/objects/batches/\") && resource.name.endsWith(\".webhook.json\")"
  }

  depends_on = [google_storage_bucket.this, google_service_account.function]
}

# A prompt file's batch manifest is written by result-ready when its last job settles:
# create-only, or replacing an older upload's manifest of the same name (so objectUser,
# which can delete), and only under results/ of the prompts bucket.
resource "google_storage_bucket_iam_member" "result_ready_writes_manifests" {
  bucket = local.bucket_prompts
  role   = "roles/storage.objectUser"
  member = local.sa["result-ready"]

  condition {
    title       = "batch-manifests-only"
    description = "Read, create and replace results/* in the prompts bucket, nothing else."
    expression  = "resource.name.startsWith(\"projects/_/buckets/${local.bucket_prompts}/objects/results/\")"
  }

  depends_on = [google_storage_bucket.this, google_service_account.function]
}

# Permissions no predefined role holds alone, as custom roles. Custom roles are
# soft-deleted for 7 days and their ids stay taken for up to 37 (provider docs,
# google_project_iam_custom_role), so the ids carry a random suffix: a destroy and re-apply
# within that window gets fresh ones.
resource "random_id" "custom_roles" {
  byte_length = 3
}

locals {
  custom_role_prefix = replace(var.prefix, "-", "_")
}

# Signed video URLs: the API's credentials hold no key, so it signs through IAM signBlob
# as itself, and may do nothing else as itself: roles/iam.serviceAccountTokenCreator would
# add access tokens, ID tokens and signJwt.
resource "google_project_iam_custom_role" "sign_blob" {
  project     = var.project_id
  role_id     = "${local.custom_role_prefix}_sign_blob_${random_id.custom_roles.hex}"
  title       = "${var.prefix} sign blobs as a service account"
  description = "iam.serviceAccounts.signBlob only: the ltx-video-pipeline API signs video URLs as itself."
  permissions = ["iam.serviceAccounts.signBlob"]
  depends_on  = [time_sleep.apis_ready]
}

# A worker VM asks its instance group whether it was created for the standby pool
# (gpu_worker/vm/boot/60-workers.sh, target_status): read access to instance groups, nothing
# else (roles/compute.viewer would read every Compute resource of the project).
resource "google_project_iam_custom_role" "read_instance_groups" {
  project     = var.project_id
  role_id     = "${local.custom_role_prefix}_read_groups_${random_id.custom_roles.hex}"
  title       = "${var.prefix} read managed instance groups"
  description = "Read managed instance groups only: ltx-video-pipeline workers read their group's view of themselves."
  # list-instances (instanceGroupManagers.listManagedInstances) is documented with both.
  permissions = ["compute.instanceGroupManagers.get", "compute.instanceGroupManagers.list"]
  depends_on  = [time_sleep.apis_ready]
}

# Retention of conditioning inputs counts from each object's Custom-Time (storage.tf), which
# intake moves forward when a job pins an object (a metadata patch conditioned on the pinned
# generation). storage.objects.update patches metadata only: replacing an object's bytes
# also needs storage.objects.delete, which no one holds on the inputs bucket. Granted on
# that bucket alone (google_storage_bucket_iam_member.inputs_touch).
resource "google_project_iam_custom_role" "inputs_touch" {
  project     = var.project_id
  role_id     = "${local.custom_role_prefix}_inputs_touch_${random_id.custom_roles.hex}"
  title       = "${var.prefix} move conditioning inputs' Custom-Time"
  description = "storage.objects.update only: ltx-video-pipeline intake moves a pinned input's Custom-Time forward so the inputs bucket keeps it."
  permissions = ["storage.objects.update"]
  depends_on  = [time_sleep.apis_ready]
}

resource "google_storage_bucket_iam_member" "inputs_touch" {
  for_each   = toset(["api", "prompt-file"])
  bucket     = local.bucket_inputs
  role       = google_project_iam_custom_role.inputs_touch.name
  member     = local.sa[each.key]
  depends_on = [google_storage_bucket.this, google_service_account.function]
}

resource "google_project_iam_member" "worker_reads_instance_groups" {
  project    = var.project_id
  role       = google_project_iam_custom_role.read_instance_groups.name
  member     = local.worker_sa
  depends_on = [google_service_account.worker]
}

resource "google_service_account_iam_member" "api_signs_as_itself" {
  service_account_id = google_service_account.function["api"].name
  role               = google_project_iam_custom_role.sign_blob.name
  member             = local.sa["api"]
  depends_on         = [google_service_account.function, google_service_account.worker]
}

# Cloud Functions copies each function's source into a bucket of its own,
# gcf-v2-sources-PROJECT_NUMBER-REGION, and the build reads it from there: without read on
# it every build fails with "Access to bucket gcf-v2-sources-… denied. You must grant
# Storage Object Viewer" (hashicorp/terraform-provider-google#20571). The bucket is not
# the deployment's to bind on, so the grant is project-level with a condition naming it.
locals {
  function_sources_bucket = "projects/_/buckets/gcf-v2-sources-${data.google_project.this.number}-${var.region}"
}

resource "google_project_iam_member" "build_reads_function_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = local.build_sa

  condition {
    title       = "function-sources-only"
    description = "The Cloud Functions source bucket of this region, nothing else."
    expression  = "resource.name == \"${local.function_sources_bucket}\" || resource.name.startsWith(\"${local.function_sources_bucket}/\")"
  }

  depends_on = [google_service_account.build]
}

# Cloud Build pushes the functions' images to the deployment's own repository only.
resource "google_artifact_registry_repository_iam_member" "build_pushes" {
  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = local.build_sa
  depends_on = [google_service_account.build]
}

# Eventarc delivers to each event function as that function's own service account.
resource "google_cloud_run_v2_service_iam_member" "event_invoker" {
  for_each = local.event_functions
  name     = "${var.prefix}-${each.key}" # the function's Cloud Run service
  location = var.region
  role     = "roles/run.invoker"
  member   = local.sa[each.key]

  depends_on = [google_cloudfunctions2_function.on_storage, google_cloudfunctions2_function.on_pubsub, google_service_account.function]
}

# The HTTP API authenticates requests itself (API keys, as the old /predict did), so its
# service is reachable without Google identity.
resource "google_cloud_run_v2_service_iam_member" "api_public" {
  name     = google_cloudfunctions2_function.api.name
  location = var.region
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# IAM grants take effect after the call returns ("typically within 2 minutes", IAM docs,
# Access change propagation). Builds, Eventarc triggers and the functions' first calls
# fail on a fresh project if they start before their grants do, so they wait for this.
# Eventarc's own service agent gets its role when the API is enabled, and a trigger
# created before that propagated fails with "Permission denied while using the Eventarc
# Service Agent … it may take a few minutes" (hashicorp/terraform-provider-google#25294,
# open): the functions come at least 60 + 120 s after the API was enabled.
resource "time_sleep" "iam_ready" {
  create_duration = "120s"
  depends_on = [
    google_project_iam_member.this,
    google_project_iam_member.gcs_agent_publisher,
    google_storage_bucket_iam_member.this,
    google_storage_bucket_iam_member.api_writes_canceled_results,
    google_storage_bucket_iam_member.prompt_file_writes_batch_triggers,
    google_storage_bucket_iam_member.result_ready_writes_manifests,
    google_storage_bucket_iam_member.inputs_touch,
    google_pubsub_topic_iam_member.jobs_publisher,
    google_pubsub_subscription_iam_member.worker_subscriber,
    google_pubsub_topic_iam_member.dead_letter_publisher,
    google_pubsub_subscription_iam_member.dead_letter_source_subscriber,
    google_secret_manager_secret_iam_member.api_keys,
    google_secret_manager_secret_iam_member.webhook_secrets,
    google_service_account_iam_member.api_signs_as_itself,
    google_artifact_registry_repository_iam_member.build_pushes,
    google_project_iam_member.build_reads_function_sources,
    google_project_iam_member.operators,
    google_project_iam_member.worker_reads_instance_groups,
    google_service_account_iam_member.operators_act_as_worker,
  ]
}

# Operators (var.operators) reach the workers over IAP SSH (`gcloud compute ssh VM
# --tunnel-through-iap`): an IAP tunnel into the project (the firewall admits only IAP's
# range, network.tf), an OS Login account on the VMs, and acting as the VMs' service
# account, which OS Login requires for VMs that run as one ("Connect to VMs that use
# service accounts", OS Login docs).
locals {
  operator_roles = merge([
    for member in var.operators : {
      "${member}/iap"     = { member = member, role = "roles/iap.tunnelResourceAccessor" }
      "${member}/oslogin" = { member = member, role = "roles/compute.osLogin" }
    }
  ]...)
}

resource "google_project_iam_member" "operators" {
  for_each   = local.operator_roles
  project    = var.project_id
  role       = each.value.role
  member     = each.value.member
  depends_on = [time_sleep.apis_ready]
}

resource "google_service_account_iam_member" "operators_act_as_worker" {
  for_each           = toset(var.operators)
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}
