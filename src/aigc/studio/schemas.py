"""Request and response bodies of the HTTP API (pydantic), with their bounds.

Native ``/api`` bodies reject unknown fields; the OpenAI-compatible ``/v1`` bodies ignore the
fields of OpenAI's API that we do not implement (``user``, ``logprobs``, ...) so that the
official client works, but every field we read is bounded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

from aigc.config import MAX_SEED  # one seed range for the API, the CLI and training

MAX_PROMPT = 2000
MAX_N = 16
MAX_STEPS = 1000
MAX_SIZE = 1024
MAX_TOKENS = 2048
MAX_MESSAGES = 64
MAX_BARS = 64
MAX_PIECES = 4
SIZE_PATTERN = r"^[1-9][0-9]{0,3}x[1-9][0-9]{0,3}$"


def check_stops(v: str | list[str] | None) -> list[str] | None:
    stops = [v] if isinstance(v, str) else v
    if stops is not None and (len(stops) > 4 or any(not 0 < len(s) <= 64 for s in stops)):
        raise ValueError("stop: at most 4 strings of 1..64 characters")
    return stops


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------------- errors


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error of the API has this shape (the OpenAI one)."""

    error: ErrorBody


# ---------------------------------------------------------------------------------- models


class ModelInfo(BaseModel):
    id: str
    kind: Literal["image", "text", "music"]
    family: str
    description: str
    details: dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelInfo]
    skipped: dict[str, str] = Field(default_factory=dict,
                                    description="models found but not loaded, and why")


# ------------------------------------------------------------------------------------ jobs


class ImageJobRequest(Strict):
    kind: Literal["image"] = "image"
    model: str | None = Field(None, max_length=200, description="default: the first image model")
    n: StrictInt = Field(4, ge=1, le=MAX_N)
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED - MAX_N,
                             description="image i uses seed + i; default: random")
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0)
    label: StrictInt | None = Field(None, ge=0, le=100_000, description="class index (class models)")
    prompt: str | None = Field(None, max_length=MAX_PROMPT)
    steps: StrictInt | None = Field(None, ge=1, le=MAX_STEPS)
    guidance: StrictFloat | None = Field(None, ge=0.0, le=50.0)
    sampler: str | None = Field(None, max_length=32)
    size: StrictInt | None = Field(None, ge=8, le=MAX_SIZE,
                             description="output side in pixels (nearest upscale of the model's "
                                         "native size); default: native")


class ChatMessage(Lenient):
    """One chat message. ``content`` may be a string or, as in OpenAI's API, a list of text
    parts (``[{"type": "text", "text": "..."}]``, joined with newlines); the ``developer`` role
    (OpenAI's newer name for instructions) is stored as ``system``."""

    role: Literal["system", "user", "assistant", "developer"]
    content: str = Field(..., max_length=8000)

    @field_validator("role")
    @classmethod
    def _developer_is_system(cls, v: str) -> str:
        return "system" if v == "developer" else v

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        texts = []
        for part in v:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content parts must be {{'type': 'text', 'text': str}}; got a "
                                 f"part of type {kind!r} (only text is supported)")
            texts.append(part["text"])
        return "\n".join(texts)


class TextJobRequest(Strict):
    kind: Literal["text"] = "text"
    model: str | None = Field(None, max_length=200, description="default: the first text model")
    prompt: str | None = Field(None, max_length=MAX_PROMPT * 4)
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    max_tokens: StrictInt = Field(128, ge=1, le=MAX_TOKENS)
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0)
    top_p: StrictFloat = Field(1.0, gt=0.0, le=1.0)
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    stop: list[str] | None = Field(None, max_length=4)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        return check_stops(v)


class MusicJobRequest(Strict):
    kind: Literal["music"] = "music"
    model: str | None = Field(None, max_length=200, description="default: the first music model")
    style: Literal["chorale", "folk"] = Field("chorale", description="chorale: 4 voices (Bach); "
                                             "folk: 1 voice (Essen, O'Neill)")
    key: str = Field("C major", max_length=16, description="tonic and mode, e.g. 'D major', "
                                                             "'F# minor', 'Bb major'")
    meter: str = Field("4/4", max_length=8, description="time signature, e.g. 3/4, 6/8")
    bars: StrictInt = Field(8, ge=1, le=MAX_BARS, description="bars to compose (the cost budget "
                                                         "bounds bars x bar length / tempo)")
    n: StrictInt = Field(1, ge=1, le=MAX_PIECES, description="pieces; piece i uses seed + i")
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED - MAX_PIECES, description="default: random")
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0, description="0 is greedy")
    tempo: StrictFloat = Field(90.0, ge=40.0, le=240.0, description="quarter notes per minute")


class Job(BaseModel):
    id: str
    kind: str
    model: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float
    params: dict[str, Any]
    cost: float
    attempts: int
    error: str | None = None
    result: dict[str, Any] | None = None
    retry_of: str | None = None
    created: float
    started: float | None = None
    finished: float | None = None
    items: list[str] = Field(default_factory=list)


class JobList(BaseModel):
    jobs: list[Job]


class JobEvent(BaseModel):
    """One server-sent event of ``GET /api/jobs/{id}/events`` (the ``data:`` line, JSON)."""

    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float = Field(..., ge=0.0, le=1.0)
    error: str | None = None
    items: list[str] = Field(default_factory=list, description="item ids, once done")


# ----------------------------------------------------------------------------------- items


class Item(BaseModel):
    id: str
    job_id: str
    index: int
    kind: str
    model: str
    model_sha256: str
    url: str
    prompt: str | None = None
    seed: int | None = None
    text: str | None = None
    record: dict[str, Any]
    created: float
    stars: float | None = Field(None, description="mean star rating")
    n_ratings: int = 0
    wins: int = 0
    comparisons: int = 0
    metric_card: dict[str, Any] | None = None
    files: dict[str, str] | None = Field(None, description="music: URLs of the piece as 'mid', "
                                         "'wav' and 'png' (piano roll); ``url`` is the WAV")


class ItemList(BaseModel):
    items: list[Item]


class RatingRequest(Strict):
    stars: int = Field(..., ge=1, le=5)


class ComparisonRequest(Strict):
    a: str = Field(..., min_length=1, max_length=32)
    b: str = Field(..., min_length=1, max_length=32)
    winner: Literal["a", "b", "tie"]


class Comparison(BaseModel):
    id: int
    a: str
    b: str
    winner: str
    created: float


class Health(BaseModel):
    status: Literal["ok"]
    models: int
    jobs: dict[str, int]


# ---------------------------------------------------------------------- OpenAI-compatible


class StreamOptions(Lenient):
    include_usage: bool = Field(False, description="send a last chunk with ``usage`` and no "
                                "choices before ``data: [DONE]``")


class _OAISampling(Lenient):
    """The sampling fields completions and chat completions share."""

    model: str = Field(..., max_length=200)
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0)
    top_p: StrictFloat = Field(1.0, gt=0.0, le=1.0)
    n: StrictInt = Field(1, ge=1, le=1, description="only n=1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        return check_stops(v)


class OAICompletionRequest(_OAISampling):
    prompt: str = Field(..., max_length=MAX_PROMPT * 4)
    max_tokens: StrictInt = Field(16, ge=1, le=MAX_TOKENS)
    echo: bool = Field(False, description="put the prompt before the completion")


class OAIChatRequest(_OAISampling):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_tokens: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS)


class OAIImageRequest(Lenient):
    prompt: str = Field(..., max_length=MAX_PROMPT)
    model: str | None = Field(None, max_length=200)
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    size: str | None = Field(None, pattern=SIZE_PATTERN,
                             description="'SxS', square, from the model's native size to 1024")
    response_format: Literal["url", "b64_json"] = "url"
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED - MAX_N, description="extension")
    steps: StrictInt | None = Field(None, ge=1, le=MAX_STEPS, description="extension")
    guidance: StrictFloat | None = Field(None, ge=0.0, le=50.0, description="extension")
    sampler: str | None = Field(None, max_length=32, description="extension")
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0, description="extension")


# ----------------------------------------------------------------- the loop (registry)


class ImproveRequest(Strict):
    """``POST /api/models/{name}/improve``: learn a candidate from this studio's feedback."""

    steps: StrictInt = Field(100, ge=1, le=5000, description="optimiser steps")
    lr: StrictFloat | None = Field(None, gt=0.0, le=1e-2, description="default per family")
    beta: StrictFloat | None = Field(None, gt=0.0, le=1e6, description="default per method")
    batch_size: StrictInt = Field(16, ge=1, le=256)
    seed: StrictInt = Field(0, ge=0, le=MAX_SEED)


class PromoteRequest(Strict):
    """``POST /api/models/{name}/promote``: gate a version and, if it passes, serve it."""

    version: str = Field("candidate", pattern=r"^(candidate|v[0-9]{1,6})$")
    n: StrictInt = Field(1000, ge=50, le=10000, description="images for the image gate")
    force: bool = Field(False, description="promote even if the gate refuses (needs reason)")
    reason: str = Field("", max_length=500)


class RollbackRequest(Strict):
    reason: str = Field(..., min_length=1, max_length=500)


# ------------------------------------------------------------------ the assistant (issue 13)

MAX_QUESTION = 2000  # the same bound as aigc.apps.assistant.retrieve.MAX_QUERY_CHARS
MAX_EMBED_INPUTS = 256
MAX_EMBED_CHARS = 4000  # per input, checked before tokenizing; tokens are bounded after


class AssistantAskRequest(Strict):
    question: str = Field(..., min_length=1, max_length=MAX_QUESTION)
    conversation_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$",
                                        description="omit to start a conversation")


class AssistantCitation(BaseModel):
    n: int = Field(description="the number used in the answer text, [n]")
    source: str = Field(description="the document, relative to the knowledge-base folder")
    section: str = Field(description="the heading the passage is under")
    chunk_id: str
    snippet: str


class AssistantAnswer(BaseModel):
    conversation_id: str
    answer: str
    citations: list[AssistantCitation]
    handed_off: bool
    handoff_id: int | None
    reason: str = Field(description="why it handed off; empty when it answered")
    confidence: float = Field(description="the best passage's retrieval confidence")
    lang: Literal["en", "zh"]
    timings: dict[str, float] = Field(description="retrieval_s, generation_s")


class AssistantMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str
    citations: list[AssistantCitation]
    author: str = Field(description="'user', 'assistant', or the person who answered a handoff")


class AssistantConversation(BaseModel):
    id: str
    messages: list[AssistantMessage]


class AssistantHandoff(BaseModel):
    id: int
    conversation_id: str | None
    question: str
    reason: str
    confidence: float
    status: Literal["open", "answered", "approved", "rejected"]
    answer: str | None
    answered_by: str | None
    document: str | None = Field(description="its source name in the knowledge base once "
                                             "approved")
    created: float
    answered_at: float | None
    closed_at: float | None
    asked: int = Field(1, description="times the question was asked while the handoff was open")


class AssistantHandoffList(BaseModel):
    data: list[AssistantHandoff]


class AssistantHandoffAnswer(Strict):
    text: str = Field(..., min_length=1, max_length=20_000)


class AssistantSpeakRequest(Strict):
    text: str = Field(..., min_length=1, max_length=2000)
    voice: str | None = Field(None, pattern=r"^[a-z-]{1,16}:[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$",
                              description="ENGINE:NAME, e.g. espeak-ng:en-us, espeak-ng:cmn, "
                                          "flite:slt; default: by the text's language")


class AssistantTranscript(BaseModel):
    text: str
    language: Literal["en"]
    seconds: float = Field(description="of audio")
    sample_rate: int = Field(description="of the upload, before resampling to 16 kHz")


class AssistantVoice(BaseModel):
    id: str
    engine: str
    language: str
    description: str


class AssistantInfo(BaseModel):
    enabled: bool
    index: str | None
    chunks: int
    asr: str | None = Field(description="the speech recogniser, or null when unavailable")
    asr_languages: list[str]
    voices: list[AssistantVoice]
    default_voices: dict[str, str]
    note: str


class OAIEmbeddingRequest(Lenient):
    input: str | list[str] = Field(..., description="a string or a list of strings (token "
                                                    "arrays are not supported)")
    model: str = Field(..., max_length=200)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, description="only 384 (the model's) is allowed")

    @field_validator("input", mode="before")
    @classmethod
    def _strings(cls, v: Any) -> Any:
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ValueError("input must be a string or a list of strings (token arrays are "
                             "not supported)")
        if not 1 <= len(items) <= MAX_EMBED_INPUTS:
            raise ValueError(f"input must hold 1..{MAX_EMBED_INPUTS} strings; got {len(items)}")
        for i, s in enumerate(items):
            if not s.strip():
                raise ValueError(f"input[{i}] is empty")
            if len(s) > MAX_EMBED_CHARS:
                raise ValueError(f"input[{i}] has {len(s)} characters; at most "
                                 f"{MAX_EMBED_CHARS}")
        return v
