"""Handoff state changes that race (the studio and the CLI share the SQLite file): the status
read before a write must still hold when the write lands."""

from __future__ import annotations

import pytest

from aigc.apps.assistant.handoff import HandoffQueue
from aigc.errors import AigcError


def _stale_get(monkeypatch, queue: HandoffQueue, handoff_id: int) -> None:
    """The next ``queue.get`` returns the handoff as it is now (another writer then changes
    it): the interleaving of two requests, made deterministic."""
    snapshot, real = queue.get(handoff_id), queue.get
    calls = {"n": 0}

    def get(hid):
        calls["n"] += 1
        return snapshot if calls["n"] == 1 else real(hid)

    monkeypatch.setattr(queue, "get", get)


def _answered(tmp_path) -> tuple[HandoffQueue, int]:
    q = HandoffQueue(tmp_path / "assistant.sqlite3", index_dir=tmp_path)
    cid = q.new_conversation()
    h = q.open("Do you ship to Mars?", reason="low confidence", confidence=0.1,
               conversation_id=cid)
    q.answer(h.id, "No, only to Earth.", by="alice")
    return q, h.id


def test_answer_racing_an_approval_does_not_reopen_it(tmp_path, monkeypatch):
    q, hid = _answered(tmp_path)
    _stale_get(monkeypatch, q, hid)  # the answer request read 'answered' ...
    HandoffQueue(q.path, index_dir=tmp_path).approve(hid, reindex=False)  # ... then approved
    with pytest.raises(AigcError, match="approved"):
        q.answer(hid, "Yes, weekly.", by="mallory")
    monkeypatch.undo()
    h = q.get(hid)
    assert h.status == "approved" and h.answer == "No, only to Earth."
    assert (tmp_path / "approved" / f"handoff-{hid}.md").read_text().endswith(
        "No, only to Earth.\n")
    # nothing was added to the asker's conversation either
    assert [m["content"] for m in q.history(h.conversation_id)][-1] == "No, only to Earth."


def test_approval_racing_a_new_answer_does_not_publish_the_old_one(tmp_path, monkeypatch):
    q, hid = _answered(tmp_path)
    _stale_get(monkeypatch, q, hid)  # the approval read the first answer ...
    HandoffQueue(q.path, index_dir=tmp_path).answer(hid, "Yes, weekly.", by="bob")  # ... changed
    with pytest.raises(AigcError, match="changed while being approved"):
        q.approve(hid, reindex=False)
    monkeypatch.undo()
    assert q.get(hid).status == "answered"
    assert not (tmp_path / "approved" / f"handoff-{hid}.md").exists()


def test_two_approvals_one_wins(tmp_path, monkeypatch):
    q, hid = _answered(tmp_path)
    _stale_get(monkeypatch, q, hid)
    h, _ = HandoffQueue(q.path, index_dir=tmp_path).approve(hid, reindex=False)
    with pytest.raises(AigcError, match="changed while being approved"):
        q.approve(hid, reindex=False)
    monkeypatch.undo()
    assert q.get(hid).status == "approved" and q.get(hid).closed_at == h.closed_at


def test_reject_racing_an_approval_does_not_unpublish_it(tmp_path, monkeypatch):
    q, hid = _answered(tmp_path)
    _stale_get(monkeypatch, q, hid)
    HandoffQueue(q.path, index_dir=tmp_path).approve(hid, reindex=False)
    with pytest.raises(AigcError, match="already approved"):
        q.reject(hid)
    monkeypatch.undo()
    assert q.get(hid).status == "approved"


def test_a_failed_reindex_leaves_it_answered_to_retry(tmp_path, monkeypatch):
    """Approved means in the knowledge base: when re-indexing fails, the handoff stays
    answered (and its document is removed) instead of approved but never searchable."""
    import aigc.apps.assistant.index as index

    q, hid = _answered(tmp_path)

    def broken(*args, **kwargs):
        raise AigcError("folder /gone does not exist")

    monkeypatch.setattr(index, "build_index", broken)
    with pytest.raises(AigcError, match="not approved: re-indexing failed"):
        q.approve(hid)
    h = q.get(hid)
    assert h.status == "answered" and h.document is None and h.closed_at is None
    assert not (tmp_path / "approved" / f"handoff-{hid}.md").exists()
    monkeypatch.setattr(index, "build_index", lambda *a, **k: "report")
    h, report = q.approve(hid)
    assert h.status == "approved" and report == "report"
