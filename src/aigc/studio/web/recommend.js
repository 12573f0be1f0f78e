// aigc studio, "For you" (issue 14): the items GET /api/recommendations ranks for this browser's
// rater id (or the API key's owner), and settings to try, at the top of the gallery.
// Loaded after app.js and uses its helpers ($, el, api, t, card, showTab, showDetail).
"use strict";

Object.assign(I18N.zh, {
  for_you: "为你推荐", for_you_cold: "你还没有评分：先看看大家最喜欢的。", for_you_few: "你的评分还不多：这里是大家最喜欢的，加上和你喜欢的相近的。",
  for_you_none: "还没有可以推荐的作品。", try_settings: "试试这些设置：", try_it: "试试",
  why_pop: "大家喜欢", why_cf: "口味相近的人喜欢", why_content: "像你喜欢的作品",
});
Object.assign(EN_TEXT, {
  for_you: "For you", for_you_cold: "You have not rated anything yet: these are what everyone liked most.", for_you_few: "You have rated only a few items: these are what everyone liked most, and what is close to what you liked.",
  for_you_none: "Nothing to recommend yet.", try_settings: "Settings to try:", try_it: "Try",
  why_pop: "liked by many", why_cf: "liked by people with your taste", why_content: "like what you liked",
});

// The largest of the three parts of an item's score, in words.
function whyRecommended(r) {
  const parts = [["why_pop", r.popularity], ["why_cf", r.collaborative], ["why_content", r.content]];
  parts.sort((a, b) => b[1] - a[1]);
  return t(parts[0][0]);
}

// Fill the form of the setting's tab (the person still presses Generate).
function trySetting(s) {
  showTab(s.kind);
  if (s.kind === "image") {
    $("img-model").value = s.model;
    onImageModel();
    if (s.label !== null && $("img-class")) $("img-class").value = String(s.label);
  } else if (s.kind === "text" && s.prompt) {
    $("chat-input").value = s.prompt;
  } else if (s.kind === "music") {
    for (const [id, v] of [["mus-style", s.style], ["mus-key", s.key], ["mus-meter", s.meter]]) {
      if (v && [...$(id).options].some((o) => o.value === v)) $(id).value = v;
    }
  }
}

function settingLabel(s) {
  const what = s.class_name ?? s.prompt ?? (s.style ? `${s.style}, ${s.key}, ${s.meter}` : "");
  return `${s.model}: ${what}`;
}

let FOR_YOU_SEQ = 0;
async function loadForYou() {
  const box = $("for-you");
  if (!box) return;
  const seq = ++FOR_YOU_SEQ;
  let rec;
  try {
    rec = await api("/api/recommendations?k=8");
  } catch (e) {
    box.replaceChildren(el("p", { class: "muted", text: "⚠ " + e.message }));
    return;
  }
  if (seq !== FOR_YOU_SEQ) return;
  const head = el("h3", { text: t("for_you") });
  if (!rec.items.length) { box.replaceChildren(head, el("p", { class: "muted", text: t("for_you_none") })); return; }
  const cards = rec.items.map((r) => {
    const c = card(r.item, () => showDetail(r.item.id));
    c.append(el("div", { class: "muted why", text: whyRecommended(r) }));
    return c;
  });
  const parts = [head];
  if (rec.strategy === "cold_start") {
    parts.push(el("p", { class: "muted", text: t(rec.n_signals > 0 ? "for_you_few" : "for_you_cold") }));
  }
  parts.push(el("div", { class: "gallery for-you" }, ...cards));
  if (rec.settings.length) {
    parts.push(el("p", { class: "muted", text: t("try_settings") },
      ...rec.settings.map((s) => el("button", { type: "button", class: "try", text: `${t("try_it")} ${settingLabel(s)}`,
        onclick: () => trySetting(s) }))));
  }
  box.replaceChildren(...parts);
}
