Feature: Jobs are never lost
  The worker subscription delivers exactly once, backs off, and hands what keeps failing
  to the dead-letter topic, where notify fails the job and tells the client.

  Scenario: The job queue (the exactly-once subscription) dead-letters
    Given I have google_pubsub_subscription defined
    When it has enable_exactly_once_delivery
    Then it must contain dead_letter_policy
    And it must contain max_delivery_attempts
    And its value must be greater and equal than 5

  Scenario: The job queue backs off
    Given I have google_pubsub_subscription defined
    When it has enable_exactly_once_delivery
    Then it must contain retry_policy
    And it must contain maximum_backoff
