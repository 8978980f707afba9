"""How `pyarmonik local` groups its agents in processes (local.py `agents_per_process`)."""

from __future__ import annotations

import pytest

from pyarmonik import local


def test_agents_get_a_process_each_up_to_four_per_core_then_are_grouped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)
    assert [local.agents_per_process(n, None) for n in (1, 2, 8, 9, 16, 64)] == [1, 1, 1, 2, 2, 8]


def test_a_configured_grouping_is_kept() -> None:
    assert local.agents_per_process(64, 1) == 1
    assert local.agents_per_process(2, 32) == 32  # `local` then starts one process of 2
