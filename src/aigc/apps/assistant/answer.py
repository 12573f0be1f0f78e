"""Answers with sources, or a handoff to a person.

``Assistant(index_dir).ask(question)`` retrieves the ``k`` best passages
(:class:`~aigc.apps.assistant.retrieve.Retriever`, hybrid by default) and then:

1. if the best passage's retrieval confidence is below the threshold of the question's
   language (:data:`THRESHOLDS`, calibrated on the shipped evaluation set, see
   docs/assistant.md), it does not call the model: it answers that it does not know, and opens
   a handoff in the queue;
2. otherwise SmolLM2-135M-Instruct (optionally with a LoRA adapter from ``aigc finetune-chat``)
   is prompted with the numbered passages and asked to answer citing them as ``[1]``, ``[2]``;
   if its reply says it does not know, that is a handoff too.

With ``style="extractive"`` step 2 uses no model: the answer is the opening of the best passage,
cited as [1] (SmolLM2-135M often writes fluent nonsense; see docs/assistant.md).

Citations are the passages the reply cites by number. A 135M model often cites nothing; then
the top passage is given as the citation and ``Answer.cited_by_model`` is False (the evaluation
reports both rates).

``generator`` replaces SmolLM2 by any ``callable(messages) -> str`` (tests, other models).
Conversations: with ``conversation_id``, the question and answer are stored in the handoff
queue's SQLite file and the last turns are given to the model; retrieval uses the current
question alone.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aigc.apps.assistant.handoff import HandoffLimit, HandoffQueue
from aigc.apps.assistant.ingest import language_of
from aigc.apps.assistant.retrieve import MODES, Hit, Retriever, check_query
from aigc.errors import AigcError

# Retrieval-confidence thresholds below which the assistant hands off without generating.
# Calibrated with `aigc assistant eval --calibrate` on src/aigc/assets/assistant/faq_eval.jsonl.
THRESHOLDS = {"en": 0.32, "zh": 0.35}
PASSAGE_CHARS = 450  # each passage is cut to this many characters in the prompt
HISTORY_TURNS = 4  # messages of earlier conversation shown to the model
QUEUE_FILE = "assistant.sqlite3"
# "generate": SmolLM2 writes the answer from the passages; "extractive": the answer is the
# opening of the best passage (no model; what we recommend with a 135M model, see the docs).
STYLES = ("generate", "extractive")
EXTRACT_CHARS = 400

SYSTEM = {
    "en": ("You are a customer-service assistant. Answer the question using only the numbered "
           "passages. Cite the passages you use like [1] or [2]. If the passages do not "
           "answer the question, reply exactly: I don't know."),
    "zh": ("你是客服助手。只根据编号的资料回答问题，并用 [1]、[2] 这样的编号注明出处。"
           "如果资料不能回答问题，只回答：我不知道。"),
}
DONT_KNOW = {
    "en": "I don't know the answer from the documents I have. I have passed your question to "
          "a person{ref}; they will answer here.",
    "zh": "我在现有资料中找不到答案，已将您的问题转给人工客服{ref}，他们会在这里回复您。",
}
# The same when the asker has too many questions waiting for a person (no handoff opened).
DONT_KNOW_BUSY = {
    "en": "I don't know the answer from the documents I have, and you already have many "
          "questions waiting for a person; please wait for their answers before asking more.",
    "zh": "我在现有资料中找不到答案。您已有多个问题在等待人工客服回复，请先等待回复后再提问。",
}
_DONT_KNOW_REPLY = re.compile(r"i don'?t know|i do not know|不知道|无法回答", re.IGNORECASE)
_CITE = re.compile(r"\[(\d{1,2})\]")


@dataclass(frozen=True)
class Citation:
    n: int  # the number used in the answer text ([n])
    source: str
    section: str
    chunk_id: str
    snippet: str  # the first 200 characters of the passage


@dataclass
class Answer:
    text: str
    citations: list[Citation]
    handed_off: bool
    reason: str  # why it handed off ("" when it answered)
    confidence: float  # the best passage's retrieval confidence
    timings: dict[str, float]  # retrieval_s, generation_s
    passages: list[Hit] = field(default_factory=list)  # what the model was shown, numbered 1..k
    cited_by_model: bool = False  # the reply itself cited a passage by number
    handoff_id: int | None = None
    conversation_id: str | None = None
    lang: str = "en"

    def to_dict(self) -> dict:
        return asdict(self)


def smollm2_generator(adapter: str | Path | None = None, *, max_tokens: int = 120) -> Callable:
    """``messages -> reply`` with SmolLM2-135M-Instruct, greedy, optionally with a LoRA adapter
    (a folder written by ``aigc finetune-chat``, loaded by :func:`aigc.finetune.load_chat_adapter`)."""
    from aigc.generation import SamplingParams
    from aigc.models.pretrained import chat, load_smollm2

    model, tokenizer = load_smollm2()
    if adapter is not None:
        from aigc.finetune import load_chat_adapter

        model = load_chat_adapter(adapter)
    # Greedy; the answer ends at its first blank line: SmolLM2-135M tends to loop after the
    # first paragraph, and a customer-service answer of one paragraph is what we want.
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, repetition_penalty=1.2,
                            stop=("\n\n",), seed=0)

    lock = threading.Lock()  # the model keeps one KV cache: one generation at a time

    def generate(messages: list[dict[str, str]]) -> str:
        with lock:
            stream = chat(messages, params, model=model, tokenizer=tokenizer)
            for _ in stream:
                pass
        return drop_repeats(stream.text.strip())

    return generate


def drop_repeats(text: str) -> str:
    """``text`` without sentences that repeat an earlier one word for word (a small model's
    loops), and without a trailing unfinished sentence when a finished one precedes it."""
    parts = re.split(r"(?<=[.!?。！？])\s*", text)
    seen, kept = set(), []
    for p in parts:
        key = " ".join(p.lower().split())
        if key and key not in seen:
            seen.add(key)
            kept.append(p.strip())
    if len(kept) > 1 and not re.search(r"[.!?。！？\]]$", kept[-1]):
        kept.pop()
    return " ".join(kept) if not any(_CJK_END.search(k) for k in kept) else "".join(kept)


_CJK_END = re.compile(r"[。！？]$")


def extract_answer(hit: Hit, *, chars: int = EXTRACT_CHARS) -> str:
    """The extractive answer: the passage's first sentences, up to ``chars`` characters, cut
    at a sentence end when there is one, followed by `` [1]``."""
    # a line break next to a Chinese character is no space; elsewhere it is one
    text = re.sub(r"(?<=[\u3000-\u9fff\uff00-\uffef])\s*\n\s*|\s*\n\s*(?=[\u3000-\u9fff\uff00-\uffef])",
                  "", hit.text)
    text = " ".join(text.split())
    if len(text) > chars:
        ends = [m.end() for m in re.finditer(r"[.!?。！？](\s|$)", text[:chars])]
        text = text[: ends[-1]].strip() if ends else text[:chars].rstrip() + "…"
    return f"{text} [1]"


def build_messages(question: str, passages: list[Hit], lang: str,
                   history: list[dict] | None = None) -> list[dict[str, str]]:
    """The chat prompt: system rule, earlier turns, then the numbered passages and question."""
    numbered = "\n\n".join(
        f"[{i}] ({h.section or h.source}) {h.text[:PASSAGE_CHARS]}" for i, h in enumerate(passages, 1))
    label = ("资料", "问题") if lang == "zh" else ("Passages", "Question")
    messages = [{"role": "system", "content": SYSTEM[lang]}]
    for m in (history or [])[-HISTORY_TURNS:]:
        messages.append({"role": m["role"], "content": m["content"]})
    messages.append({"role": "user",
                     "content": f"{label[0]}:\n{numbered}\n\n{label[1]}: {question}"})
    return messages


class Assistant:
    """Answers questions from one index (see the module docstring).

    Args:
        index_dir: an index made by :func:`aigc.apps.assistant.index.build_index`.
        generator: ``callable(messages) -> str``; default SmolLM2 (loaded on first use).
        adapter: a LoRA adapter folder for SmolLM2 (ignored when ``generator`` is given).
        thresholds: per-language retrieval-confidence thresholds (default :data:`THRESHOLDS`).
        k: passages shown to the model.
        mode: retrieval mode, ``"hybrid"``, ``"bm25"`` or ``"dense"``.
        queue: the handoff queue (default ``index_dir/assistant.sqlite3``).
        style: ``"generate"`` (SmolLM2) or ``"extractive"`` (the best passage's opening).
    """

    def __init__(self, index_dir: str | Path, *, generator: Callable | None = None,
                 adapter: str | Path | None = None, thresholds: dict[str, float] | None = None,
                 k: int = 5, mode: str = "hybrid", queue: HandoffQueue | None = None,
                 style: str = "generate"):
        if mode not in MODES:
            raise AigcError(f"mode must be one of {MODES}, got {mode!r}")
        if style not in STYLES:
            raise AigcError(f"style must be one of {STYLES}, got {style!r}")
        self.style = style
        if not isinstance(k, int) or not 1 <= k <= 20:
            raise AigcError(f"k must be an integer in [1, 20], got {k!r}")
        self.index_dir = Path(index_dir)
        self.retriever = Retriever(self.index_dir)
        self.thresholds = dict(THRESHOLDS if thresholds is None else thresholds)
        if set(self.thresholds) != {"en", "zh"}:
            raise AigcError(f"thresholds need the keys 'en' and 'zh', got {sorted(self.thresholds)}")
        self.k, self.mode = k, mode
        self.queue = queue or HandoffQueue(self.index_dir / QUEUE_FILE, self.index_dir)
        self._generator = generator
        self._adapter = adapter

    @property
    def generator(self) -> Callable:
        if self._generator is None:
            self._generator = smollm2_generator(self._adapter)
        return self._generator

    def reload(self) -> None:
        """Re-read the index (after an approved handoff or a re-index)."""
        self.retriever = Retriever(self.index_dir)

    def ask(self, question: str, history: list[dict] | None = None, *,
            conversation_id: str | None = None, record: bool = True,
            client: str = "") -> Answer:
        """Answer ``question`` (see the module docstring).

        Args:
            question: at most 2,000 characters (AigcError otherwise; nothing is stored).
            history: earlier ``{"role", "content"}`` messages; default: the stored conversation
                when ``conversation_id`` is given.
            conversation_id: store the turn in this conversation (from
                ``queue.new_conversation()``).
            record: open a handoff in the queue when handing off (False: evaluation runs).
            client: who asks (the studio's client name), for the per-client handoff limit;
                past it no handoff is opened and the reply says so.
        """
        question = check_query(question)
        lang = language_of(question)
        if conversation_id is not None and history is None:
            history = self.queue.history(conversation_id)
        t0 = time.perf_counter()
        hits = self.retriever.search(question, k=self.k, mode=self.mode)
        retrieval_s = time.perf_counter() - t0
        confidence = self.retriever.top_confidence(hits)
        reason, reply, generation_s, cited = "", "", 0.0, []
        if confidence < self.thresholds[lang]:
            reason = (f"retrieval confidence {confidence:.2f} below the {lang} threshold "
                      f"{self.thresholds[lang]:.2f}")
        elif self.style == "extractive":
            reply = extract_answer(hits[0])
            cited = [1]
        else:
            t1 = time.perf_counter()
            reply = self.generator(build_messages(question, hits, lang, history))
            generation_s = time.perf_counter() - t1
            if not reply.strip() or _DONT_KNOW_REPLY.search(reply):
                reason = "the model said it does not know"
            cited = sorted({int(n) for n in _CITE.findall(reply) if 1 <= int(n) <= len(hits)})
        answer = Answer(text=reply, citations=[], handed_off=bool(reason), reason=reason,
                        confidence=confidence,
                        timings={"retrieval_s": retrieval_s, "generation_s": generation_s},
                        passages=hits, cited_by_model=bool(cited) and self.style == "generate",
                        lang=lang,
                        conversation_id=conversation_id)
        if answer.handed_off:
            handoff_id, busy = None, False
            if record:
                try:
                    handoff_id = self.queue.open(question, reason=reason, confidence=confidence,
                                                 conversation_id=conversation_id,
                                                 client=client).id
                except HandoffLimit as exc:
                    busy = True
                    answer.reason = f"{reason}; no handoff opened: {exc}"
            answer.handoff_id = handoff_id
            ref = "" if handoff_id is None else (f" (#{handoff_id})" if lang == "en"
                                                 else f"（#{handoff_id}）")
            answer.text = DONT_KNOW_BUSY[lang] if busy else DONT_KNOW[lang].format(ref=ref)
        else:
            numbers = cited or [1]  # the model cited nothing: show the top passage as source
            answer.citations = [_citation(n, hits[n - 1]) for n in numbers]
        if conversation_id is not None:
            self.queue.add_message(conversation_id, "user", question)
            self.queue.add_message(conversation_id, "assistant", answer.text,
                                   citations=[asdict(c) for c in answer.citations])
        return answer


def _citation(n: int, hit: Hit) -> Citation:
    return Citation(n, hit.source, hit.section, hit.chunk_id, hit.text[:200])
