# The values the offline checks evaluate the configuration with (tests/terraform).
project_id                  = "ltxv-ci-project"
prefix                      = "ltxv-ci"
destination_buckets         = { "ltxv-ci-archive" = ["default"] }
input_buckets               = { "ltxv-ci-shared-media" = ["default"] }
alert_notification_channels = ["projects/ltxv-ci-project/notificationChannels/1"]
# Two models: two worker pools, the first the default (tests/terraform/test_config.py).
models = ["ltx-video-2b-distilled", "ltx-video-2b"]
