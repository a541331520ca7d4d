"""The publish claim's decision as `JobStore.decide` runs it: read, decide, write only if
nobody wrote since, else decide again. A store stand-in plays the race the emulator cannot
be made to lose on cue: the first write loses to another request's claim."""

from __future__ import annotations

from datetime import timedelta

from ltxv.intake import Intake
from ltxv.jobs import utcnow


class RacedStore:
    """`decide` semantics; another claimer's write lands between the first read and write."""

    def __init__(self) -> None:
        self.doc = {
            "job_id": "j",
            "state": "queued",
            "published": False,
            "publish_claim_until": utcnow() - timedelta(seconds=1),  # the creator's ran out
        }
        self.raced = False

    def decide(self, job_id, decide):
        while True:
            job = dict(self.doc)
            decision = decide(job, utcnow())
            if not decision.changes:
                return job, decision.outcome
            if not self.raced:  # the precondition fails: someone claimed meanwhile
                self.raced = True
                self.doc["publish_claim_until"] = utcnow() + timedelta(seconds=30)
                continue
            self.doc.update(decision.changes)
            return {**job, **decision.changes}, decision.outcome


class Dispatcher:
    timeout = 10.0


def test_a_claim_that_lost_its_write_to_another_claimer_is_not_a_claim():
    store = RacedStore()
    claimed, job = Intake(store, Dispatcher(), policy=None)._claim_publish("j")
    assert claimed is False  # the other request publishes; this one must not
    assert job["publish_claim_until"] > utcnow()


def test_a_claim_that_wins_its_write_is_a_claim():
    store = RacedStore()
    store.raced = True
    claimed, job = Intake(store, Dispatcher(), policy=None)._claim_publish("j")
    assert claimed is True and job["publish_claim_until"] > utcnow()
