"""Firestore `jobs/{job_id}`: create, read, list and change jobs.

Every call carries a bounded retry and timeout, so a Firestore outage turns into a fast,
retryable error for the caller instead of a request that hangs for minutes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import firestore

from .jobs import State, check_transition, utcnow


class JobExists(Exception):
    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job["job_id"])
        self.job = job


class JobNotFound(LookupError):
    pass


class BadPageToken(ValueError):
    pass


class TransactionContended(gexc.Aborted):
    """Firestore gave up committing a transaction after its retries (other writers kept
    winning). A backend error like any other: the caller retries later, the client gets a
    503. The library itself raises a plain ValueError for this, which would read as a bug."""


def _contended(exc: ValueError) -> bool:
    # `firestore.transactional` wraps the last Aborted commit in a ValueError once its
    # attempts are spent; a ValueError raised by `decide` has no such cause.
    return isinstance(exc.__cause__, gexc.Aborted)


@dataclass(frozen=True)
class Page:
    jobs: list[dict[str, Any]]
    next_page_token: str | None


def _encode_cursor(job: dict[str, Any]) -> str:
    raw = json.dumps({"t": job["created_at"].isoformat(), "id": job["job_id"]})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(token: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        return {"created_at": datetime.fromisoformat(data["t"]), "job_id": str(data["id"])}
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BadPageToken("page_token is not one this API returned") from exc


class JobStore:
    def __init__(
        self, client: firestore.Client, collection: str = "jobs", timeout: float = 10.0
    ) -> None:
        self.client = client
        self.collection = client.collection(collection)
        self.timeout = timeout
        self.retry = Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout)

    def ref(self, job_id: str) -> firestore.DocumentReference:
        return self.collection.document(job_id)

    def create(self, job: dict[str, Any]) -> None:
        """Create the document; raise JobExists (with the stored job) if the id is taken."""
        try:
            self.ref(job["job_id"]).create(job, retry=self.retry, timeout=self.timeout)
        except gexc.AlreadyExists:
            existing = self.get(job["job_id"])
            if existing is None:  # deleted in between: one more try settles it
                self.ref(job["job_id"]).create(job, retry=self.retry, timeout=self.timeout)
                return
            raise JobExists(existing) from None
        except gexc.Conflict:
            raise JobExists(self.get(job["job_id"]) or job) from None

    def get(self, job_id: str) -> dict[str, Any] | None:
        snapshot = self.ref(job_id).get(retry=self.retry, timeout=self.timeout)
        return snapshot.to_dict() if snapshot.exists else None

    def delete_unpublished(self, job_id: str) -> None:
        """Undo a create whose publish failed, unless something already moved the job on."""

        @firestore.transactional
        def undo(transaction: firestore.Transaction) -> None:
            snapshot = self.ref(job_id).get(transaction=transaction)
            if snapshot.exists and not snapshot.get("published"):
                transaction.delete(self.ref(job_id))

        self._run(undo)

    def mark_published(self, job_ids: list[str]) -> None:
        now = utcnow()
        batch = self.client.batch()
        for job_id in job_ids:
            batch.update(self.ref(job_id), {"published": True, "published_at": now})
        batch.commit(retry=self.retry, timeout=self.timeout)

    def unpublished_before(self, cutoff: datetime, limit: int = 500) -> list[dict[str, Any]]:
        query = (
            self.collection.where(filter=firestore.FieldFilter("published", "==", False))
            .where(filter=firestore.FieldFilter("created_at", "<", cutoff))
            .limit(limit)
        )
        return [s.to_dict() for s in query.stream(retry=self.retry, timeout=self.timeout)]

    def list(
        self,
        api_key_id: str,
        *,
        state: str | None = None,
        page_size: int = 50,
        page_token: str | None = None,
    ) -> Page:
        """One key's jobs, newest first; needs the composite indexes terraform creates."""
        query = self.collection.where(filter=firestore.FieldFilter("api_key_id", "==", api_key_id))
        if state:
            query = query.where(filter=firestore.FieldFilter("state", "==", state))
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING).order_by(
            "job_id", direction=firestore.Query.DESCENDING
        )
        if page_token:
            query = query.start_after(_decode_cursor(page_token))
        docs = [
            s.to_dict()
            for s in query.limit(page_size + 1).stream(retry=self.retry, timeout=self.timeout)
        ]
        more = len(docs) > page_size
        docs = docs[:page_size]
        return Page(docs, _encode_cursor(docs[-1]) if more and docs else None)

    def transact(
        self,
        job_id: str,
        decide: Callable[[dict[str, Any], datetime], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """Read the job, let `decide(job, now)` name the changes, apply them, all in one
        transaction (retried by Firestore on conflict); returns the job as it now is, or
        None if there is no such job. `decide` may raise to abort without a write."""
        ref = self.ref(job_id)

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> dict[str, Any] | None:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return None
            job = snapshot.to_dict()
            now = utcnow()
            changes = decide(job, now)
            if not changes:
                return job
            changes.setdefault("updated_at", now)
            transaction.update(ref, changes)
            return _apply_changes(job, changes)

        return self._run(run)

    def _run(self, transactional: Callable[[firestore.Transaction], Any]) -> Any:
        try:
            return transactional(self.client.transaction())
        except ValueError as exc:
            if _contended(exc):
                raise TransactionContended(str(exc)) from exc
            raise

    def request_cancel(self, job_id: str, api_key_id: str) -> dict[str, Any]:
        """queued -> canceled at once; running -> cancel requested (the worker stops it).

        Terminal jobs are returned unchanged; the caller decides what that means.
        """

        def decide(job: dict[str, Any], now: datetime) -> dict[str, Any] | None:
            if job["api_key_id"] != api_key_id:
                raise JobNotFound(job_id)
            if job["state"] == State.QUEUED:
                check_transition(job["state"], State.CANCELED)
                return {
                    "state": State.CANCELED.value,
                    f"state_times.{State.CANCELED.value}": now,
                    "cancel_requested": True,
                    "cancel_requested_at": now,
                }
            if job["state"] == State.RUNNING and not job["cancel_requested"]:
                return {"cancel_requested": True, "cancel_requested_at": now}
            return None

        job = self.transact(job_id, decide)
        if job is None:
            raise JobNotFound(job_id)
        return job


def _apply_changes(job: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """What `update(changes)` did to the document, without reading it back."""
    job = {**job}
    for path, value in changes.items():
        target = job
        *parents, leaf = path.split(".")
        for part in parents:
            target[part] = dict(target.get(part) or {})
            target = target[part]
        target[leaf] = value
    return job
