"""Local-only credentials: a throwaway service-account key for signing URLs.

fake-gcs-server does not check signatures, but the storage client will only produce a
V4 signed URL with a private key in hand; this gives the local stack the same code path
as a deployment, which signs through IAM instead.
"""

from __future__ import annotations

import secrets
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def fake_service_account_key(project: str, name: str = "ltxv-local-signer") -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": f"{name}@{project}.iam.gserviceaccount.com",
        "client_id": str(secrets.randbits(64)),
        "token_uri": "https://oauth2.googleapis.com/token",
    }
