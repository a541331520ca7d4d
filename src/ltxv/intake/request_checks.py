"""Checking a request before it is accepted, mixed into `submission.Intake`: validation
(which puts the request in its stored form without I/O), what can be answered before its
media are read, and the reading itself (`input_inspection`).

Reading media is the costly part of a submit (a download and a decode, one turn of a
few per process), so a request whose answer does not depend on them gets it first: an
Idempotency-Key replay or conflict, and a key at its limit of jobs in flight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ltxv.core.jobs import Job
from ltxv.intake.conditions import conditioned
from ltxv.intake.input_inspection import InputInspector, Resolved
from ltxv.intake.job_origin import Accepted
from ltxv.intake.refusals import TooManyJobs, Unavailable, unavailable_on_error
from ltxv.intake.validation import IntakePolicy, request_hash, validate_request

if TYPE_CHECKING:
    from ltxv.core.store import JobStore
    from ltxv.intake.in_flight import InFlightGauge


class RequestChecks:
    """Mixed into `Intake`, which provides these."""

    if TYPE_CHECKING:
        store: JobStore
        policy: IntakePolicy
        inputs: InputInspector | None
        max_in_flight: int
        in_flight: InFlightGauge

        def _replay(self, job: Job, digest: str) -> Accepted: ...

        def _count_in_flight(self, api_key_id: str, beside_create: bool = True) -> int: ...

    def validate(
        self,
        body: Any,
        *,
        api_key_id: str,
        policy: IntakePolicy | None = None,
        inline: dict[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """The resolved request in its stored form (data: URLs name their stored copies,
        whose bytes go into `inline`), or RequestInvalid; LookupTimedOut when the webhook
        host's name server did not answer in time (no verdict either way)."""
        policy = policy or self.policy
        return validate_request(body, policy, api_key_id=api_key_id, inline=inline)

    def check(
        self, body: Any, *, api_key_id: str, policy: IntakePolicy | None = None
    ) -> tuple[dict[str, Any], Resolved]:
        """`validate`, then `inspect`."""
        inline: dict[str, bytes] = {}
        request = self.validate(body, api_key_id=api_key_id, policy=policy, inline=inline)
        return request, self.inspect(request, api_key_id=api_key_id, policy=policy, inline=inline)

    def inspect(
        self,
        request: dict[str, Any],
        *,
        api_key_id: str,
        policy: IntakePolicy | None = None,
        inline: dict[str, bytes] | None = None,
    ) -> Resolved:
        """A validated request's conditioning media read, checked and pinned."""
        if not conditioned(request):
            return Resolved()
        if self.inputs is None:
            raise Unavailable("conditioning inputs cannot be checked by this process")
        profile = (policy or self.policy).profiles[request["model"]]
        return self.inputs.resolve(request, profile, api_key_id, inline)

    def existing(self, job_id: str) -> Job | None:
        with unavailable_on_error("job store"):
            return self.store.get(job_id)

    def _before_inputs(
        self, request: dict[str, Any], job_id: str, api_key_id: str, idempotency_key: str | None
    ) -> Accepted | None:
        """What a request whose media must be read is answered without reading any: the
        job its Idempotency-Key made already (replayed, or IdempotencyConflict: the stored
        form hashes the same without I/O), or TooManyJobs, before it takes a turn at
        inspection. None: read them."""
        if not conditioned(request):
            return None
        existing = self.existing(job_id) if idempotency_key else None
        if existing is not None:
            return self._replay(existing, request_hash(request))
        if not self.max_in_flight or self.in_flight.has_room(api_key_id):
            return None
        if self._count_in_flight(api_key_id, beside_create=False) >= self.max_in_flight:
            raise TooManyJobs(self.max_in_flight)
        return None
