"""How the client retries: connection errors, 429 and 5xx, honouring Retry-After.

POSTs are retried too: submits and retries carry an Idempotency-Key, and a repeated
cancel or redelivery request is answered from the state the first one left.
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

RETRY = Retry(
    total=4,
    connect=4,
    read=2,
    status=4,
    backoff_factor=0.5,
    status_forcelist=(429, 502, 503, 504),
    allowed_methods=None,  # POSTs too (see above)
    respect_retry_after_header=True,
    raise_on_status=False,
)


def without_429(session: requests.Session) -> requests.Session:
    """A copy of `session` that answers a 429 at once rather than waiting it out (a
    webhook redelivery's Retry-After may be a minute)."""
    copy = requests.Session()
    copy.headers.update(session.headers)
    copy.mount("http", HTTPAdapter(max_retries=RETRY.new(status_forcelist=(502, 503, 504))))
    return copy
