// The Monitor tab: each entity's sentiment index (EWMA) over time as an SVG plot with its volume
// and its alerts marked, and the alerts with the texts behind each. Reads /api/monitor/*; uses
// app.js's helpers ($, el, t, api). No library, no CDN.
"use strict";
(() => {
  Object.assign(I18N.zh, {
    tab_monitor: "舆情监控", entity: "实体", index: "情绪指数", volume: "提及量", alerts: "警报",
    no_entities: "还没有事件。用 POST /api/monitor/events 或 aigc monitor 送入文本。",
    delivered: "已送达", in_outbox: "待发送", texts_behind: "触发警报的文本", sentiment: "情绪",
    up: "上升", down: "下降", events: "事件", duplicates: "重复", bad_lines: "坏行", outbox: "待发送",
  });
  const SVGNS = "http://www.w3.org/2000/svg";
  const page = el("section", { id: "page-monitor", class: "page" });
  page.hidden = true;
  document.querySelector("main").append(page);
  const btn = $("tab-monitor");
  let timer = null, current = null;
  btn.addEventListener("click", () => { show(); clearInterval(timer); timer = setInterval(() => { if (!page.hidden) show(); }, 5000); });

  function svg(tag, attrs) {
    const n = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
    return n;
  }

  // The index in [-1, 1] as a line, the volume (scaled to its maximum) as a grey area, each alert
  // as a red (down) or green (up) tick, on a time axis.
  function plot(series) {
    const W = 900, H = 260, L = 40, R = 10, T = 10, B = 24;
    const pts = series.points;
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img",
      "aria-label": `${t("index", "sentiment index")} ${series.name}` });
    if (!pts.length) return box;
    const t0 = pts[0].time, t1 = Math.max(pts[pts.length - 1].time, t0 + 1);
    const x = (tm) => L + (W - L - R) * (tm - t0) / (t1 - t0);
    const y = (v) => T + (H - T - B) * (1 - (v + 1) / 2);
    for (const v of [-1, 0, 1]) {
      box.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#dde1e7" }));
      const lab = svg("text", { x: 4, y: y(v) + 4, "font-size": 11, fill: "#6b7280" }); lab.textContent = v; box.append(lab);
    }
    const vmax = Math.max(1e-9, ...pts.map((p) => p.volume || 0));
    const vol = pts.filter((p) => p.volume != null).map((p) => `${x(p.time)},${y(-1 + (p.volume / vmax) * 0.6)}`);
    if (vol.length) box.append(svg("polyline", { points: vol.join(" "), fill: "none", stroke: "#cbd5e1", "stroke-width": 1.5 }));
    const line = pts.filter((p) => p.sentiment != null).map((p) => `${x(p.time)},${y(p.sentiment)}`);
    box.append(svg("polyline", { points: line.join(" "), fill: "none", stroke: "#2f6fed", "stroke-width": 2 }));
    for (const a of series.alerts) {
      if (a.time < t0) continue;
      const tick = svg("line", { x1: x(a.time), x2: x(a.time), y1: T, y2: H - B,
        stroke: a.direction === "down" ? "#dc2626" : "#16a34a", "stroke-dasharray": a.kind === "volume" ? "4 3" : "" });
      const tip = svg("title"); tip.textContent = `${a.kind} ${a.direction} @ ${new Date(a.time * 1000).toISOString()}`;
      tick.append(tip); box.append(tick);
    }
    for (const tm of [t0, (t0 + t1) / 2, t1]) {
      const lab = svg("text", { x: Math.min(x(tm), W - 150), y: H - 6, "font-size": 11, fill: "#6b7280" });
      lab.textContent = new Date(tm * 1000).toISOString().slice(0, 19).replace("T", " "); box.append(lab);
    }
    return box;
  }

  function alertCard(a) {
    const when = new Date(a.time * 1000).toISOString().slice(0, 19).replace("T", " ");
    const state = a.delivered_at ? t("delivered", "delivered") : (a.attempts ? `${t("in_outbox", "in outbox")} (${a.last_error || ""})` : "");
    return el("details", { class: "panel" },
      el("summary", { text: `${a.name} · ${t(a.kind, a.kind)} ${t(a.direction, a.direction)} · ${when} · ${t("index", "index")} ${a.current == null ? "—" : a.current.toFixed(2)} (${t("baseline", "baseline")} ${a.baseline == null ? "—" : a.baseline.toFixed(2)}) ${state}` }),
      el("p", { class: "muted", text: t("texts_behind", "The texts behind this alert") }),
      el("ul", {}, ...a.texts.map((x) => el("li", { text: `[${x.score.toFixed(2)}] ${x.text}` }))));
  }

  async function show() {
    let status, entities;
    try {
      status = await api("/api/monitor/status");
      entities = (await api("/api/monitor/entities")).entities;
    } catch (e) { page.replaceChildren(el("p", { class: "muted", text: "⚠ " + e.message })); return; }
    const line = el("p", { class: "muted", id: "monitor-status", text:
      `${t("events", "events")} ${status.events} · ${t("duplicates", "duplicates")} ${status.duplicates} · ${t("bad_lines", "bad lines")} ${status.bad} · ${t("alerts", "alerts")} ${status.alerts} · ${t("outbox", "outbox")} ${status.outbox}` });
    if (!entities.length) { page.replaceChildren(line, el("p", { class: "muted", text: t("no_entities", "No events yet: send texts with POST /api/monitor/events or aigc monitor.") })); return; }
    if (!current || !entities.some((e) => e.entity === current)) current = entities[0].entity;
    const pick = el("select", { id: "monitor-entity", "aria-label": t("entity", "entity") },
      ...entities.map((e) => el("option", { value: e.entity, text: `${e.name} (${e.events})` })));
    pick.value = current;
    pick.addEventListener("change", () => { current = pick.value; show(); });
    const series = await api(`/api/monitor/series?entity=${encodeURIComponent(current)}`);
    page.replaceChildren(line,
      el("div", { class: "panel" }, el("label", {}, t("entity", "Entity"), pick), plot(series)),
      el("h3", { text: t("alerts", "Alerts") }),
      ...(series.alerts.length ? series.alerts.map(alertCard) : [el("p", { class: "muted", text: "—" })]));
  }
})();
