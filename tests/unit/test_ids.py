"""Ids: GUIDs of version 7, ordered by their creation time (domain/ids.py)."""

from __future__ import annotations

import time
import uuid

from pyarmonik.domain.ids import new_id, retry_id
from pyarmonik.storage.objects import new_opaque_id


def test_ids_are_version_7_uuids_in_their_canonical_text() -> None:
    made = [new_id() for _ in range(1000)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_ids_carry_their_time_and_sort_by_it() -> None:
    before = time.time_ns() // 1_000_000
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    after = time.time_ns() // 1_000_000
    assert first < second
    assert before <= uuid.UUID(first).int >> 80 <= uuid.UUID(second).int >> 80 <= after


def test_blob_names_sort_by_time_after_their_owner() -> None:
    first = new_opaque_id("owner")
    time.sleep(0.002)
    second = new_opaque_id("owner")
    assert first.startswith("owner.") and first < second


def test_retry_ids_are_armoniks() -> None:
    assert retry_id("abc", 2) == "abc###2"
