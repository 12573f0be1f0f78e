// aigc studio, music page: compose with a music GPT, play the WAV beside its piano roll.
// Loaded after app.js and uses its helpers ($, el, api, t, num, MODELS, showTab, starsWidget).
"use strict";

Object.assign(I18N.zh, {
  tab_music: "音乐", music: "音乐", style: "风格", chorale: "众赞歌（四声部）", folk: "民歌（单声部）",
  key: "调性", meter: "拍号", bars: "小节数", bars_unit: "小节", tempo: "速度（每分钟四分音符）", compose: "作曲",
  download_midi: "下载 MIDI", piano_roll: "钢琴卷帘", notes: "音符", no_music_model: "没有加载音乐模型。",
});

// ---------------------------------------------------------------- models
function musicModels() {
  const ms = MODELS.filter((m) => m.kind === "music");
  $("mus-model").replaceChildren(...ms.map((m) => el("option", { value: m.id, text: m.id })));
  $("mus-button").disabled = !ms.length;
  if (!ms.length) { $("mus-model-info").textContent = t("no_music_model", "No music model loaded."); return; }
  onMusicModel();
}
function onMusicModel() {
  const m = MODELS.find((x) => x.id === $("mus-model").value);
  if (!m) return;
  const d = m.details;
  const keep = (id, values) => {  // refill a select, keeping its choice when still offered
    const old = $(id).value;
    $(id).replaceChildren(...values.map((v) => el("option", { value: v, text: v })));
    if (values.includes(old)) $(id).value = old;
  };
  keep("mus-key", d.keys || ["C major"]);
  keep("mus-meter", d.meters || ["4/4"]);
  $("mus-model-info").textContent = `${d.family} · ${d.data} · ${t("trained_step", "step")} ${d.step} · ${d.sha256.slice(0, 12)} · ${d.synth} ${d.sample_rate / 1000} kHz`;
}

// ---------------------------------------------------------------- player
// The WAV in an <audio> element beside its piano roll; a playhead follows the audio over the
// roll (x = x0 + t * px_per_second, from the item's record).
function musicPlayer(item) {
  const r = item.record, files = item.files || {};
  const img = el("img", { src: files.png, alt: t("piano_roll", "Piano roll"), loading: "lazy" });
  const head = el("div", { class: "playhead" });
  const inner = el("div", { class: "roll-inner" }, img, head);
  const roll = el("div", { class: "roll" }, inner);
  const audio = el("audio", { controls: "", preload: "metadata", src: files.wav || item.url });
  audio.addEventListener("click", (e) => e.stopPropagation());  // do not open the card
  const geo = r.piano_roll;
  const place = () => {
    if (!geo) return;
    const x = geo.x0 + audio.currentTime * geo.px_per_second;
    head.style.left = (100 * Math.min(x, geo.width) / geo.width).toFixed(2) + "%";
    const px = x * inner.clientWidth / geo.width;  // keep the playhead in view when scrolling
    if (px > roll.scrollLeft + roll.clientWidth - 20 || px < roll.scrollLeft) roll.scrollLeft = Math.max(0, px - 40);
  };
  let raf = 0;
  const tick = () => { place(); if (!audio.paused) raf = requestAnimationFrame(tick); };
  audio.addEventListener("play", () => { cancelAnimationFrame(raf); head.hidden = false; tick(); });
  audio.addEventListener("timeupdate", place);
  audio.addEventListener("seeked", place);
  head.hidden = true;
  const links = el("div", { class: "links" },
    el("a", { href: files.mid, download: `aigc-${r.style}-seed${item.seed}.mid`, text: t("download_midi", "Download MIDI"),
      onclick: (e) => { e.stopPropagation(); signal(item.id, "download"); } }));  // feedback.js
  return el("div", { class: "player" }, audio, roll, links);
}
function musicFacts(item) {
  const r = item.record;
  return el("p", { class: "facts", text: `${t(r.style, r.style)} · ${r.key} · ${r.meter} · ${r.bars} ${t("bars_unit", "bars")} · ` +
    `${r.notes} ${t("notes", "notes")} · ${r.seconds.toFixed(1)} s · ♩=${r.tempo} · T=${r.temperature} · seed ${item.seed}` });
}

// --------------------------------------------------------------- compose
async function composeMusic(ev) {
  if (ev) ev.preventDefault();
  const body = { kind: "music", model: $("mus-model").value, style: $("mus-style").value, key: $("mus-key").value,
    meter: $("mus-meter").value, bars: num("mus-bars") || 8, tempo: num("mus-tempo") || 90, seed: num("mus-seed"),
    temperature: num("mus-temp") ?? 1 };
  $("mus-button").disabled = true;
  $("mus-progress").style.width = "0";
  try {
    const job = await api("/api/jobs", { method: "POST", body: JSON.stringify(body) });
    const done = await followMusicJob(job.id);
    const items = await Promise.all(done.items.map((id) => api("/api/items/" + id)));
    $("mus-results").replaceChildren(...items.map(pieceView));
  } catch (e) {
    $("mus-status").textContent = "⚠ " + e.message;
  } finally {
    $("mus-button").disabled = false;
    $("mus-cancel").hidden = true;
  }
}
async function followMusicJob(id) {
  for (;;) {
    const job = await api("/api/jobs/" + id);
    $("mus-progress").style.width = Math.round(job.progress * 100) + "%";
    $("mus-status").textContent = jobLine(job);  // app.js: status, id, seed, ETA in the page's language
    const live = job.status === "queued" || job.status === "running";
    $("mus-cancel").hidden = !live;
    $("mus-cancel").dataset.job = live ? id : "";
    if (job.status === "done") return job;
    if (job.status === "failed" || job.status === "cancelled") throw new Error(job.error || t(job.status, job.status));
    await new Promise((r) => setTimeout(r, 150));
  }
}
function pieceView(item) {
  const box = el("div", { class: "piece panel", "data-id": item.id });
  const side = el("div", { class: "side" });
  const fill = (it) => side.replaceChildren(musicFacts(it), starsWidget(it, fill),
    el("button", { class: "regen", text: t("regenerate", "Regenerate with this seed"), onclick: () => regenerateMusic(it) }));
  fill(item);
  box.append(side, musicPlayer(item));
  return box;
}
function regenerateMusic(it) {
  const r = it.record;
  signal(it.id, "regenerate");  // feedback.js
  showTab("music");
  $("mus-model").value = it.model; onMusicModel();
  $("mus-style").value = r.style; $("mus-key").value = r.key; $("mus-meter").value = r.meter;
  $("mus-bars").value = r.bars; $("mus-tempo").value = r.tempo; $("mus-temp").value = r.temperature;
  $("mus-seed").value = it.seed;
  composeMusic();
}

document.addEventListener("DOMContentLoaded", () => {
  $("music-form").addEventListener("submit", composeMusic);
  $("mus-model").addEventListener("change", onMusicModel);
  $("lang").addEventListener("change", onMusicModel);  // the model line in the new language
  $("mus-cancel").addEventListener("click", async () => {
    const id = $("mus-cancel").dataset.job;
    if (id) await api(`/api/jobs/${id}/cancel`, { method: "POST" }).catch((e) => { $("mus-status").textContent = "⚠ " + e.message; });
  });
});
