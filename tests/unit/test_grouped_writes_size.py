"""How many jobs one BatchWrite may carry (ltxv.intake.grouped_writes.writes_per_batch)."""

from __future__ import annotations

from ltxv.intake.grouped_writes import BATCH_BYTES, MAX_BATCH, writes_per_batch

BATCH_WRITE_LIMIT = 10 * 1024 * 1024  # Firestore's limit on one request


def test_the_default_body_limit_gets_full_batches():
    assert writes_per_batch(64 * 1024) == MAX_BATCH


def test_large_bodies_get_batches_that_stay_inside_the_request_limit():
    for body in (256 * 1024, 1024 * 1024, 4 * 1024 * 1024):
        batch = writes_per_batch(body)
        assert 1 <= batch < MAX_BATCH
        assert batch * body <= BATCH_BYTES < BATCH_WRITE_LIMIT


def test_a_body_larger_than_a_batch_still_gets_one_write():
    assert writes_per_batch(BATCH_BYTES * 2) == 1
