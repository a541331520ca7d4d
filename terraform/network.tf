# The workers' network: no external IPs, outbound through Cloud NAT (pip, the model hub),
# Google APIs over Private Google Access, and SSH only through IAP.

resource "google_compute_network" "workers" {
  name                    = "${var.prefix}-workers"
  auto_create_subnetworks = false
  depends_on              = [time_sleep.apis_ready]
}

resource "google_compute_subnetwork" "workers" {
  name                     = "${var.prefix}-workers"
  region                   = var.region
  network                  = google_compute_network.workers.id
  ip_cidr_range            = "10.64.0.0/20"
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.1
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_router" "workers" {
  name    = "${var.prefix}-workers"
  region  = var.region
  network = google_compute_network.workers.id
}

resource "google_compute_router_nat" "workers" {
  name                               = "${var.prefix}-workers"
  router                             = google_compute_router.workers.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "LIST_OF_SUBNETWORKS"

  subnetwork {
    name                    = google_compute_subnetwork.workers.id
    source_ip_ranges_to_nat = ["ALL_IP_RANGES"]
  }

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# SSH from Identity-Aware Proxy's range only (gcloud compute ssh --tunnel-through-iap).
resource "google_compute_firewall" "iap_ssh" {
  name          = "${var.prefix}-allow-iap-ssh"
  network       = google_compute_network.workers.id
  direction     = "INGRESS"
  source_ranges = ["35.235.240.0/20"]
  target_tags   = ["${var.prefix}-worker"]

  allow {
    protocol = "tcp"
    ports    = ["22"]
  }
}

# The instance group's auto-healing probe: Google's health checkers' ranges, to the
# worker's /healthz port only (workers.tf google_compute_health_check.worker).
# https://cloud.google.com/load-balancing/docs/health-check-concepts#ip-ranges
resource "google_compute_firewall" "health_checks" {
  name          = "${var.prefix}-allow-health-checks"
  network       = google_compute_network.workers.id
  direction     = "INGRESS"
  source_ranges = ["35.191.0.0/16", "130.211.0.0/22"]
  target_tags   = ["${var.prefix}-worker"]

  allow {
    protocol = "tcp"
    ports    = ["8080"]
  }
}
