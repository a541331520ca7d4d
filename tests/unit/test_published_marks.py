"""The `published` marks written after the answer, batched (ltxv.intake.published_marks)."""

from __future__ import annotations

import threading

from google.api_core import exceptions as gexc

from ltxv.intake.published_marks import PublishedMarks


def test_marks_added_together_share_one_write():
    written: list[list[str]] = []
    marks = PublishedMarks(written.append, linger=0.05)
    threads = [threading.Thread(target=marks.add, args=(f"job{i}",)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert marks.flush()
    assert sorted(j for batch in written for j in batch) == sorted(f"job{i}" for i in range(10))
    assert len(written) <= 2  # one batch, or two if the first was taken mid-burst


def test_a_batch_with_a_vanished_job_marks_the_others_one_by_one():
    written: list[list[str]] = []

    def mark(job_ids: list[str]) -> None:
        if "gone" in job_ids:
            raise gexc.NotFound("no document to update")
        written.append(job_ids)

    marks = PublishedMarks(mark, linger=0.05)
    for job_id in ("a", "gone", "b"):
        marks.add(job_id)
    assert marks.flush()
    assert sorted(j for batch in written for j in batch) == ["a", "b"]


def test_an_outage_is_logged_not_raised(caplog):
    def mark(job_ids: list[str]) -> None:
        raise gexc.ServiceUnavailable("firestore down")

    marks = PublishedMarks(mark, linger=0.0)
    marks.add("a")
    assert marks.flush()
    assert "could not mark jobs published" in caplog.text
    # The writer goes on: a later mark is attempted too.
    marks.add("b")
    assert marks.flush()
