// aigc studio, feedback beyond stars (issue 12): flags with a reason, implicit signals
// (download, regenerate, copy), "My feedback" with delete, and the analysis report.
// Loaded after app.js and uses its helpers ($, el, api, t, EN_TEXT). Who gave the feedback is
// the anonymous id app.js keeps in localStorage and sends as X-Aigc-Rater.
"use strict";

Object.assign(I18N.zh, {
  tab_feedback: "我的反馈", my_feedback: "我的反馈", report: "分析报告",
  feedback_help: "你在这个浏览器里评分、标记或使用过的一切。删除的反馈会从数据库中移除，永远不会用于训练。",
  delete_all_feedback: "删除我的全部反馈", delete: "删除", flag: "标记问题", flag_reason: "原因",
  flag_note: "说明（选“其他”时必填）", send_flag: "提交标记", flagged: "已标记，谢谢！",
  wrong_content: "内容与提示词/类别不符", low_quality: "质量差", unsafe: "不安全", other: "其他",
  no_feedback: "你还没有给出任何反馈。", confirm_delete_all: "删除你的全部反馈？此操作无法撤销。",
  deleted_n: "已删除 {0} 条反馈。", kind_stars: "评分", kind_comparison: "比较", kind_flag: "标记",
  kind_signal: "信号", signal_download: "下载", signal_regenerate: "重新生成", signal_copy: "复制",
  item: "作品", note: "说明", reason: "原因",
});
Object.assign(EN_TEXT, {
  flag: "Flag", flag_reason: "Reason", flag_note: "Note (needed for “other”)", send_flag: "Send flag",
  flagged: "Flagged, thank you!", wrong_content: "Wrong content for the prompt/class", low_quality: "Low quality",
  unsafe: "Unsafe", other: "Other", no_feedback: "You have given no feedback yet.", delete: "Delete",
  confirm_delete_all: "Delete all your feedback? This cannot be undone.", deleted_n: "Deleted {0} pieces of feedback.",
  kind_stars: "stars", kind_comparison: "comparison", kind_flag: "flag", kind_signal: "signal",
  signal_download: "download", signal_regenerate: "regenerate", signal_copy: "copy", item: "item",
});
const FLAG_REASONS = ["wrong_content", "low_quality", "unsafe", "other"];

// ---------------------------------------------------------------- signals
// An implicit signal never gets in the person's way: a failure is logged, not shown.
function signal(itemId, kind) {
  if (!itemId) return Promise.resolve();
  return api(`/api/items/${itemId}/signals`, { method: "POST", body: JSON.stringify({ signal: kind }) })
    .catch((e) => console.warn("signal", kind, e.message));
}
// The item a finished text job stored (a chat reply's id is "chatcmpl-" + the job id).
async function jobItem(jobId) {
  const job = await api("/api/jobs/" + jobId);
  return (job.items || [])[0] || null;
}
async function copyText(text) {
  try { await navigator.clipboard.writeText(text); return; } catch (e) { /* fall back below */ }
  const area = el("textarea", { "aria-hidden": "true", class: "offscreen" });
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}
// A Copy button: copies text() and sends the "copy" signal for the item itemId() names.
function copyButton(text, itemId) {
  const b = el("button", { type: "button", class: "copy", text: t("copy", "Copy") });
  b.addEventListener("click", async (e) => {
    e.stopPropagation();
    await copyText(text());
    b.textContent = t("copied", "Copied");
    signal(await itemId(), "copy");
  });
  return b;
}

// ------------------------------------------------------- actions on an item
// Under an item's detail: a download link (sends "download"), Copy for a text, and Flag.
function itemActions(it) {
  const ext = it.kind === "image" ? "png" : it.kind === "music" ? "wav" : "txt";
  const link = el("a", { class: "download", href: it.url, download: `aigc-${it.kind}-${it.id.slice(0, 8)}.${ext}`,
    text: t("download", "Download") });
  link.addEventListener("click", () => signal(it.id, "download"));
  const box = el("div", { class: "actions" }, link);
  if (it.kind === "text") box.append(copyButton(() => it.text || "", async () => it.id));
  const toggle = el("button", { type: "button", class: "flag-toggle", "aria-expanded": "false", text: t("flag", "Flag") });
  const form = flagForm(it);
  form.hidden = true;
  toggle.addEventListener("click", () => {
    form.hidden = !form.hidden;
    toggle.setAttribute("aria-expanded", String(!form.hidden));
  });
  box.append(toggle, form);
  return box;
}
function flagForm(it) {
  const reason = el("select", { class: "flag-reason" },
    ...FLAG_REASONS.map((r) => el("option", { value: r, text: t(r, EN_TEXT[r]) })));
  const note = el("textarea", { class: "flag-note", rows: "2", maxlength: "500" });
  const status = el("p", { class: "muted flag-status", role: "status" });
  const form = el("form", { class: "flag-form" },
    el("label", {}, el("span", { text: t("flag_reason", "Reason") }), reason),
    el("label", {}, el("span", { text: t("flag_note", EN_TEXT.flag_note) }), note),
    el("button", { type: "submit", text: t("send_flag", "Send flag") }), status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { reason: reason.value };
    if (note.value.trim()) body.note = note.value.trim();
    try {
      await api(`/api/items/${it.id}/flags`, { method: "POST", body: JSON.stringify(body) });
      status.textContent = t("flagged", "Flagged, thank you!");
      note.value = "";
    } catch (err) {
      status.textContent = "⚠ " + err.message;
    }
  });
  return form;
}

// ------------------------------------------------------------ my feedback
function feedbackWords(f) {
  const kind = t("kind_" + f.kind, f.kind);
  if (f.kind === "stars") return `${kind} ★${f.value}`;
  if (f.kind === "flag") return `${kind}: ${t(f.value, EN_TEXT[f.value] || f.value)}`;
  if (f.kind === "signal") return `${kind}: ${t("signal_" + f.value, f.value)}`;
  return `${kind}: ${f.value}`;
}
async function loadMyFeedback() {
  const list = $("feedback-list");
  try {
    const { feedback } = await api("/api/feedback");
    list.replaceChildren(...feedback.map((f) => el("li", { "data-id": f.id, "data-kind": f.kind },
      el("span", { text: `${feedbackWords(f)} · ${t("item", "item")} ${f.item_id.slice(0, 8)}` +
        (f.other_id ? ` / ${f.other_id.slice(0, 8)}` : "") + (f.note ? ` · “${f.note}”` : "") +
        ` · ${new Date(f.created * 1000).toLocaleString(lang === "zh" ? "zh-CN" : "en")}` }),
      el("button", { type: "button", class: "delete", "aria-label": `${t("delete", "Delete")} ${f.id}`,
        text: t("delete", "Delete"), onclick: () => deleteFeedback(f.id) }))));
    if (!feedback.length) list.append(el("li", { class: "muted", text: t("no_feedback", EN_TEXT.no_feedback) }));
    $("delete-all-feedback").disabled = !feedback.length;
  } catch (e) {
    $("feedback-status").textContent = "⚠ " + e.message;
  }
}
async function deleteFeedback(id) {
  try { await api("/api/feedback/" + id, { method: "DELETE" }); } catch (e) { $("feedback-status").textContent = "⚠ " + e.message; }
  loadMyFeedback();
}
async function deleteAllFeedback() {
  if (!confirm(t("confirm_delete_all", EN_TEXT.confirm_delete_all))) return;
  try {
    const { deleted } = await api("/api/feedback", { method: "DELETE" });
    $("feedback-status").textContent = t("deleted_n", EN_TEXT.deleted_n).replace("{0}", deleted);
  } catch (e) {
    $("feedback-status").textContent = "⚠ " + e.message;
  }
  loadMyFeedback();
}
// The report is a page the server makes; with an API key (which a plain link cannot send) it is
// fetched with the key and opened from a blob.
async function openReport(e) {
  if (!localStorage.getItem("aigc-key")) return;  // the plain link works
  e.preventDefault();
  const res = await api("/api/feedback/report", { raw: true });
  window.open(URL.createObjectURL(new Blob([await res.text()], { type: "text/html" })), "_blank", "noopener");
}

document.addEventListener("DOMContentLoaded", () => {
  $("delete-all-feedback").addEventListener("click", deleteAllFeedback);
  $("report-link").addEventListener("click", openReport);
});
