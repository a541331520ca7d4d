Feature: Least privilege
  No primitive roles, and no service account but the deployment's own.

  Scenario Outline: No primitive roles, no project-wide builder, no token minting
    Given I have <resource> defined
    When it contains role
    Then its value must not match the "roles/(owner|editor|viewer|cloudbuild\.builds\.builder|iam\.serviceAccountTokenCreator)" regex

    Examples:
      | resource                                |
      | google_project_iam_member               |
      | google_storage_bucket_iam_member        |
      | google_pubsub_topic_iam_member          |
      | google_pubsub_subscription_iam_member   |
      | google_secret_manager_secret_iam_member |
      | google_service_account_iam_member       |
      | google_cloud_run_v2_service_iam_member  |
      | google_artifact_registry_repository_iam_member |

  Scenario: Workers run as their own service account
    Given I have google_compute_instance_template defined
    Then it must contain service_account
