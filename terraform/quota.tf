# GPU quota. A new project usually has no L4 quota in the region and a GPUS_ALL_REGIONS
# quota of 0, so without an increase the instance groups cannot create a single VM (their
# errors name the quota). With var.gpu_quota_request set, terraform files the increase
# requests as Cloud Quotas quota preferences; Google reviews them outside the apply.
# Quota ids as Cloud Quotas lists them for Compute Engine (`gcloud beta quotas info list
# --service=compute.googleapis.com --project=PROJECT --filter="quotaId~L4"`).

locals {
  gpu_quotas = var.gpu_quota_request == null ? {} : {
    region = {
      quota_id   = var.worker_spot ? "PREEMPTIBLE-NVIDIA-L4-GPUS-per-project-region" : "NVIDIA-L4-GPUS-per-project-region"
      dimensions = { region = var.region }
    }
    all-regions = {
      quota_id   = "GPUS-ALL-REGIONS-per-project"
      dimensions = {}
    }
  }
}

resource "google_cloud_quotas_quota_preference" "gpus" {
  for_each      = local.gpu_quotas
  parent        = "projects/${var.project_id}"
  name          = "compute_googleapis_com-${each.value.quota_id}${each.key == "region" ? "_${var.region}" : ""}"
  service       = "compute.googleapis.com"
  quota_id      = each.value.quota_id
  dimensions    = each.value.dimensions
  contact_email = var.gpu_quota_request.contact_email
  justification = var.gpu_quota_request.justification

  quota_config {
    preferred_value = var.gpu_quota_request.gpus
  }

  # A destroy leaves the granted quota alone: quota preferences cannot be deleted, the
  # provider only forgets them (resourceCloudQuotasQuotaPreferenceDelete, 8.x).
  depends_on = [time_sleep.apis_ready]
}
