"""The sentiment monitor in the studio: events in (``POST /api/monitor/events``), and what the
dashboard shows: per-entity index series, alerts with the texts behind them, and the monitor's
counters.

The studio's monitor keeps its state in ``DATA_DIR/monitor.db`` and reads its settings from
``DATA_DIR/monitor.yaml`` (or ``monitor.json``) when that file exists (docs/monitor.md); it is
built on the first request that needs it (its scorers load then, not at import). Undelivered
webhook alerts are retried after each POST, once the answer has been sent.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from pydantic import Field

from aigc.studio.schemas import ErrorResponse, Strict
from aigc.studio.service import ApiError, Studio, get_studio, require_key

router = APIRouter(prefix="/api/monitor", tags=["monitor"], dependencies=[Depends(require_key)])

MAX_EVENTS_PER_POST = 1000
_build_lock = threading.Lock()


def get_monitor(request: Request, studio: Studio = Depends(get_studio)):
    """The studio's monitor (``app.state.monitor``), built on first use."""
    monitor = getattr(request.app.state, "monitor", None)
    if monitor is not None:
        return monitor
    with _build_lock:
        monitor = getattr(request.app.state, "monitor", None)
        if monitor is None:
            from aigc.apps.sentiment.alerts import sender_from_config
            from aigc.apps.sentiment.monitor import Monitor, load_config, load_scorers

            data = studio.settings.data_dir
            found = [p for p in (data / "monitor.yaml", data / "monitor.yml",
                                 data / "monitor.json") if p.is_file()]
            try:
                config = load_config(found[0] if found else None)
                sender = sender_from_config(config)
                monitor = Monitor(load_scorers(config.scorer), config, data / "monitor.db",
                                  sender=sender)
            except ValueError as exc:
                raise ApiError(500, f"the monitor cannot start: {exc}", "server_error",
                               code="monitor_unavailable") from exc
            request.app.state.monitor = monitor
    return monitor


class EventsRequest(Strict):
    events: list[Any] = Field(..., min_length=1, max_length=MAX_EVENTS_PER_POST, description=(
        "events {id, text, time?, source?, lang?}; a bad one is reported by its index and the "
        "others are still taken"))


class BadEvent(Strict):
    index: int
    reason: str


class AlertText(Strict):
    id: str
    text: str
    score: float
    time: float
    source: str | None = None


class Alert(Strict):
    alert_id: str
    entity: str
    name: str
    kind: Literal["sentiment", "volume"]
    direction: Literal["up", "down"]
    event_seq: int = Field(..., description="the alert came with the stream's event number ...")
    entity_events: int = Field(..., description="... and the entity's own event count then")
    time: float
    baseline: float | None = Field(None, description="the detector's baseline mean before it "
                                   "fired (None when it fired on its first value)")
    sigma: float | None = None
    current: float | None = Field(None, description="the entity's index (EWMA) when it fired")
    bucket_count: int | None = Field(None, description="volume alerts: mentions in the bucket")
    texts: list[AlertText]
    created: float | None = None
    delivered_at: float | None = Field(None, description="when the webhook took it (None: "
                                       "still in the outbox, or no webhook)")
    attempts: int = 0
    last_error: str | None = None


class EventsResult(Strict):
    accepted: int
    duplicates: int
    untagged: int = Field(..., description="accepted events that mention no entity")
    bad: list[BadEvent]
    alerts: list[Alert]


class AlertList(Strict):
    alerts: list[Alert]


class EntitySummary(Strict):
    entity: str
    name: str
    events: int
    index: float | None
    volume: float | None
    last_time: float | None
    warming_up: bool


class EntityList(Strict):
    entities: list[EntitySummary]


class SeriesPoint(Strict):
    seq: int
    time: float
    sentiment: float | None
    volume: float | None


class Series(Strict):
    entity: str
    name: str
    points: list[SeriesPoint]
    alerts: list[Alert]


class BadLine(Strict):
    origin: str
    line: int
    reason: str


class MonitorStatus(Strict):
    events: int
    duplicates: int
    bad: int
    untagged: int
    alerts: int
    entities: int
    outbox: int = Field(..., description="alerts waiting for the webhook")
    webhook: bool = Field(..., description="whether a webhook is configured")
    bad_lines: list[BadLine]


def _alert(a: dict) -> Alert:
    return Alert(**{k: a.get(k) for k in Alert.model_fields if k in a})


def _deliver(monitor) -> None:
    if getattr(monitor, "sender", None) is not None:
        monitor.sender.deliver_due(monitor.state)


@router.post("/events", response_model=EventsResult)
def post_events(body: EventsRequest, background: BackgroundTasks,
                monitor=Depends(get_monitor)) -> EventsResult:
    """Feed events to the monitor; returns what was taken, the bad ones by index, and any
    alerts raised. The same event id sent again is counted once."""
    try:
        result = monitor.process_events(body.events)
    except ValueError as exc:  # a scorer that failed on the batch: nothing was committed
        raise ApiError(500, f"scoring failed, nothing was taken: {exc}", "server_error",
                       code="scoring_failed") from exc
    background.add_task(_deliver, monitor)
    return EventsResult(accepted=result.accepted, duplicates=result.duplicates,
                        untagged=result.untagged,
                        bad=[BadEvent(index=i, reason=r) for _, i, r in result.bad],
                        alerts=[_alert(a) for a in result.alerts])


@router.get("/status", response_model=MonitorStatus)
def monitor_status(monitor=Depends(get_monitor)) -> MonitorStatus:
    """Counters: events, duplicates, bad lines (the newest 20 with their line numbers), alerts,
    entities, and alerts waiting for the webhook."""
    s = monitor.status()
    return MonitorStatus(**{k: s[k] for k in ("events", "duplicates", "bad", "untagged",
                                              "alerts", "entities", "outbox")},
                         webhook=getattr(monitor, "sender", None) is not None,
                         bad_lines=[BadLine(**b) for b in s["bad_lines"]])


@router.get("/entities", response_model=EntityList)
def entities(monitor=Depends(get_monitor)) -> EntityList:
    """Every entity seen, the most mentioned first, with its current index and volume."""
    return EntityList(entities=[EntitySummary(**e) for e in monitor.entity_summaries()])


@router.get("/series", response_model=Series, responses={
    404: {"model": ErrorResponse, "description": "the monitor has not seen this entity"}})
def series(entity: str = Query(..., min_length=1, max_length=100),
           limit: int = Query(2000, ge=1, le=20000),
           monitor=Depends(get_monitor)) -> Series:
    """The entity's index over time (its newest ``limit`` points) and its alerts."""
    if entity not in monitor.entities:
        raise ApiError(404, f"entity {entity!r} has not been seen by the monitor",
                       "not_found_error", code="entity_not_found", param="entity")
    return Series(entity=entity, name=monitor.tagger.display(entity),
                  points=[SeriesPoint(**p) for p in monitor.state.series(entity, limit)],
                  alerts=[_alert(a) for a in monitor.state.alerts(entity, 200)])


@router.get("/alerts", response_model=AlertList)
def alerts(entity: str | None = Query(None, min_length=1, max_length=100),
           limit: int = Query(100, ge=1, le=1000),
           monitor=Depends(get_monitor)) -> AlertList:
    """The newest alerts (of one entity), newest first, with the texts behind each and whether
    the webhook took it."""
    return AlertList(alerts=[_alert(a) for a in monitor.state.alerts(entity, limit)])
