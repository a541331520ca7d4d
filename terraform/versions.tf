terraform {
  required_version = ">= 1.6, < 2.0"

  required_providers {
    # Exactly the version whose schema tests/terraform checks every resource against
    # (tools/tf_schema); move both together.
    google = {
      source  = "hashicorp/google"
      version = "8.7.0"
    }
    # time_sleep: service enablement and IAM grants propagate after they report done.
    time = {
      source  = "hashicorp/time"
      version = "~> 0.13"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    external = {
      source  = "hashicorp/external"
      version = "~> 2.3"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
