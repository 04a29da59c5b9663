// dopanode admin page: reads the JSON API with the token kept in this tab's sessionStorage.
// Every value from the API is put in the page as text (never as HTML).
"use strict";

const TOKEN_KEY = "dopanode.api_token";
const REFRESH_MS = 15000;
const LEVELS = ["normal", "borderline", "moderate", "strong", "almost missing"];
const REGIONS = [["caudate_left", "caud L"], ["caudate_right", "caud R"],
                 ["putamen_left", "put L"], ["putamen_right", "put R"]];
let pictures = new Map();  // "job:finished_at" -> blob URL, kept while the study is listed
let timer = null;

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

class ApiError extends Error {
  constructor(status, detail) { super(`${status}: ${detail}`); this.status = status; this.detail = detail; }
}

async function api(path, options) {
  const headers = {Accept: "application/json"};
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, {...options, headers, cache: "no-store"});
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok && !(path === "/ready" && response.status === 503 && body && body.checks)) {
    throw new ApiError(response.status, (body && body.detail) || response.statusText);
  }
  return body;
}

function showError(text) { const box = $("error"); box.textContent = text; box.hidden = !text; }
function showNotice(text) { const box = $("notice"); box.textContent = text; box.hidden = !text; }

function uid(value) {
  if (!value) return el("span", {class: "muted"}, "–");
  if ($("full-uids").checked || value.length <= 16) return el("span", {class: "uid"}, value);
  return el("span", {class: "uid"}, "…" + value.slice(-12));
}

function when(seconds) {
  if (!seconds) return el("span", {class: "muted"}, "–");
  const date = new Date(seconds * 1000);
  const ago = Math.max(0, (Date.now() - date.getTime()) / 1000);
  const text = ago < 90 ? `${Math.round(ago)} s ago` : ago < 5400 ? `${Math.round(ago / 60)} min ago`
    : ago < 172800 ? `${Math.round(ago / 3600)} h ago` : date.toISOString().slice(0, 16).replace("T", " ");
  return el("span", {title: date.toISOString()}, text);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 90 ? `${Math.round(seconds)} s` : seconds < 5400 ? `${Math.round(seconds / 60)} min`
    : `${(seconds / 3600).toFixed(1)} h`;
}

function badge(text, kind) { return el("span", {class: "badge " + kind}, text); }

const STATE_KIND = {done: "ok", sent: "ok", routed: "ok", failed: "bad", pending: "info",
                    running: "warn", receiving: "info", superseded: "info", ignored: "warn"};

function table(headers, rows, empty) {
  if (!rows.length) return el("p", {class: "muted"}, empty);
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map(h => el("th", {class: h.endsWith("#") ? "num" : null}, h.replace(/#$/, ""))))),
    el("tbody", {}, rows));
}

function num(n) { return el("td", {class: n ? "num" : "num zero"}, n); }

// --- sections ---------------------------------------------------------------
async function loadHealth() {
  const health = await api("/health");
  const ready = await api("/ready");
  const rows = Object.entries(ready.checks).map(([name, check]) => el("tr", {},
    el("td", {}, name), el("td", {}, badge(check.ok ? "ok" : "failing", check.ok ? "ok" : "bad")),
    el("td", {}, check.detail)));
  $("health").replaceChildren(
    el("p", {}, "Process ", badge(health.status, health.status === "ok" ? "ok" : "bad"),
       " version ", el("code", {}, health.version), "   readiness ",
       badge(ready.status === "ready" ? "ready" : "not ready", ready.status === "ready" ? "ok" : "bad")),
    table(["check", "state", "detail"], rows, "no checks"));
}

async function loadQueue() {
  const queue = await api("/api/queue");
  const rows = Object.entries(queue.jobs).map(([pipeline, counts]) => el("tr", {},
    el("td", {}, pipeline), queue.states.map(s => num(counts[s]))));
  const series = Object.entries(queue.series).map(([state, n]) => `${state} ${n}`).join(" · ");
  $("queue").replaceChildren(
    table(["pipeline", ...queue.states.map(s => s + "#")], rows, "no jobs yet"),
    el("p", {class: "muted"}, "series: " + (series || "none")));
}

async function loadOutbox() {
  const data = await api("/api/outbox");
  const rows = data.destinations.map(d => el("tr", {},
    el("td", {}, d.destination), num(d.counts.pending), num(d.counts.sent), num(d.counts.failed),
    el("td", {}, age(d.oldest_pending_age_s)), el("td", {}, when(d.last_sent_at)),
    el("td", {}, d.last_error || el("span", {class: "muted"}, "–"))));
  $("outbox").replaceChildren(table(
    ["destination", "pending#", "sent#", "failed#", "oldest pending", "last sent", "last error"],
    rows, "no destinations configured"));
}

async function retry(job, button) {
  button.disabled = true;
  try {
    const answer = await api(`/api/jobs/${job.id}/retry`, {method: "POST"});
    showNotice(`Job ${job.id} (${job.pipeline}) queued again: ${answer.state}.`);
  } catch (err) {
    showError(`Retry of job ${job.id} refused: ${err.message}`);
  }
  await refresh();
}

async function loadFailed() {
  const data = await api("/api/jobs?state=failed&limit=50");
  const rows = data.jobs.map(job => {
    const button = el("button", {type: "button", class: "retry", "data-job": job.id}, "Retry");
    button.addEventListener("click", () => retry(job, button));
    return el("tr", {"data-job": job.id},
      el("td", {class: "num"}, job.id), el("td", {}, job.pipeline), el("td", {}, uid(job.series_uid)),
      el("td", {}, el("code", {}, job.reason_code || "–")), el("td", {}, job.reason || "–"),
      el("td", {class: "num"}, `${job.attempts}/${job.max_attempts}`), el("td", {}, when(job.finished_at)),
      el("td", {}, button));
  });
  $("failed").replaceChildren(table(
    ["job#", "pipeline", "series", "code", "reason", "attempts#", "failed", ""], rows, "no failed jobs"));
}

function verdict(job) {
  const g = job.result && job.result.global;
  if (job.state !== "done") {
    return el("span", {}, badge(job.state, STATE_KIND[job.state] || "info"),
              job.reason ? el("span", {class: "muted"}, " " + job.reason) : null);
  }
  if (!g) return badge("done", "ok");
  return el("span", {class: "verdict"}, badge(g.reduced ? "reduced" : "normal", g.reduced ? "bad" : "ok"),
            g.inconclusive ? [" ", badge("inconclusive", "warn")] : null);
}

function regions(result) {
  const r = result && result.regions;
  if (!r || Array.isArray(r)) return el("span", {class: "muted"}, "–");
  return el("table", {class: "regions"}, el("tbody", {},
    el("tr", {}, REGIONS.map(([, label]) => el("th", {}, label))),
    el("tr", {}, REGIONS.map(([key]) => {
      const region = r[key] || {};
      const sbr = typeof region.sbr === "number" ? region.sbr.toFixed(2) : "–";
      return el("td", {class: "level-" + region.level, title: LEVELS[region.level] || ""},
                `${region.level ?? "–"} · ${sbr}`);
    }))));
}

async function pictureUrl(job, kept) {
  const key = `${job.id}:${job.finished_at}`;
  let url = pictures.get(key);
  if (!url) {
    const headers = token() ? {Authorization: "Bearer " + token()} : {};
    const response = await fetch(job.picture, {headers, cache: "no-store"});
    if (!response.ok) throw new ApiError(response.status, "picture report");
    url = URL.createObjectURL(await response.blob());
  }
  kept.set(key, url);
  return url;
}

async function thumbnail(job, kept) {
  let url;
  try { url = await pictureUrl(job, kept); } catch (err) {
    return el("span", {class: "muted"}, `picture ${err.status || "?"}`);
  }
  const img = el("img", {class: "thumb", src: url, alt: "picture report"});
  img.addEventListener("click", () => { $("picture-full").src = url; $("picture-dialog").showModal(); });
  return img;
}

async function loadStudies() {
  const data = await api("/api/studies?limit=20");
  const kept = new Map();
  const withNames = data.studies.some(s => "patient_name" in s);
  const rows = [];
  for (const study of data.studies) {
    for (const [i, job] of study.jobs.entries()) {
      const picture = job.picture ? await thumbnail(job, kept) : el("span", {class: "muted"}, "–");
      rows.push(el("tr", {"data-job": job.id},
        el("td", {}, i === 0 ? uid(study.study_uid) : ""),
        withNames ? el("td", {}, i === 0 ? (study.patient_name || "–") : "") : null,
        el("td", {}, job.pipeline), el("td", {class: "num"}, job.id), el("td", {}, verdict(job)),
        el("td", {}, regions(job.result)), el("td", {}, when(job.finished_at)), el("td", {}, picture)));
    }
  }
  const headers = ["study", ...(withNames ? ["patient"] : []), "pipeline", "job#", "verdict",
                   "level · SBR", "finished", "picture report"];
  $("studies").replaceChildren(table(headers, rows, "no studies yet"), rows.length ? el("p", {class: "legend muted"},
    "level: " + LEVELS.map((name, i) => `${i} ${name}`).join(" · ") +
    "; SBR: specific binding ratio. Click a picture report to enlarge it.") : null);
  for (const [key, url] of pictures) if (!kept.has(key)) URL.revokeObjectURL(url);
  pictures = kept;
}

async function loadIgnored() {
  const data = await api("/api/series?state=ignored&limit=50");
  const rows = data.series.map(s => el("tr", {},
    el("td", {}, uid(s.series_uid)), el("td", {}, uid(s.study_uid)), num(s.instance_count),
    el("td", {}, when(s.completed_at)),
    el("td", {}, Object.entries(s.routing).map(([p, why]) => el("div", {}, el("code", {}, p), ": ", why)))));
  $("ignored").replaceChildren(table(
    ["series", "study", "instances#", "completed", "why no pipeline took it"], rows, "no ignored series"));
}

// --- wiring -------------------------------------------------------------------
async function refresh() {
  clearTimeout(timer);
  const errors = [];
  const sections = [["health", loadHealth], ["queue", loadQueue], ["outbox", loadOutbox],
                    ["failed", loadFailed], ["studies", loadStudies], ["ignored", loadIgnored]];
  const results = await Promise.allSettled(sections.map(([, load]) => load()));
  results.forEach((r, i) => {
    if (r.status !== "rejected") return;
    errors.push(r.reason);
    const why = r.reason instanceof ApiError && r.reason.status === 401 ? "needs a valid API token"
      : "could not load: " + r.reason.message;
    $(sections[i][0]).replaceChildren(el("p", {class: "muted"}, why));
  });
  const unauthorised = errors.find(e => e instanceof ApiError && e.status === 401);
  if (unauthorised) {
    showError(`The API refused the token (401: ${unauthorised.detail}). Enter the node's api.token.`);
    document.body.classList.add("locked");
  } else if (errors.length) {
    showError("Could not load everything: " + errors.map(e => e.message).join("; "));
  } else {
    if (!$("error").textContent.startsWith("Retry")) showError("");
    document.body.classList.remove("locked");
  }
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", event => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    showError(""); showNotice("");
    refresh();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showNotice("Token forgotten for this tab.");
    refresh();
  });
  $("refresh").addEventListener("click", () => { showNotice(""); showError(""); refresh(); });
  $("full-uids").addEventListener("change", refresh);
  refresh();
});
