// The Assistant tab (issue 13): ask the knowledge base, see the sources ([n] opens the source
// and section), see when a question was handed off to a person and their answer when it comes,
// speak a question (microphone -> WAV in the browser, or a WAV file) and hear the answer. The
// handoff queue below lets a person answer and approve. Loaded after app.js and uses its
// helpers ($, el, api, t, EN_TEXT, I18N, readableError).
"use strict";
(() => {
  Object.assign(I18N.zh, {
    tab_assistant: "客服助手", asst_ask: "提问", asst_placeholder: "向知识库提问……",
    asst_record: "● 录音", asst_listen: "▶ 朗读", asst_stop: "■ 停止", asst_upload: "上传 WAV", asst_speak: "朗读回答",
    asst_voice: "声音", asst_voice_auto: "自动（按语言）", asst_sources: "来源",
    asst_handed_off: "已转人工（#{0}），请稍候，回复会显示在这里。", asst_person: "人工客服 {0}",
    asst_queue: "人工处理队列", asst_queue_help: "助手无法回答的问题。回答后会发回给提问者；批准后加入知识库。",
    asst_answer: "回答", asst_approve: "批准并加入知识库", asst_no_handoffs: "队列为空。",
    asst_status_open: "待处理", asst_status_answered: "已回答", asst_status_approved: "已批准",
    asst_status_rejected: "已拒绝", asst_not_served: "此服务器未提供助手：用 --assistant-index DIR 启动。",
    asst_listening: "录音中……再按一次停止。", asst_transcribing: "识别中……", asst_thinking: "思考中……",
    asst_new: "新对话", asst_asr_en_only: "语音识别只支持英语（没有离线中文模型）。",
    asst_confidence: "检索置信度", asst_section: "章节", asst_no_mic: "无法使用麦克风：{0}",
    err_assistant_not_served: "此服务器未提供助手。", err_bad_audio: "音频无法使用。",
    err_conversation_not_found: "找不到该对话。", err_handoff_not_found: "找不到该转人工请求。",
    err_handoff_state: "该请求当前状态不允许此操作。", err_unsupported_language: "该语言没有语音识别模型。",
  });
  Object.assign(EN_TEXT, {
    asst_record: "● Record", asst_listen: "▶ Listen", asst_stop: "■ Stop", asst_voice_auto: "auto (by language)",
    asst_handed_off: "Handed off to a person (#{0}); their answer will appear here.",
    asst_person: "person {0}", asst_no_handoffs: "The queue is empty.", asst_status_open: "open",
    asst_status_answered: "answered", asst_status_approved: "approved", asst_status_rejected: "rejected",
    asst_not_served: "This server does not serve the assistant: start it with --assistant-index DIR.",
    asst_listening: "Recording… press again to stop.", asst_transcribing: "Recognising…",
    asst_thinking: "Thinking…", asst_asr_en_only: "Speech recognition is English only (no offline Chinese model).",
    asst_confidence: "retrieval confidence", asst_section: "section", asst_no_mic: "No microphone: {0}",
  });

  const S = { conversation: null, seen: 0, poll: null, recorder: null, info: null, citations: {} };

  // ----------------------------------------------------------------- audio -> WAV
  // Decode whatever the browser recorded, mix to mono, resample to 16 kHz (OfflineAudioContext
  // filters as it resamples) and write 16-bit PCM WAV: the server takes WAV only.
  async function toWav16k(blob) {
    // an offline context decodes without an audio device (decodeAudioData resamples to its rate)
    const decoded = await new OfflineAudioContext(1, 1, 48000).decodeAudioData(await blob.arrayBuffer());
    const rate = 16000, frames = Math.ceil(decoded.duration * rate);
    const off = new OfflineAudioContext(1, frames, rate);
    const src = off.createBufferSource();
    src.buffer = decoded;
    src.connect(off.destination);  // channels are mixed down to the context's one
    src.start();
    const x = (await off.startRendering()).getChannelData(0);
    const buf = new ArrayBuffer(44 + 2 * x.length), v = new DataView(buf);
    const str = (o, s) => [...s].forEach((c, i) => v.setUint8(o + i, c.charCodeAt(0)));
    str(0, "RIFF"); v.setUint32(4, 36 + 2 * x.length, true); str(8, "WAVE"); str(12, "fmt ");
    v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
    v.setUint32(24, rate, true); v.setUint32(28, 2 * rate, true); v.setUint16(32, 2, true);
    v.setUint16(34, 16, true); str(36, "data"); v.setUint32(40, 2 * x.length, true);
    for (let i = 0; i < x.length; i++) v.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, x[i])) * 32767, true);
    return new Blob([buf], { type: "audio/wav" });
  }

  window.aigcAssistant = { toWav16k };  // for the browser test

  async function transcribe(wav) {
    status(t("asst_transcribing", "Recognising…"));
    const res = await api("/api/assistant/transcribe", { method: "POST", body: wav, raw: true,
      headers: { "Content-Type": "audio/wav" } });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(readableError(body.error, res.statusText));
    status("");
    $("asst-input").value = body.text;
    if (body.text) $("asst-form").requestSubmit();
  }

  async function record() {
    const b = $("asst-record");
    if (S.recorder) { S.recorder.stop(); return; }
    let stream;
    try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch (e) {
      status(tf("asst_no_mic", e.message)); return;
    }
    const chunks = [];
    S.recorder = new MediaRecorder(stream);
    S.recorder.ondataavailable = (e) => chunks.push(e.data);
    S.recorder.onstop = async () => {
      stream.getTracks().forEach((tr) => tr.stop());
      S.recorder = null;
      b.textContent = t("asst_record", "● Record");
      try { await transcribe(await toWav16k(new Blob(chunks, { type: chunks[0]?.type }))); } catch (e) { status("⚠ " + e.message); }
    };
    S.recorder.start();
    b.textContent = t("asst_stop", "■ Stop");
    status(t("asst_listening", "Recording… press again to stop."));
  }

  async function speak(text) {
    const voice = $("asst-voice").value;
    const plain = text.replace(/\[\d{1,2}\]/g, "");
    const res = await api("/api/assistant/speak", { method: "POST", raw: true,
      body: JSON.stringify(voice ? { text: plain.slice(0, 2000), voice } : { text: plain.slice(0, 2000) }) });
    if (!res.ok) { const b = await res.json().catch(() => ({})); throw new Error(readableError(b.error, res.statusText)); }
    const audio = $("asst-audio");
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(await res.blob());
    audio.hidden = false;
    await audio.play().catch(() => {});  // autoplay may be refused; the player is shown
  }

  // -------------------------------------------------------------------- chat
  function status(text) { $("asst-status").textContent = text; }

  function showSource(c) {
    const box = $("asst-source");
    box.hidden = false;
    box.replaceChildren(
      el("h4", { text: `[${c.n}] ${c.source}` }),
      el("p", { class: "muted", text: `${t("asst_section", "section")}: ${c.section || "—"}` }),
      el("blockquote", { text: c.snippet + (c.snippet.length >= 200 ? "…" : "") }));
  }

  // The answer text with each [n] a link to its citation.
  function linked(text, citations) {
    const byN = Object.fromEntries(citations.map((c) => [String(c.n), c]));
    const out = el("span", { class: "answer" });
    for (const part of text.split(/(\[\d{1,2}\])/)) {
      const m = part.match(/^\[(\d{1,2})\]$/);
      if (m && byN[m[1]]) out.append(el("a", { href: "#", class: "cite", text: part,
        onclick: (e) => { e.preventDefault(); showSource(byN[m[1]]); } }));
      else out.append(part);
    }
    return out;
  }

  function addMessage(m, extra = {}) {
    const who = m.role === "user" ? "user" : "assistant";
    const box = el("div", { class: `msg ${who}` + (m.author && m.author !== "assistant" && who === "assistant" ? " person" : "") });
    if (who === "assistant" && m.author && m.author !== "assistant") {
      box.append(el("span", { class: "usage", text: tf("asst_person", m.author) }));
    }
    box.append(who === "assistant" ? linked(m.content, m.citations || []) : m.content);
    if ((m.citations || []).length) {
      box.append(el("div", { class: "sources" }, el("span", { class: "usage", text: t("asst_sources", "Sources") + ":" }),
        ...m.citations.map((c) => el("button", { type: "button", class: "cite",
          text: `[${c.n}] ${c.source}${c.section ? " › " + c.section : ""}`, onclick: () => showSource(c) }))));
    }
    if (extra.handoff != null) box.append(el("span", { class: "handoff", text: tf("asst_handed_off", extra.handoff) }));
    if (extra.confidence != null) box.append(el("span", { class: "usage", text: `${t("asst_confidence", "retrieval confidence")} ${extra.confidence.toFixed(2)}` }));
    if (who === "assistant") box.append(el("button", { type: "button", class: "copy", text: t("asst_listen", "▶ Listen"),
      onclick: () => speak(m.content).catch((e) => status("⚠ " + e.message)) }));
    $("asst-log").append(box);
    $("asst-log").scrollTop = $("asst-log").scrollHeight;
  }

  async function ask(e) {
    e.preventDefault();
    const question = $("asst-input").value.trim();
    if (!question) return;
    $("asst-send").disabled = true;
    status(t("asst_thinking", "Thinking…"));
    addMessage({ role: "user", content: question });
    try {
      const body = { question };
      if (S.conversation) body.conversation_id = S.conversation;
      const a = await api("/api/assistant/ask", { method: "POST", body: JSON.stringify(body) });
      S.conversation = a.conversation_id;
      S.seen += 2;
      $("asst-input").value = "";
      addMessage({ role: "assistant", content: a.answer, citations: a.citations },
        { handoff: a.handed_off ? a.handoff_id : null, confidence: a.confidence });
      status("");
      if (a.handed_off) { watch(); loadQueue(); }
      if ($("asst-autospeak").checked) await speak(a.answer);
    } catch (err) { status("⚠ " + err.message); }
    $("asst-send").disabled = false;
  }

  // A handed-off question: poll the conversation until a person's answer arrives.
  function watch() {
    if (S.poll) return;
    S.poll = setInterval(async () => {
      if (!S.conversation || $("page-assistant").hidden) return;
      try {
        const conv = await api(`/api/assistant/conversations/${S.conversation}`);
        for (const m of conv.messages.slice(S.seen)) addMessage(m);
        S.seen = conv.messages.length;
      } catch (err) { /* shown on the next action */ }
    }, 4000);
  }

  // ------------------------------------------------------------------- queue
  async function loadQueue() {
    const list = $("asst-queue");
    let rows;
    try { rows = (await api("/api/assistant/handoffs")).data; } catch (e) { list.replaceChildren(el("li", { class: "muted", text: e.message })); return; }
    rows = rows.filter((h) => h.status === "open" || h.status === "answered").reverse();
    if (!rows.length) { list.replaceChildren(el("li", { class: "muted", text: t("asst_no_handoffs", "The queue is empty.") })); return; }
    list.replaceChildren(...rows.map((h) => {
      const text = el("textarea", { rows: "2", maxlength: "20000" });
      text.value = h.answer || "";
      const out = el("span", { class: "muted" });
      const act = (path, body) => api(`/api/assistant/handoffs/${h.id}/${path}`, { method: "POST", body: JSON.stringify(body || {}) })
        .then(loadQueue).catch((e) => { out.textContent = "⚠ " + e.message; });
      const approve = el("button", { type: "button", text: t("asst_approve", "Approve into the knowledge base"), onclick: () => act("approve") });
      approve.disabled = h.status !== "answered";
      return el("li", { id: `handoff-${h.id}`, class: "handoff-item" },
        el("div", {}, el("b", { text: `#${h.id} ` }), el("span", { class: `badge ${h.status}`, text: t("asst_status_" + h.status, h.status) }),
          " ", el("span", { text: h.question })),
        el("p", { class: "muted", text: h.reason }),
        text,
        el("div", { class: "actions" },
          el("button", { type: "button", class: "primary", text: t("asst_answer", "Answer"), onclick: () => act("answer", { text: text.value }) }),
          approve, out));
    }));
  }

  function placeholder() { $("asst-input").placeholder = t("asst_placeholder", "Ask the knowledge base…"); }

  async function show() {
    placeholder();
    try { S.info = await api("/api/assistant"); } catch (e) { status("⚠ " + e.message); return; }
    const i = S.info;
    $("asst-info").textContent = i.enabled
      ? `${i.index} · ${i.chunks} passages · ${i.asr || "no speech recognition"} · ${i.note}`
      : t("asst_not_served", "This server does not serve the assistant: start it with --assistant-index DIR.");
    if (lang === "zh") $("asst-info").textContent += " " + t("asst_asr_en_only", "");
    $("asst-voice").replaceChildren(el("option", { value: "", text: t("asst_voice_auto", "auto (by language)") }),
      ...i.voices.filter((v) => /^(en|cmn|yue|zh)/.test(v.language)).map((v) => el("option", { value: v.id, text: `${v.id} (${v.description})` })));
    $("asst-record").disabled = !i.asr || !window.MediaRecorder;
    $("asst-file").disabled = !i.asr;
    $("asst-send").disabled = !i.enabled;
    if (i.enabled) loadQueue();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("tab-assistant").addEventListener("click", show);
    $("asst-form").addEventListener("submit", ask);
    $("asst-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("asst-form").requestSubmit(); } });
    $("asst-record").addEventListener("click", record);
    $("asst-file").addEventListener("change", async () => {
      const f = $("asst-file").files[0];
      $("asst-file").value = "";
      if (f) await transcribe(f).catch((e) => status("⚠ " + e.message));
    });
    $("asst-new").addEventListener("click", () => { S.conversation = null; S.seen = 0; $("asst-log").replaceChildren(); $("asst-source").hidden = true; });
    $("asst-refresh").addEventListener("click", loadQueue);
    $("lang").addEventListener("change", () => { placeholder(); if (!$("page-assistant").hidden) show(); });
    if (location.hash === "#assistant") { showTab("assistant"); show(); }
  });
})();
