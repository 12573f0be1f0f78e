// aigc studio web UI: plain JavaScript, no build step. Talks to /api and /v1 of this server.
"use strict";

const I18N = {
  en: {},
  zh: {
    tab_image: "图像", tab_text: "文本", tab_gallery: "作品库", tab_compare: "比较",
    api_docs: "API 文档", api_key: "API 密钥", save: "保存", model: "模型", class: "类别",
    prompt: "提示词", prompt_caption: "该模型不接受提示词。", seed: "随机种子",
    n: "数量", steps: "步数", sampler: "采样器", guidance: "引导强度", temperature: "温度",
    generate: "生成", mode: "模式", chat: "对话", completion: "续写", max_tokens: "最大长度",
    send: "发送", clear: "清空", all_kinds: "全部类型", images: "图像", texts: "文本",
    all_models: "全部模型", any_rating: "任意评分", search: "搜索提示词或文本", filter: "筛选",
    compare_help: "两者中哪个更好？", a_better: "A 更好", tie: "平手", b_better: "B 更好",
    regenerate: "用此种子重新生成", queued: "排队中", running: "生成中", done: "完成",
    failed: "失败", cancelled: "已取消", cancel: "取消", no_items: "还没有作品。",
    record: "完整记录", metric_card: "模型指标卡", no_card: "该模型没有指标卡。",
    model_hash: "模型哈希", rating: "评分", thanks: "已记录，谢谢！", need_two: "至少需要两个作品。",
    batching: "批处理", native: "原生尺寸",
    trained_step: "训练步数", job: "任务", seed_short: "种子", eta_left: "预计还需 {0}", secs: "{0} 秒", mins: "{0} 分钟",
    queue: "队列", load_more: "加载更多", tokens: "个词元",
    default_value: "默认", cut: "已截断：达到最大长度", copy: "复制", copied: "已复制",
    download: "下载", no_image_model: "没有加载图像模型：用 --models DIR 启动。",
    no_text_model: "没有加载文本模型。",
    prompt_wins: "将使用提示词，类别被忽略（清空提示词即可按类别生成）。",
    class_wins: "将按类别生成；输入提示词则改用提示词（二者只能选其一）。",
    must_max: "不能大于 {0}", must_min: "不能小于 {0}",
    must_int: "必须是整数", must_number: "必须是数字", must_max_chars: "最多 {0} 个字符",
    required: "不能为空", not_accepted: "不被接受", must_one_of: "必须是以下之一：{0}",
    error_any: "请求有误",
    // The API's own (English) messages, by code, for the Chinese page.
    err_queue_full: "队列已满，请稍后再试。", err_over_budget: "请求超出计算预算：请减少数量、步数或小节数。",
    err_note_required: "选择“其他”时请写明问题。", err_job_finished: "任务已经结束。", err_not_yours: "这条反馈不是你的。",
    err_model_not_found: "找不到该模型。", err_item_not_found: "找不到该作品。", err_job_not_found: "找不到该任务。",
    err_unsupported_parameter: "该模型不能使用这项设置。", err_bad_size: "尺寸不受支持。",
    err_missing_api_key: "需要 API 密钥。", err_invalid_api_key: "API 密钥无效。",
    err_generation_failed: "生成失败。", err_feedback_not_found: "找不到这条反馈。",
  },
};
let lang = localStorage.getItem("aigc-lang") || ((navigator.language || "en").startsWith("zh") ? "zh" : "en");
const EN_TEXT = {
  job: "job", seed_short: "seed", eta_left: "about {0} left", secs: "{0} s", mins: "{0} min",
  tokens: "tokens", default_value: "default",
  cut: "cut: max tokens reached", copy: "Copy", copied: "Copied", download: "Download",
  no_image_model: "No image model loaded: start with --models DIR.", no_text_model: "No text model loaded.",
  prompt_wins: "The prompt is used and the class is ignored (clear the prompt to use the class).",
  class_wins: "The class is used; typing a prompt uses the prompt instead (one or the other, not both).",
  must_max: "must be at most {0}", must_min: "must be at least {0}",
  must_int: "must be a whole number", must_number: "must be a number", must_max_chars: "at most {0} characters",
  required: "is required", not_accepted: "is not accepted here", must_one_of: "must be one of: {0}",
  error_any: "Request refused",
};
// t() with "{0}" filled in.
const tf = (key, arg) => t(key).replace("{0}", arg);
function t(key, fallback) { return (I18N[lang] && I18N[lang][key]) || EN_TEXT[key] || fallback || key; }
function applyLang() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => {
    const k = el.dataset.i18n;
    if (!(k in EN_TEXT)) EN_TEXT[k] = el.textContent;
    el.textContent = t(k);
  });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => {
    el.placeholder = lang === "zh" ? t(el.dataset.i18nPlaceholder) : "search prompts or text";
  });
  document.getElementById("lang").value = lang;
}

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  kids.forEach((c) => c != null && e.append(c));
  return e;
};

// The anonymous rater id this browser keeps (issue 12): sent as X-Aigc-Rater on every /api
// call, so that a person's feedback can be listed and deleted by them. 22 random base64url
// characters; no name, no tracking beyond this studio.
function raterId() {
  let id = localStorage.getItem("aigc-rater");
  if (!id || !/^[A-Za-z0-9_-]{16,64}$/.test(id)) {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    id = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    localStorage.setItem("aigc-rater", id);
  }
  return id;
}
async function api(path, opts = {}) {
  const headers = { "Content-Type": "application/json", "X-Aigc-Rater": raterId() };
  const key = localStorage.getItem("aigc-key");
  if (key) headers.Authorization = "Bearer " + key;
  const res = await fetch(path, { ...opts, headers: { ...headers, ...(opts.headers || {}) } });
  if (res.status === 401) $("keybar").hidden = false;
  if (opts.raw) return res;
  if (res.status === 204) return {};
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(readableError(body.error, res.statusText));
  return body;
}

// ------------------------------------------------------------ errors in plain words
// The API answers {"error": {"message", "param", "code"}}; a validation error's message is
// pydantic's ("image.n: Input should be less than or equal to 16"). Say it as "Images: must be
// at most 16", with the field's label from this page, in the page's language.
const PARAM_LABEL = { n: "n", seed: "seed", steps: "steps", guidance: "guidance", sampler: "sampler",
  temperature: "temperature", prompt: "prompt", label: "class", model: "model", max_tokens: "max_tokens",
  bars: "bars", tempo: "tempo", key: "key", meter: "meter", style: "style", note: "note", reason: "reason",
  stars: "rating", messages: "prompt" };
const PYDANTIC = [  // pydantic message -> [dictionary key, captured argument]
  [/less than or equal to (\S+)/, "must_max"], [/less than (\S+)/, "must_max"],
  [/greater than or equal to (\S+)/, "must_min"], [/greater than (\S+)/, "must_min"],
  [/valid integer/, "must_int"], [/valid number/, "must_number"],
  [/at most (\d+) characters?/, "must_max_chars"], [/Field required/, "required"],
  [/Extra inputs are not permitted/, "not_accepted"], [/Input should be (.+)$/, "must_one_of"],
];
function paramLabel(param) {
  const name = String(param || "").split(".").pop();
  const key = PARAM_LABEL[name];
  return key ? t(key, name) : name;
}
function readableError(err, fallback) {
  if (!err) return fallback || t("error_any", "Request refused");
  const label = err.param ? paramLabel(err.param) : "";
  let text = err.message || fallback || "";
  if (lang === "zh" && I18N.zh["err_" + err.code]) {
    text = I18N.zh["err_" + err.code];
  } else if (err.code === "validation_error" || err.code === "invalid_value") {
    const first = text.split("; ")[0].replace(/^[\w.]+: /, "");
    for (const [re, key] of PYDANTIC) {
      const m = first.match(re);
      if (m) { text = tf(key, m[1] || ""); break; }
    }
  }
  return label ? `${label}: ${text}` : text;
}

// ------------------------------------------------------------------ tabs
function showTab(name) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".page").forEach((p) => (p.hidden = p.id !== "page-" + name));
  if (name === "gallery") loadGallery();
  if (name === "gallery" && typeof loadForYou === "function") loadForYou();  // recommend.js
  if (name === "compare") loadPair();
  if (name === "feedback") loadMyFeedback();  // feedback.js
  if (name === "image") refreshQueue();
  location.hash = name;
}

// ---------------------------------------------------------------- models
let MODELS = [];
async function loadModels() {
  MODELS = (await api("/api/models")).models;
  const imgs = MODELS.filter((m) => m.kind === "image"), txts = MODELS.filter((m) => m.kind === "text");
  $("img-model").replaceChildren(...imgs.map((m) => el("option", { value: m.id, text: m.id })));
  $("txt-model").replaceChildren(...txts.map((m) => el("option", { value: m.id, text: m.id })));
  $("f-model").replaceChildren(el("option", { value: "", "data-i18n": "all_models", text: t("all_models", "All models") }),
    ...MODELS.map((m) => el("option", { value: m.id, text: m.id })));
  if (!imgs.length) $("img-model-info").textContent = t("no_image_model", "No image model loaded: start with --models DIR.");
  onImageModel(); onTextModel();
  musicModels();  // music.js
}
function onImageModel() {
  const m = MODELS.find((x) => x.id === $("img-model").value);
  if (!m) return;
  const d = m.details;
  const hasClass = (d.conditioning || "").includes("class"), hasText = (d.conditioning || "").includes("text");
  $("row-class").hidden = !hasClass;
  $("img-class").replaceChildren(...(d.class_names || []).map((c, i) => el("option", { value: i, text: c })));
  // Only a text-conditional model reads a prompt (the server refuses one for the others).
  $("row-prompt").hidden = !hasText;
  $("prompt-note").hidden = hasText;
  $("img-steps").disabled = !d.steps;
  $("img-guidance").disabled = !d.guidance;
  $("img-sampler").disabled = !(d.samplers || []).length;
  $("img-sampler").replaceChildren(el("option", { value: "", text: "—" }), ...(d.samplers || []).map((s) => el("option", { value: s, text: s })));
  imageHints();
}
function imageHints() {
  const m = MODELS.find((x) => x.id === $("img-model").value);
  if (!m) return;
  const d = m.details;
  $("img-model-info").textContent = `${d.family} · ${d.image_size}×${d.image_size} · ${t("trained_step", "step")} ${d.step} · ` +
    `${d.sha256.slice(0, 12)}` + (d.batching ? ` · ${t("batching", "batching")}` : "");
  // Empty Steps/Guidance run the family's defaults (the model list names them): placeholders.
  $("img-steps").placeholder = d.steps ? `${t("default_value", "default")} ${d.default_steps}` : "—";
  $("img-guidance").placeholder = d.guidance && d.default_guidance != null
    ? `${t("default_value", "default")} ${d.default_guidance}` : "—";
  onCondition();
}
// A model that takes a class and a prompt uses one of them (the API refuses both): the prompt
// when one is typed, else the class. Say which, and grey out the class that will be ignored.
function onCondition() {
  const m = MODELS.find((x) => x.id === $("img-model").value);
  const cond = (m && m.details.conditioning) || "";
  const both = cond.includes("class") && cond.includes("text");
  const prompt = $("img-prompt").value.trim() !== "";
  $("img-class").disabled = both && prompt;
  $("cond-note").hidden = !both;
  $("cond-note").textContent = prompt ? t("prompt_wins", EN_TEXT.prompt_wins) : t("class_wins", EN_TEXT.class_wins);
  $("cond-note").dataset.wins = prompt ? "prompt" : "class";
}
function onTextModel() {
  const m = MODELS.find((x) => x.id === $("txt-model").value);
  $("txt-model-info").textContent = m ? m.description : t("no_text_model", "No text model loaded.");
}

// ----------------------------------------------------------------- image
function num(id) { const v = $(id).value; return v === "" ? null : Number(v); }
async function generateImages(ev) {
  if (ev) ev.preventDefault();
  const m = MODELS.find((x) => x.id === $("img-model").value);
  const body = { kind: "image", model: $("img-model").value, n: num("img-n") || 1, seed: num("img-seed"),
    temperature: num("img-temp") ?? 1 };
  // A model that takes both reads the prompt when one is typed, else the class.
  const cond = (m && m.details.conditioning) || "";
  const prompt = cond.includes("text") ? ($("img-prompt").value.trim() || null) : null;
  if (prompt) body.prompt = prompt;
  else if (cond.includes("class")) body.label = Number($("img-class").value);
  if (!$("img-steps").disabled && num("img-steps")) body.steps = num("img-steps");
  if (!$("img-guidance").disabled && num("img-guidance") != null) body.guidance = num("img-guidance");
  if (!$("img-sampler").disabled && $("img-sampler").value) body.sampler = $("img-sampler").value;
  $("gen-button").disabled = true;
  $("progress-bar").style.width = "0";
  try {
    const job = await api("/api/jobs", { method: "POST", body: JSON.stringify(body) });
    const done = await followJob(job);
    const items = await Promise.all(done.items.map((id) => api("/api/items/" + id)));
    $("results").replaceChildren(...items.map((it) => card(it, () => { showTab("gallery"); showDetail(it.id); })));
  } catch (e) {
    $("job-status").textContent = "⚠ " + e.message;
  } finally {
    $("gen-button").disabled = false;
    $("cancel-job").hidden = true;
    refreshQueue();
  }
}
// ETA from progress over elapsed time: a job that took `elapsed` seconds for `progress` of its
// work needs elapsed * (1 - progress) / progress more (null until there is progress to go on).
function etaSeconds(progress, elapsed) {
  if (!(progress > 0.01) || progress >= 1 || !(elapsed > 0)) return null;
  return elapsed * (1 - progress) / progress;
}
function etaWords(seconds) {
  if (seconds == null) return "";
  const span = seconds < 90 ? tf("secs", Math.max(1, Math.round(seconds))) : tf("mins", Math.round(seconds / 60));
  return tf("eta_left", span);
}
const JOB_T0 = {};  // job id -> when this page first saw it running (ms)
function jobLine(job) {
  const parts = [t(job.status, job.status), `${t("job", "job")} ${job.id.slice(0, 8)}`];
  if (job.params && job.params.seed != null) parts.push(`${t("seed_short", "seed")} ${job.params.seed}`);
  if (job.status === "running") {
    JOB_T0[job.id] = JOB_T0[job.id] || performance.now();
    const eta = etaWords(etaSeconds(job.progress, (performance.now() - JOB_T0[job.id]) / 1000));
    if (eta) parts.push(eta);
  }
  return parts.join(" · ");
}
function showJob(job) {
  $("progress-bar").style.width = Math.round(job.progress * 100) + "%";
  $("job-status").textContent = jobLine(job);
  const live = job.status === "queued" || job.status === "running";
  $("cancel-job").hidden = !live;
  $("cancel-job").dataset.job = live ? job.id : "";
  refreshQueueSoon();
}
async function cancelJob(id) {
  if (!id) return;
  try { await api(`/api/jobs/${id}/cancel`, { method: "POST" }); } catch (e) { $("job-status").textContent = "⚠ " + e.message; }
  refreshQueue();
}

// ------------------------------------------------------------------ queue
// Jobs waiting or running on this server (everyone's), each with a Cancel button.
let QUEUE_TIMER = 0, QUEUE_LAST = -1e9, QUEUE_SEQ = 0;
// At most one refresh a second: the next one is scheduled, never dropped.
function refreshQueueSoon() {
  if (!QUEUE_TIMER) QUEUE_TIMER = setTimeout(refreshQueue, Math.max(0, 1000 - (performance.now() - QUEUE_LAST)));
}
async function refreshQueue() {
  clearTimeout(QUEUE_TIMER);
  QUEUE_TIMER = 0;
  QUEUE_LAST = performance.now();
  const seq = ++QUEUE_SEQ;  // only the newest of overlapping refreshes may render
  try {
    const [running, queued] = await Promise.all(["running", "queued"].map((st) => api(`/api/jobs?status=${st}&limit=50`)));
    if (seq !== QUEUE_SEQ) return;
    const jobs = [...running.jobs, ...queued.jobs];
    $("queue").hidden = !jobs.length;
    $("queue-list").replaceChildren(...jobs.map((j) => el("li", { "data-job": j.id, "data-status": j.status },
      el("span", { text: `${t(j.status, j.status)} · ${t(j.kind === "image" ? "images" : j.kind === "text" ? "texts" : "music", j.kind)} · ` +
        `${j.model} · ${Math.round(j.progress * 100)}% · ${t("job", "job")} ${j.id.slice(0, 8)}` }),
      el("button", { type: "button", class: "cancel", "aria-label": `${t("cancel", "Cancel")} ${j.id.slice(0, 8)}`,
        text: t("cancel", "Cancel"), onclick: () => cancelJob(j.id) }))));
    if (jobs.length && !$("page-image").hidden) refreshQueueSoon();
  } catch (e) { /* the queue view is a convenience: a failed refresh leaves the last one */ }
}
// Live progress from the server's event stream (GET /api/jobs/{id}/events); polling when
// EventSource is missing or fails (e.g. the server needs an API key, which EventSource
// cannot send).
function followJob(job) {
  const settle = (j, resolve, reject) => {
    if (j.status === "done") resolve(j);
    else reject(new Error(j.error || t(j.status, j.status)));
  };
  if (!window.EventSource || localStorage.getItem("aigc-key")) return pollJob(job.id);
  return new Promise((resolve, reject) => {
    const es = new EventSource(`/api/jobs/${job.id}/events`);
    let last = null;
    es.onmessage = (m) => {
      last = JSON.parse(m.data);
      showJob({ ...last, params: job.params });
      if (["done", "failed", "cancelled"].includes(last.status)) { es.close(); settle(last, resolve, reject); }
    };
    es.onerror = () => {  // also fired when the stream drops before a terminal state
      es.close();
      pollJob(job.id).then(resolve, reject);
    };
  });
}
async function pollJob(id) {
  for (;;) {
    const job = await api("/api/jobs/" + id);
    showJob(job);
    if (job.status === "done") return job;
    if (job.status === "failed" || job.status === "cancelled") throw new Error(job.error || t(job.status, job.status));
    await new Promise((r) => setTimeout(r, 150));
  }
}

// ------------------------------------------------------------------ text
async function sendText(ev) {
  ev.preventDefault();
  const input = $("chat-input").value.trim();
  if (!input) return;
  const mode = $("txt-mode").value;
  const log = $("chat-log");
  const common = { model: $("txt-model").value, max_tokens: num("txt-max") || 64, temperature: num("txt-temp") ?? 1,
    stream: true, seed: num("txt-seed") };
  let url, body;
  if (mode === "chat") {
    CHAT.push({ role: "user", content: input });
    log.append(el("div", { class: "msg user", text: input }));
    url = "/v1/chat/completions"; body = { ...common, messages: CHAT };
  } else {
    log.append(el("div", { class: "msg user", text: input }));
    url = "/v1/completions"; body = { ...common, prompt: input };
  }
  $("chat-input").value = "";
  const out = el("div", { class: "msg assistant" });
  const span = el("span");
  out.append(span);
  log.append(out);
  $("chat-send").disabled = true;
  try {
    const res = await api(url, { method: "POST", body: JSON.stringify(body), raw: true });
    if (!res.ok) { const b = await res.json().catch(() => ({})); throw new Error(readableError(b.error, res.statusText)); }
    const reader = res.body.getReader(), dec = new TextDecoder();
    let buf = "", text = "", usage = null, finish = null, jobId = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, i).trim(); buf = buf.slice(i + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.id) jobId = chunk.id.replace(/^(chatcmpl|cmpl)-/, "");
        const c = chunk.choices[0];
        if (!c) continue;  // a usage-only last chunk
        if (c.finish_reason) finish = c.finish_reason;
        text += mode === "chat" ? (c.delta.content || "") : c.text;
        span.textContent = text;
        if (chunk.usage) usage = chunk.usage;
        log.scrollTop = log.scrollHeight;
      }
    }
    if (mode === "chat") CHAT.push({ role: "assistant", content: text });
    // A reply that stopped at max_tokens (finish_reason "length") is marked as cut.
    if (finish === "length") out.append(el("span", { class: "cut", text: "✂ " + t("cut", EN_TEXT.cut) }));
    if (usage) out.append(el("span", { class: "usage", text: `${usage.prompt_tokens} + ${usage.completion_tokens} ${t("tokens", "tokens")} · ${$("txt-model").value}` }));
    if (jobId) out.append(copyButton(() => text, () => jobItem(jobId)));  // feedback.js
  } catch (e) {
    span.textContent = "⚠ " + e.message;
  } finally {
    $("chat-send").disabled = false;
  }
}
let CHAT = [];

// --------------------------------------------------------------- gallery
function starsWidget(item, onRated) {
  const w = el("span", { class: "stars", title: t("rating", "rating") });
  const avg = item.stars || 0;
  for (let s = 1; s <= 5; s++) {
    w.append(el("span", { class: s <= Math.round(avg) ? "on" : "", "data-star": s, text: "★",
      onclick: async (e) => {
        e.stopPropagation();
        const updated = await api(`/api/items/${item.id}/ratings`, { method: "POST", body: JSON.stringify({ stars: s }) });
        onRated(updated);
      } }));
  }
  return w;
}
function card(item, onclick) {
  const c = el("div", { class: "card", "data-id": item.id, onclick });
  if (item.kind === "image") c.append(el("img", { src: item.url, alt: `seed ${item.seed}`, loading: "lazy" }));
  else if (item.kind === "music") { c.classList.add("music"); c.append(musicPlayer(item)); }  // music.js
  else c.append(el("div", { class: "txt", text: item.text }));
  // texts from the n-gram and chat models have no seed: show none rather than "seed null"
  const seedText = item.seed === null || item.seed === undefined ? "" : `${t("seed_short", "seed")} ${item.seed}`;
  const meta = el("div", { class: "meta" }, el("span", { text: seedText }));
  const refresh = (u) => { const n = starsWidget(u, refresh); meta.lastChild.replaceWith(n); if ($("detail").dataset.id === u.id) showDetail(u.id); };
  meta.append(starsWidget(item, refresh));
  c.append(meta);
  return c;
}
let GALLERY_SEQ = 0;  // only the newest of overlapping gallery loads may render
const PAGE_SIZE = 60;
let GALLERY_SHOWN = 0;  // items shown so far: the offset of the next page
// The gallery's first page (a new filter), or with `more` the next page appended ("Load more").
async function loadGallery(ev, more = false) {
  if (ev && ev.preventDefault) ev.preventDefault();
  const seq = ++GALLERY_SEQ;
  const p = new URLSearchParams();
  if ($("f-kind").value) p.set("kind", $("f-kind").value);
  if ($("f-model").value) p.set("model", $("f-model").value);
  if ($("f-stars").value) p.set("min_stars", $("f-stars").value);
  if ($("f-q").value) p.set("q", $("f-q").value);
  const offset = more ? GALLERY_SHOWN : 0;
  // One more than a page: whether a next page exists, without a count query.
  p.set("limit", String(PAGE_SIZE + 1));
  p.set("offset", String(offset));
  const { items } = await api("/api/items?" + p);
  if (seq !== GALLERY_SEQ) return;
  const page = items.slice(0, PAGE_SIZE);
  const g = $("gallery");
  const cards = page.map((it) => card(it, () => showDetail(it.id)));
  if (more) g.append(...cards); else g.replaceChildren(...cards);
  GALLERY_SHOWN = offset + page.length;
  $("load-more").hidden = items.length <= PAGE_SIZE;
  if (!GALLERY_SHOWN) g.append(el("p", { class: "muted", text: t("no_items", "Nothing generated yet.") }));
}
async function showDetail(id) {
  const it = await api("/api/items/" + id);
  document.querySelectorAll("#gallery .card").forEach((c) => c.classList.toggle("selected", c.dataset.id === id));
  const r = it.record, d = $("detail");
  d.hidden = false; d.dataset.id = id;
  const row = (k, v) => [el("dt", { text: k }), el("dd", { text: v == null ? "—" : String(v) })];
  // Each kind shows its own settings: images their sampler, steps and guidance; music its
  // style, key, meter, bars and tempo; text its length limit and why it stopped.
  const own = it.kind === "music"
    ? [...row(t("style", "Style"), t(r.style, r.style)), ...row(t("key", "Key"), r.key), ...row(t("meter", "Meter"), r.meter),
      ...row(t("bars", "Bars"), r.bars), ...row(t("tempo", "Tempo (♩/min)"), r.tempo)]
    : it.kind === "text" ? [...row(t("max_tokens", "Max tokens"), r.max_tokens)]
    : [...row(t("sampler", "Sampler"), opts(r).sampler), ...row(t("steps", "Steps"), opts(r).steps),
      ...row(t("guidance", "Guidance"), opts(r).guidance)];
  const temperature = it.kind === "image" ? opts(r).temperature : r.temperature;
  const dl = el("dl", {}, ...row(t("model", "Model"), it.model), ...row(t("model_hash", "Model hash"), it.model_sha256),
    ...row(t("seed", "Seed"), it.seed), ...(it.kind === "music" ? [] : row(t("prompt", "Prompt"), it.prompt)),
    ...own, ...row(t("temperature", "Temperature"), temperature),
    ...row(t("rating", "Rating"), it.stars ? `${it.stars.toFixed(1)} (${it.n_ratings})` : "—"),
    ...row("A/B", `${it.wins}/${it.comparisons}`));
  const card_ = it.metric_card ? el("pre", { class: "card-json", text: JSON.stringify(it.metric_card, null, 1) })
    : el("p", { class: "muted", text: t("no_card", "This model has no metric card.") });
  const music = it.kind === "music";  // music.js draws its player, facts and regenerate
  d.replaceChildren(...[  // (nulls filtered: replaceChildren would print them as "null")
    it.kind === "image" ? el("img", { src: it.url, alt: "" }) : music ? musicPlayer(it) : el("pre", { text: it.text }),
    it.kind === "text" && r.finish_reason === "length" ? el("p", { class: "cut", text: "✂ " + t("cut", EN_TEXT.cut) }) : null,
    starsWidget(it, () => { showDetail(id); loadGallery(); }), music ? musicFacts(it) : null, dl,
    itemActions(it),  // feedback.js: download, copy, flag
    it.kind === "image" ? el("button", { id: "regen", class: "primary", text: t("regenerate", "Regenerate with this seed"), onclick: () => regenerate(it) }) : null,
    music ? el("button", { id: "regen", class: "primary", text: t("regenerate", "Regenerate with this seed"), onclick: () => regenerateMusic(it) }) : null,
    el("h4", { text: t("metric_card", "Model metric card") }), card_,
    el("details", {}, el("summary", { text: t("record", "Full record") }), el("pre", { text: JSON.stringify(r, null, 1) }))].filter((x) => x != null));
}
// The sampling options of a record: under "options" (format 2), at the top level before.
const opts = (r) => r.options || r;
function regenerate(it) {
  const r = opts(it.record);
  signal(it.id, "regenerate");  // feedback.js
  showTab("image");
  $("img-model").value = it.model; onImageModel();
  $("img-seed").value = it.seed; $("img-n").value = 1;
  $("img-prompt").value = it.prompt || "";
  onCondition();
  $("img-temp").value = r.temperature ?? 1;
  if (r.steps) $("img-steps").value = r.steps;
  if (r.guidance != null) $("img-guidance").value = r.guidance;
  if (r.sampler) $("img-sampler").value = r.sampler;
  if (it.record.label != null) $("img-class").value = it.record.label;
  generateImages();
}

// --------------------------------------------------------------- compare
let PAIR = [];
async function loadPair() {
  PAIR = (await api("/api/comparisons/pair?kind=image")).items;
  const box = $("pair");
  if (PAIR.length < 2) { box.replaceChildren(el("p", { class: "muted", text: t("need_two", "Generate at least two items first.") })); return; }
  box.replaceChildren(...PAIR.map((it, i) => el("figure", {}, el("img", { src: it.url, alt: "" }), el("figcaption", { text: `${"AB"[i]} · ${t("seed_short", "seed")} ${it.seed}` }))));
}
async function pick(winner) {
  if (PAIR.length < 2) return;
  await api("/api/comparisons", { method: "POST", body: JSON.stringify({ a: PAIR[0].id, b: PAIR[1].id, winner }) });
  $("compare-status").textContent = t("thanks", "Recorded, thank you!");
  loadPair();
}

// After a language change: redraw what was drawn from data (the open tab, the open item).
function relabel() {
  const active = document.querySelector("nav button.active");
  if (active && ["gallery", "compare", "feedback"].includes(active.dataset.tab)) showTab(active.dataset.tab);
  if (!$("detail").hidden && $("detail").dataset.id) showDetail($("detail").dataset.id);
  refreshQueue();
}

// ------------------------------------------------------------------ boot
document.addEventListener("DOMContentLoaded", async () => {
  applyLang();
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  $("lang").addEventListener("change", () => { lang = $("lang").value; localStorage.setItem("aigc-lang", lang); applyLang(); onTextModel(); imageHints(); relabel(); });
  $("savekey").addEventListener("click", () => { localStorage.setItem("aigc-key", $("apikey").value); location.reload(); });
  $("image-form").addEventListener("submit", generateImages);
  $("img-model").addEventListener("change", onImageModel);
  $("img-prompt").addEventListener("input", onCondition);
  $("cancel-job").addEventListener("click", () => cancelJob($("cancel-job").dataset.job));
  $("load-more").addEventListener("click", () => loadGallery(null, true));
  $("txt-model").addEventListener("change", onTextModel);
  $("chat-form").addEventListener("submit", sendText);
  $("chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); } });
  $("chat-clear").addEventListener("click", () => { CHAT = []; $("chat-log").replaceChildren(); });
  $("filters").addEventListener("submit", loadGallery);
  $("pick-a").addEventListener("click", () => pick("a"));
  $("pick-b").addEventListener("click", () => pick("b"));
  $("pick-tie").addEventListener("click", () => pick("tie"));
  try { await loadModels(); } catch (e) { $("img-model-info").textContent = "⚠ " + e.message; }
  const tab = location.hash.slice(1);
  if (["image", "text", "music", "gallery", "compare", "feedback"].includes(tab)) showTab(tab);
});
