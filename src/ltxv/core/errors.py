"""The errors every part of the service shares (as dramatiq's errors.py): what a backend
outage looks like from Google's client libraries."""

from __future__ import annotations

import concurrent.futures

import google.auth.exceptions
from google.api_core import exceptions as gexc

# What a Firestore, Pub/Sub or Cloud Storage outage looks like from the client libraries,
# and a failure to get or use the runtime's credentials (token refresh, IAM signBlob).
BACKEND_ERRORS = (
    gexc.GoogleAPIError,
    google.auth.exceptions.GoogleAuthError,
    concurrent.futures.TimeoutError,
    TimeoutError,
    ConnectionError,
)
