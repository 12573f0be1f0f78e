// The Models tab: registered models, their versions and history; "Improve from feedback",
// "Promote" (through the gate) and "Roll back". Uses app.js's helpers ($, el, t, api, showTab).
"use strict";
(() => {
  Object.assign(I18N.zh, {
    tab_models: "模型版本", improve: "根据反馈改进", promote: "晋升候选版本", rollback: "回滚",
    serving: "正在服务", versions: "版本", history: "历史", steps_short: "步数", reason: "原因",
    force: "强制（需说明原因）", images_gate: "评估图像数", no_registered: "此服务器没有注册的模型。",
    parent: "父版本", dataset: "反馈数据集", created: "创建时间", note: "说明",
  });
  const nav = document.querySelector("nav");
  const btn = el("button", { id: "tab-models", "data-tab": "models", "data-i18n": "tab_models",
    text: "Models" });
  nav.insertBefore(btn, nav.querySelector("#tab-compare").nextSibling);
  const page = el("section", { id: "page-models", class: "page" });
  page.hidden = true;
  document.querySelector("#page-compare").after(page);
  btn.addEventListener("click", () => show());

  const MESSAGES = {};  // model name -> the last action's outcome

  async function follow(jobId, out) {
    for (;;) {
      const job = await api(`/api/jobs/${jobId}`);
      out.textContent = `${t(job.status, job.status)} ${Math.round(job.progress * 100)}%`;
      if (job.status === "done") return job;
      if (job.status === "failed" || job.status === "cancelled") throw new Error(job.error || job.status);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  function describeGate(g) {
    return Object.keys(g.base).map((k) => `${k}: ${g.base[k].toFixed(3)} → ${g.candidate[k].toFixed(3)}`).join("; ")
      + (g.reasons.length ? ` — ${g.reasons.join("; ")}` : "");
  }

  function promoteButton(lin, onclick) {
    const b = el("button", { id: `promote-${lin.name}`, text: t("promote", "Promote candidate"), onclick });
    b.disabled = lin.aliases.candidate == null;  // nothing to promote yet
    return b;
  }

  function card(lin) {
    const status = el("p", { class: "muted", "aria-live": "polite", text: MESSAGES[lin.name] || "" });
    const run = async (fn) => {  // the message outlives the re-render that follows
      try { MESSAGES[lin.name] = await fn(); } catch (e) { MESSAGES[lin.name] = "⚠ " + e.message; }
      show();
    };
    const steps = el("input", { type: "number", min: "1", max: "5000", value: "100", "aria-label": t("steps_short", "steps") });
    const n = el("input", { type: "number", min: "50", max: "10000", value: "1000", "aria-label": t("images_gate", "images for the gate") });
    const force = el("input", { type: "checkbox", id: `force-${lin.name}` });
    const reason = el("input", { type: "text", maxlength: "500", placeholder: t("reason", "reason"), "aria-label": t("reason", "reason") });
    const rows = lin.versions.map((v) => el("tr", {},
      el("td", { text: `v${v.version}` + Object.entries(lin.aliases).filter(([, x]) => x === v.version).map(([a]) => ` (${a})`).join("") }),
      el("td", { text: v.parent || "—" }), el("td", { text: v.feedback ? `${v.feedback.dataset} (${v.feedback.train_pairs} pairs)` : "—" }),
      el("td", { text: v.created }), el("td", { text: v.note || "" })));
    return el("div", { class: "model-card" },
      el("h3", { text: `${lin.name} — ${t("serving", "serving")} v${lin.serving}` }),
      el("table", {}, el("tr", {}, ...["versions", "parent", "dataset", "created", "note"].map((k) => el("th", { text: t(k, k) }))), ...rows),
      el("div", { class: "row" },
        el("label", {}, t("steps_short", "steps") + " ", steps),
        el("button", { id: `improve-${lin.name}`, class: "primary", text: t("improve", "Improve from feedback"), onclick: () => run(async () => {
          const job = await api(`/api/models/${lin.name}/improve`, { method: "POST", body: JSON.stringify({ steps: +steps.value }) });
          const done = await follow(job.id, status);
          return `${done.result.candidate}: ${done.result.record.method}, ${done.result.record.pairs} pairs, accuracy ${done.result.record.accuracy.toFixed(2)}`;
        }) })),
      el("div", { class: "row" },
        el("label", {}, t("images_gate", "images for the gate") + " ", n),
        el("label", { for: force.id }, force, " " + t("force", "force (needs a reason)")), reason,
        promoteButton(lin, () => run(async () => {
          const job = await api(`/api/models/${lin.name}/promote`, { method: "POST", body: JSON.stringify({ n: +n.value, force: force.checked, reason: reason.value }) });
          const done = await follow(job.id, status);
          return (done.result.promoted ? "✔ " : "✘ ") + describeGate(done.result.gate);
        })),
        el("button", { text: t("rollback", "Roll back"), onclick: () => run(async () => {
          const r = await api(`/api/models/${lin.name}/rollback`, { method: "POST", body: JSON.stringify({ reason: reason.value || "rolled back from the studio" }) });
          return `v${r.from} → v${r.to}`;
        }) })),
      status,
      el("details", {}, el("summary", { text: t("history", "History") }),
        el("pre", { text: lin.history.map((h) => `${h.at} ${h.action} ${h.alias}: v${h.from ?? "-"} → v${h.to}${h.forced ? " (forced)" : ""} ${h.reason || ""}`).join("\n") })));
  }

  async function show() {
    const { models } = await api("/api/models");
    const cards = [];
    for (const m of models) {
      try { cards.push(card(await api(`/api/models/${m.id}/lineage`))); } catch (e) { /* not registered */ }
    }
    page.replaceChildren(...(cards.length ? cards : [el("p", { class: "muted", text: t("no_registered", "No registered models on this server.") })]));
  }
})();
