Feature: Workers cost nothing idle and expose nothing
  Scenario: The group may scale to zero
    Given I have google_compute_region_autoscaler defined
    Then it must contain autoscaling_policy
    And it must contain min_replicas
    And its value must be 0

  Scenario: No external IP
    Given I have google_compute_instance_template defined
    Then it must contain network_interface
    And it must not contain access_config

  Scenario: Shielded VM
    Given I have google_compute_instance_template defined
    Then it must contain shielded_instance_config
    And it must contain enable_vtpm
    And its value must be true

  Scenario Outline: Labels
    Given I have <resource> defined
    Then it must contain labels
    And it must contain app

    Examples:
      | resource                         |
      | google_storage_bucket            |
      | google_pubsub_topic              |
      | google_pubsub_subscription       |
      | google_cloudfunctions2_function  |
      | google_compute_instance_template |
      | google_secret_manager_secret     |

  # Issue 13: what the worker groups need to scale, heal and boot (terraform/workers.tf).
  Scenario: Autoscaled regional groups keep proactive redistribution (EVEN shape)
    Given I have google_compute_region_instance_group_manager defined
    Then it must contain update_policy
    And it must contain instance_redistribution_type
    And its value must be PROACTIVE

  Scenario: Standby VMs are stopped, never suspended (GPUs cannot be suspended)
    Given I have google_compute_region_instance_group_manager defined
    Then it must contain target_suspended_size
    And its value must be 0

  Scenario: One job per worker VM, so scale-in never stops a render
    Given I have google_compute_region_autoscaler defined
    Then it must contain autoscaling_policy
    And it must contain metric
    And it must contain single_instance_assignment
    And its value must be 1

  Scenario: Auto-healing asks the worker, not sshd
    Given I have google_compute_health_check defined
    Then it must contain http_health_check
    And it must contain port
    And its value must be 8080

  Scenario: Worker images have Python 3.11 or newer (no Ubuntu 22.04)
    Given I have google_compute_instance_template defined
    Then it must contain disk
    And it must contain source_image
    And its value must not match the "ubuntu-2204" regex

