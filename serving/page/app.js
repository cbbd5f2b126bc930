// The service's own page: plain JavaScript against the service's JSON API (no
// framework, no build step, nothing fetched from outside the service).
"use strict";

const KEY_STORAGE = "recsys-api-key"; // sessionStorage: this tab only
const state = { user: null, config: null, samples: null };
const $ = (id) => document.getElementById(id);

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey()) headers["X-API-Key"] = apiKey();
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!response.ok) {
    const detail = (data && (data.error || data.detail)) || text || response.statusText;
    throw new ApiError(response.status, `${response.status} ${response.statusText}: ${detail}`);
  }
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function explain(error) {
  if (error.status === 401) {
    showError(`${error.message} — enter the service's API key above (it is kept in this tab only).`);
  } else {
    showError(error.message);
  }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

const HISTORY_SHOWN = 20;

function renderHistory(history) {
  const list = $("history");
  const shown = history.items.slice(0, HISTORY_SHOWN);
  list.replaceChildren(...shown.map((item) =>
    el("li", { "data-item-id": item.item_id }, item.title, " ", el("span", { class: "muted small" }, item.item_id))));
  if (history.items.length > shown.length) {
    list.append(el("li", { class: "muted more" }, `and ${history.items.length - shown.length} older`));
  }
  if (history.degraded) list.replaceChildren(el("li", { class: "muted" }, history.reason));
  else if (!history.items.length) list.replaceChildren(el("li", { class: "muted" }, "no history yet"));
}

function renderRecs(answer, rttMs) {
  $("recs-user").textContent = `for ${answer.user_id}`;
  const badge = el("span", { class: answer.degraded ? "badge degraded" : "badge", id: "degraded" },
    answer.degraded ? `degraded: ${answer.reason}` : "model");
  const meta = [badge, ` behaviour_encoder v${answer.model_version}`];
  if (rttMs !== undefined) {
    meta.push(" · click to new list ", el("strong", { id: "rtt" }, `${rttMs.toFixed(0)} ms`));
  }
  $("answer-meta").replaceChildren(...meta);
  $("recs").replaceChildren(...answer.items.map((item) => {
    const because = item.because.length
      ? el("div", { class: "because" }, "because: " + item.because.map((b) => b.title).join(", "))
      : el("div", { class: "because" }, "popular");
    const li = el("li", { "data-item-id": item.item_id, title: "click: send a click event" },
      el("span", { class: "score" }, item.score.toFixed(3)),
      el("span", { class: "title" }, item.title), " ",
      el("span", { class: "muted small" }, item.item_id), because);
    li.addEventListener("click", () => clickItem(item.item_id));
    return li;
  }));
  if (rttMs !== undefined) $("recs").classList.add("fresh");
}

async function loadUser(userId, rttStart) {
  state.user = String(userId);
  $("user-id").value = state.user;
  try {
    const [answer, history] = await Promise.all([
      api("/recommend", { user_id: state.user, k: 10 }),
      api("/history", { user_id: state.user }),
    ]);
    showError("");
    renderHistory(history);
    renderRecs(answer, rttStart === undefined ? undefined : performance.now() - rttStart);
  } catch (error) {
    explain(error);
  }
}

async function clickItem(itemId) {
  const started = performance.now();
  $("recs").classList.remove("fresh");
  try {
    const result = await api("/events", { events: [{ user_id: state.user, item_id: itemId, event_type: "click" }] });
    if (result.accepted !== 1) {
      showError(`the click was not accepted: ${result.rejected.map((r) => r.error).join("; ")}`);
      return;
    }
  } catch (error) {
    explain(error);
    return;
  }
  await loadUser(state.user, started);
}

async function loadSamples() {
  state.samples = await api("/sample_users");
  for (const button of document.querySelectorAll("#samples button")) {
    const id = state.samples[button.dataset.sample];
    // null: with pseudonymisation on the service knows no user's id
    button.disabled = !id;
    button.title = id || "no known user to show (ids are pseudonymised)";
  }
}

function metricsText(summary) {
  if (!summary) return "none";
  const m = summary.metrics;
  const parts = [];
  if (m.best_val_ndcg_at_10 !== undefined) parts.push(`val NDCG@10 ${m.best_val_ndcg_at_10}`);
  if (m.ndcg_at_10 !== undefined) parts.push(`test NDCG@10 ${m.ndcg_at_10}`);
  return `v${summary.version}` + (parts.length ? ` (${parts.join(", ")})` : "");
}

async function loadStatus() {
  try {
    const status = await api("/status");
    const rows = [
      ["champion", metricsText(status.champion)],
      ["challenger", metricsText(status.challenger)],
      ["serving here", `v${status.model_version}`],
      ["Redis", status.online_store ? "reachable" : "UNREACHABLE"],
    ];
    if (status.registry_error) rows.push(["registry", status.registry_error]);
    $("ops").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { id: `ops-${k.replace(" ", "-")}` }, v)]));
    $("fleet").tBodies[0].replaceChildren(...status.fleet.map((w) =>
      el("tr", {}, el("td", {}, w.worker), el("td", {}, `v${w.model_version}`), el("td", {}, `${w.reported_s_ago.toFixed(1)} s ago`))));
  } catch (error) {
    $("ops").replaceChildren(el("dt", {}, "status"), el("dd", {}, error.message));
  }
}

function keyStateText() {
  if (apiKey()) return "key set for this tab";
  return state.config.api_key_required ? "this service needs a key" : "the service needs no key";
}

async function start() {
  state.config = await (await fetch("/page/config.json")).json();
  const host = window.location.hostname;
  $("link-dagster").href = `${window.location.protocol}//${host}:${state.config.dagster_port}`;
  $("link-mlflow").href = `${window.location.protocol}//${host}:${state.config.mlflow_port}`;
  $("api-key").value = apiKey();
  $("key-state").textContent = keyStateText();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    $("key-state").textContent = keyStateText();
    showError("");
    boot();
  });
  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("user-id").value.trim()) loadUser($("user-id").value.trim());
  });
  for (const button of document.querySelectorAll("#samples button")) {
    button.addEventListener("click", () => state.samples && loadUser(state.samples[button.dataset.sample]));
  }
  boot();
}

async function boot() {
  if (state.config.api_key_required && !apiKey()) {
    showError("401 Unauthorized: this service needs an API key — enter it above (it is kept in this tab only).");
    return;
  }
  try {
    await loadSamples();
  } catch (error) {
    explain(error);
    return;
  }
  loadStatus();
  if (!state.statusTimer) state.statusTimer = setInterval(loadStatus, 5000);
  if (!state.user) loadUser(state.samples.most_active || state.samples.new_visitor);
}

start();
