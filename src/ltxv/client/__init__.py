"""The client part: what a user of a deployment runs (the HTTP client, prompt-file drops,
a webhook receiver). Needs no Firestore or Pub/Sub library; ships in no function archive.

    from ltxv.client import Client
"""

from ltxv.client.client import (
    ApiError,
    Client,
    ClientError,
    ConfigurationError,
    PromptDrops,
    ServiceUnavailable,
    WaitTimedOut,
    read_stack_env,
    use_local_emulators,
)

__all__ = [
    "ApiError",
    "Client",
    "ClientError",
    "ConfigurationError",
    "PromptDrops",
    "ServiceUnavailable",
    "WaitTimedOut",
    "read_stack_env",
    "use_local_emulators",
]
