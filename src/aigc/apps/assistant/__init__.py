"""Customer-service assistant: answers from a folder of documents, with sources, voice, and a
human handoff when it does not know.

The stable Python API (other modules, the studio and ``aigc assistant`` build on these names):

* :func:`aigc.apps.assistant.index.build_index` ``(folder, index_dir, *, files=None,
  progress=True) -> IndexReport`` -- ingest Markdown/txt/HTML/PDF (and ``.gz`` of them), chunk,
  drop duplicates, embed (MiniLM), write chunks.jsonl + dense.faiss + bm25.json; re-indexing
  reads only files whose SHA-256 changed. ``folder=None`` updates an existing index.
  :func:`~aigc.apps.assistant.index.demo_files` lists the Debian FAQ (en + zh-cn) chapters.
* :class:`aigc.apps.assistant.retrieve.Retriever` ``(index_dir).search(query, k=5,
  mode="hybrid"|"bm25"|"dense", lang="auto") -> list[Hit]``; ``Hit(chunk_id, text, source,
  section, score, confidence, rank, lang)``.
* :class:`aigc.apps.assistant.answer.Assistant` ``(index_dir, *, generator=None, adapter=None,
  thresholds=None, k=5, mode="hybrid", queue=None).ask(question, history=None, *,
  conversation_id=None, record=True) -> Answer``; ``Answer(text, citations: list[Citation(n,
  source, section, chunk_id, snippet)], handed_off, reason, confidence, timings={"retrieval_s",
  "generation_s"}, passages, cited_by_model, handoff_id, conversation_id, lang)``.
* :class:`aigc.apps.assistant.handoff.HandoffQueue` ``(path, index_dir=None)`` -- SQLite:
  ``open/get/list/answer(id, text, by=)/approve(id)/reject(id)`` for handoffs (open ->
  answered -> approved, which re-indexes), ``new_conversation/add_message/history`` for
  conversations. ``Assistant.queue`` is the one at ``index_dir/assistant.sqlite3``.
* :mod:`aigc.apps.assistant.evaluate` -- the evaluation set and its report.

Errors a user can act on are :class:`aigc.errors.AigcError` (a question over 2,000 characters,
an empty or unreadable folder, an index that is not one).
"""
