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
