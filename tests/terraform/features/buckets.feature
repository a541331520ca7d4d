Feature: Buckets are private
  Every bucket keeps its objects to the service: uniform bucket-level access, public access
  prevention enforced, and a label saying whose it is.

  Scenario: Uniform bucket-level access
    Given I have google_storage_bucket defined
    Then it must contain uniform_bucket_level_access
    And its value must be true

  Scenario: Public access prevention
    Given I have google_storage_bucket defined
    Then it must contain public_access_prevention
    And its value must be enforced

