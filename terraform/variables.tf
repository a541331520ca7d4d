variable "project_id" {
  description = "The GCP project to deploy into."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a GCP project id: 6-30 lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of the functions, buckets, Eventarc triggers and the worker instance group. It must offer NVIDIA L4 GPUs (g2 machines) in the zones below."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a GCP region name such as us-central1."
  }
}

variable "worker_zones" {
  description = "Zones of the region the worker group may place VMs in (each must have L4 GPUs). Empty: the group chooses up to three zones of the region. Rolling updates replace up to one VM per zone at a time."
  type        = list(string)
  default     = ["us-central1-a", "us-central1-b", "us-central1-c"]

  validation {
    condition     = alltrue([for zone in var.worker_zones : can(regex("^[a-z]+-[a-z]+[0-9]-[a-z]$", zone))])
    error_message = "worker_zones must be zone names such as us-central1-a."
  }
}

variable "prefix" {
  description = "Prefix of every resource name (topics, buckets, functions, service accounts). Bucket names are global: pick one unique to you."
  type        = string
  default     = "ltxv"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,14}[a-z0-9]$", var.prefix))
    error_message = "prefix must be 4-16 lower-case letters, digits and hyphens, starting with a letter (it ends up in service account ids, which are short)."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels."
  type        = map(string)
  default     = {}
}

variable "firestore_location" {
  description = "Location of the Firestore database (a multi-region such as nam5, or a region). Fixed once created."
  type        = string
  default     = "nam5"
}

# --- the API and intake ---------------------------------------------------------------------

variable "api_key_ids" {
  description = "Ids of the API keys terraform generates (one per client). Each key's plaintext is in the sensitive output api_keys; only its SHA-256 hash is stored, in Secret Manager."
  type        = set(string)
  default     = ["default"]

  validation {
    condition     = length(var.api_key_ids) > 0 && alltrue([for id in var.api_key_ids : can(regex("^[a-z0-9][a-z0-9_-]{0,31}$", id))])
    error_message = "api_key_ids must be 1-32 lower-case letters, digits, '_' or '-' each, and at least one."
  }
}

variable "webhook_secret_generations" {
  description = "Rotation of each API key's webhook signing secret: key id -> generation (1 when absent). Raise a key's number to mint a new secret; see webhook_secret_keep_previous for the overlap (secrets.tf says how to rotate)."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for generation in values(var.webhook_secret_generations) : generation >= 1 && floor(generation) == generation])
    error_message = "webhook_secret_generations: each generation must be a whole number, 1 or more."
  }
}

variable "webhook_secret_keep_previous" {
  description = "API key ids whose previous webhook secret generation still signs next to the current one (each delivery then carries both signatures), while their receivers switch to the new secret."
  type        = set(string)
  default     = []
}

variable "prompt_file_owner" {
  description = "The API key id that owns jobs from prompt files dropped into the prompts bucket (it lists and reads them)."
  type        = string
  default     = "default"
}

variable "models" {
  description = "Model profiles (schemas/model-profiles.json) the deployment accepts, each with its own worker pool (subscription, instance group, autoscaler); the first is the default for requests that name no model."
  type        = list(string)
  default     = ["ltx-video-2b-distilled"]

  validation {
    condition     = length(var.models) > 0 && alltrue([for m in var.models : contains(["ltx-video-2b-distilled", "ltx-video-2b", "tiny-random"], m)])
    error_message = "models must name profiles from schemas/model-profiles.json: ltx-video-2b-distilled, ltx-video-2b or tiny-random."
  }

  # Each model names its pool's resources (main.tf local.worker_pools).
  validation {
    condition     = length(distinct(var.models)) == length(var.models) && alltrue([for m in var.models : length(trimprefix(m, "ltx-video-")) <= 12])
    error_message = "models must not repeat, and each must be at most 12 characters once a leading \"ltx-video-\" is dropped (its worker pool's instance names are built from it)."
  }
}

variable "destination_buckets" {
  description = "Buckets besides the outputs bucket that a request's gcs_destination may write videos into, each with the API key ids allowed to (bucket => [key ids]). Every key may always write under gs://OUTPUTS/destinations/KEY_ID/. The workers get object write and the API object read on these buckets; videos there are never overwritten."
  type        = map(list(string))
  default     = {}

  validation {
    condition     = alltrue([for bucket, keys in var.destination_buckets : can(regex("^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$", bucket)) && length(keys) > 0])
    error_message = "destination_buckets must map bucket names to a non-empty list of API key ids."
  }
}

variable "max_jobs_in_flight_per_key" {
  description = "Jobs one API key (or the prompt-file owner) may have queued or running at once; more are refused with 429 (prompt-file lines: rejected in the receipt). 0: no limit."
  type        = number
  default     = 1000

  validation {
    condition     = var.max_jobs_in_flight_per_key >= 0 && floor(var.max_jobs_in_flight_per_key) == var.max_jobs_in_flight_per_key
    error_message = "max_jobs_in_flight_per_key must be a whole number, 0 or more."
  }
}

variable "api_max_instances" {
  description = "Most instances of the HTTP API function."
  type        = number
  default     = 20

  validation {
    condition     = var.api_max_instances >= 1 && var.api_max_instances <= 1000
    error_message = "api_max_instances must be between 1 and 1000."
  }
}

variable "predict_wait_seconds" {
  description = "How long POST /predict waits for its video before answering 504 (the job goes on). The API function's timeout is this plus a minute."
  type        = number
  default     = 900

  validation {
    condition     = var.predict_wait_seconds >= 10 && var.predict_wait_seconds <= 3000
    error_message = "predict_wait_seconds must be between 10 and 3000 (an HTTP function runs at most 60 minutes)."
  }
}

variable "log_level" {
  description = "Log level of the functions and workers."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

# --- jobs and retention ---------------------------------------------------------------------

variable "job_ttl_days" {
  description = "Days a job document is kept (Firestore TTL on expires_at)."
  type        = number
  default     = 30

  validation {
    condition     = var.job_ttl_days >= 1 && var.job_ttl_days <= 3650
    error_message = "job_ttl_days must be between 1 and 3650."
  }
}

variable "output_retention_days" {
  description = "Days videos, posters and result.json files are kept in the outputs bucket."
  type        = number
  default     = 30

  validation {
    condition     = var.output_retention_days >= 1 && var.output_retention_days <= 3650
    error_message = "output_retention_days must be between 1 and 3650."
  }
}

variable "prompt_retention_days" {
  description = "Days prompt files (incoming/) and their receipts (receipts/) are kept in the prompts bucket."
  type        = number
  default     = 30

  validation {
    condition     = var.prompt_retention_days >= 1 && var.prompt_retention_days <= 3650
    error_message = "prompt_retention_days must be between 1 and 3650."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of a job's message before it goes to the dead-letter topic and the job fails. Unset (null): schemas/resources.json's worker_subscription.max_delivery_attempts, which the local stack uses too."
  type        = number
  default     = null

  validation {
    condition     = var.max_delivery_attempts == null ? true : (var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100)
    error_message = "max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "worker_ack_deadline_seconds" {
  description = "The ack deadline of each model's worker subscription. Workers extend it while they render; a killed worker's job is redelivered after it. Unset (null): schemas/resources.json's worker_subscription.ack_deadline_seconds, which the local stack uses too."
  type        = number
  default     = null

  validation {
    condition     = var.worker_ack_deadline_seconds == null ? true : (var.worker_ack_deadline_seconds >= 10 && var.worker_ack_deadline_seconds <= 600)
    error_message = "worker_ack_deadline_seconds must be between 10 and 600."
  }
}

# --- GPU workers ----------------------------------------------------------------------------

variable "worker_machine_type" {
  description = "Machine type of the worker VMs: a g2 shape (one NVIDIA L4 each for g2-standard-4/8/12/16/32)."
  type        = string
  default     = "g2-standard-8"

  validation {
    condition     = can(regex("^g2-standard-(4|8|12|16|32)$", var.worker_machine_type))
    error_message = "worker_machine_type must be a one-GPU g2 shape: g2-standard-4, -8, -12, -16 or -32."
  }
}

variable "worker_spot" {
  description = "Run workers as Spot VMs (much cheaper, may be preempted; a preempted job is requeued and rendered again)."
  type        = bool
  default     = true
}

variable "worker_min_replicas" {
  description = "Fewest worker VMs per model pool; 0 lets each pool scale to zero when its queue is empty."
  type        = number
  default     = 0

  validation {
    condition     = var.worker_min_replicas >= 0
    error_message = "worker_min_replicas must be 0 or more."
  }
}

variable "worker_max_replicas" {
  description = "Most worker VMs per model pool (with several models, mind that the project's L4 GPU quota in the region covers all pools together)."
  type        = number
  default     = 4

  validation {
    condition     = var.worker_max_replicas >= 1 && var.worker_max_replicas <= 1000
    error_message = "worker_max_replicas must be between 1 and 1000."
  }
}

variable "jobs_per_worker" {
  description = "Jobs per worker VM the autoscaler aims for (single_instance_assignment on the subscription's unacknowledged messages, which count jobs waiting and jobs being rendered). 1 (the default): one VM per job, so the group never shrinks below the jobs in progress and scales in only when a VM is idle (the group still picks which VM goes, and may pick a busy one: its job is requeued, costing a delivery attempt). N > 1 starts fewer VMs and drains a backlog N times slower, and once the queue empties the autoscaler wants only 1/N as many VMs as renders in progress: it stops VMs mid-render, and each such kill counts a delivery attempt toward max_delivery_attempts."
  type        = number
  default     = 1

  validation {
    condition     = var.jobs_per_worker >= 1 && var.jobs_per_worker <= 8 && floor(var.jobs_per_worker) == var.jobs_per_worker
    error_message = "jobs_per_worker must be a whole number from 1 to 8 (a worker renders one job at a time; values above 1 let scale-in stop VMs that are rendering)."
  }
}

variable "lane_aging_seconds" {
  description = "Priority lanes: a worker pulls a lane it has not served for this long first, once (LTXV_LANE_AGING_SECONDS), so behind a steady stream of high-priority jobs each worker still takes a normal or low job at least every lane_aging_seconds plus one render."
  type        = number
  default     = 300

  validation {
    condition     = var.lane_aging_seconds >= 1 && var.lane_aging_seconds <= 86400
    error_message = "lane_aging_seconds must be from 1 to 86400."
  }
}

variable "worker_image" {
  description = "Boot image of the worker VMs: a Deep Learning VM image (family) with the NVIDIA driver and Python 3.11 or newer (the boot script checks nvidia-smi and builds its env with the image's python3). The default, common-cu128-ubuntu-2404-nvidia-570, is Ubuntu 24.04 (Python 3.12), CUDA 12.8, driver 570: https://cloud.google.com/deep-learning-vm/docs/images"
  type        = string
  default     = "projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2404-nvidia-570"

  validation {
    condition     = !can(regex("ubuntu-2204", var.worker_image))
    error_message = "worker_image: Ubuntu 22.04 images (…-ubuntu-2204-…) ship Python 3.10, and the worker's boot script needs Python 3.11 or newer: use an ubuntu-2404 family such as common-cu128-ubuntu-2404-nvidia-570."
  }
}

variable "worker_disk_type" {
  description = "Boot disk type of the worker VMs. The disk holds the env and the weights, and a warm boot reads ~15 GiB of weights from it (docs/boot-budget.md): pd-ssd reads 0.48 MiB/s per GiB, pd-balanced 0.28, both on top of a 140 MiB/s baseline (https://cloud.google.com/compute/docs/disks/performance)."
  type        = string
  default     = "pd-ssd"

  # Hyperdisk ML and Throughput cannot be boot disks, Local SSD does not survive a stop
  # (the standby pool), and Hyperdisk Balanced on G2 is not confirmed here (docs/boot-budget.md).
  validation {
    condition     = contains(["pd-ssd", "pd-balanced"], var.worker_disk_type)
    error_message = "worker_disk_type must be pd-ssd or pd-balanced (a G2 boot disk that keeps the env and weights across a stop)."
  }
}

variable "worker_disk_gb" {
  description = "Boot disk size of the worker VMs, in GB (the image, the Python env ~6 GiB, the weights ~15 GiB, scratch). Persistent Disk throughput grows with size: 400 GB of pd-ssd reads about 140 + 0.48 x 400 = 332 MiB/s, which keeps a warm boot's weight read under a minute (docs/boot-budget.md)."
  type        = number
  default     = 400

  validation {
    condition     = var.worker_disk_gb >= 100 && var.worker_disk_gb <= 2000
    error_message = "worker_disk_gb must be between 100 and 2000."
  }
}

variable "worker_standby_stopped" {
  description = "Stopped VMs each model pool keeps in its standby pool (MIG standby_policy SCALE_OUT_POOL): booted once, env and weights on their disks, then stopped. A scale-out starts one (about 100 s to the first denoising step, docs/boot-budget.md) instead of booting a new VM (about 2.5 minutes with the caches in place, 7 or more on a deployment's first boot). A stopped VM is billed for its disk only (with the defaults 400 GB pd-ssd, about 68 USD a month at us-central1 list prices), plus a boot's GPU time each time the pool is refilled. 0 turns the pool off."
  type        = number
  default     = 1

  validation {
    condition     = var.worker_standby_stopped >= 0 && var.worker_standby_stopped <= 10 && floor(var.worker_standby_stopped) == var.worker_standby_stopped
    error_message = "worker_standby_stopped must be a whole number from 0 to 10."
  }
}

variable "worker_secure_boot" {
  description = "Secure Boot on the worker VMs. Only with an image whose NVIDIA driver is signed for it; vTPM and integrity monitoring are always on."
  type        = bool
  default     = false
}

# --- monitoring -----------------------------------------------------------------------------

variable "alert_notification_channels" {
  description = "Existing Monitoring notification channel ids (projects/P/notificationChannels/N) that alerts go to, besides alert_emails."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.alert_notification_channels : can(regex("^projects/[^/]+/notificationChannels/[0-9]+$", c))])
    error_message = "alert_notification_channels must be ids such as projects/my-project/notificationChannels/1234567890."
  }
}

variable "alert_emails" {
  description = "Email addresses that get the alerts (terraform creates one email notification channel each). Without these or alert_notification_channels, alerts only show in the console."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for e in var.alert_emails : can(regex("^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$", e))])
    error_message = "alert_emails must be email addresses."
  }
}

variable "oldest_job_alert_seconds" {
  description = "Alert when the oldest unacknowledged job message in any model's worker subscription is older than this."
  type        = number
  default     = 3600

  validation {
    condition     = var.oldest_job_alert_seconds >= 300
    error_message = "oldest_job_alert_seconds must be at least 300."
  }
}

# --- access and quota -----------------------------------------------------------------------

variable "operators" {
  description = "Who may SSH into the worker VMs through IAP (`gcloud compute ssh VM --tunnel-through-iap`): IAM members such as user:alice@example.com or group:ml-oncall@example.com. Each gets IAP tunnel access, OS Login, and use of the workers' service account."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.operators : can(regex("^(user|group|serviceAccount|domain):[^[:space:]]+$", m))])
    error_message = "operators must be IAM members: user:EMAIL, group:EMAIL, serviceAccount:EMAIL or domain:DOMAIN."
  }
}

variable "gpu_quota_request" {
  description = "File GPU quota requests from terraform (Cloud Quotas quota preferences): the region's L4 quota (preemptible when worker_spot) and the project's all-regions GPU quota, each to `gpus`: at least (worker_max_replicas + worker_standby_stopped) × the number of models. contact_email must be an account allowed to change the project's quota. Google reviews them; approval can take from minutes to days and is not part of the apply. null: request nothing (see the README's prerequisites for the gcloud commands)."
  type = object({
    gpus          = number
    contact_email = string
    justification = optional(string, "ltx-video-pipeline: text-to-video rendering on NVIDIA L4 GPU workers that scale to zero.")
  })
  default = null

  validation {
    condition     = var.gpu_quota_request == null || try(var.gpu_quota_request.gpus >= 1 && floor(var.gpu_quota_request.gpus) == var.gpu_quota_request.gpus, false)
    error_message = "gpu_quota_request.gpus must be a whole number of GPUs, at least 1."
  }
}
