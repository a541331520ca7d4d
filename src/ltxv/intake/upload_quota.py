"""How many upload URLs one API key may mint per hour (`LTXV_UPLOADS_PER_HOUR`).

A signed URL costs nothing to mint, but each lets its holder store up to max_input_bytes
for the inputs bucket's retention; without a cap a key could mint without bound. One
Firestore document per key and clock hour (`upload_counts/{key}-{YYYYMMDDHH}`) is counted up
with a server-side increment whose result comes back in the same write: concurrent
requests each get their own number, so the cap is exact across every instance, with no
read and no contention loop. A refused request still counts (it cost a write too). The
documents expire a day later (Firestore TTL on `expires_at`, terraform/firestore.tf).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from google.api_core.retry import Retry
from google.cloud import firestore

COLLECTION = "upload_counts"


class UploadQuota:
    def __init__(self, client: firestore.Client, per_hour: int, timeout: float = 10.0) -> None:
        self.client = client
        self.per_hour = per_hour
        self.timeout = timeout
        self.retry = Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout)

    def take(self, api_key_id: str, now: datetime) -> int:
        """Count one URL for the key; 0 when it is within the hour's allowance, else the
        seconds until the next hour starts."""
        if self.per_hour <= 0:
            return 0
        hour = now.replace(minute=0, second=0, microsecond=0)
        ref = self.client.collection(COLLECTION).document(f"{api_key_id}-{hour:%Y%m%d%H}")
        # An increment is not idempotent: a retried write might count twice, which can only
        # refuse early, never let one more through.
        result = ref.set(
            {
                "api_key_id": api_key_id,
                "hour": hour,
                "count": firestore.Increment(1),
                "expires_at": hour + timedelta(days=1),
            },
            merge=True,
            retry=self.retry,
            timeout=self.timeout,
        )
        count = int(result.transform_results[0].integer_value)
        if count <= self.per_hour:
            return 0
        return max(1, int((hour + timedelta(hours=1) - now).total_seconds()))
