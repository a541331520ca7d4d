terraform {
  required_version = ">= 1.6, < 2.0"

  required_providers {
    # Each provider is pinned to exactly the version whose schema tests/terraform checks
    # every block and reference against (tools/tf_schema/schemas, read from the prebuilt
    # cdktn-provider-* bindings named in tools/tf_schema/__init__.py); move both together.
    google = {
      source  = "hashicorp/google"
      version = "8.7.0"
    }
    # time_sleep: service enablement and IAM grants propagate after they report done.
    time = {
      source  = "hashicorp/time"
      version = "0.14.2"
    }
    random = {
      source  = "hashicorp/random"
      version = "3.9.1"
    }
    external = {
      source  = "hashicorp/external"
      version = "2.4.2"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
