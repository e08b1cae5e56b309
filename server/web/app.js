// The ddrnet-serve page: classify dropped, chosen or pasted images and watch the served models.
// Plain JavaScript, same-origin requests only (the page works over HTTP or HTTPS as it is served).
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "ddrnet-serve-token";
const REFRESH_MS = 2000;
let models = [];

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function text(tag, content, className) {
  const el = document.createElement(tag);
  if (content !== undefined && content !== null) el.textContent = String(content);
  if (className) el.className = className;
  return el;
}

function fmt(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

// -- status ------------------------------------------------------------------------------------------

async function refreshStatus() {
  const pill = $("server-state");
  try {
    const response = await fetch("/v1/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const status = await response.json();
    const server = status.server;
    pill.dataset.state = server.ready ? "ready" : "not-ready";
    pill.textContent = server.draining ? "draining" : server.ready ? "ready" : "not ready";
    $("server-version").textContent = server.version;
    $("uptime").textContent = `${Math.round(server.uptime_s)} s`;
    $("token").required = server.auth_required;
    models = status.models;
    renderModels(status.models);
    renderModelChoice(status.models);
    $("updated").textContent = new Date().toLocaleTimeString();
  } catch (err) {
    pill.dataset.state = "down";
    pill.textContent = "unreachable";
  }
}

function renderModels(list) {
  const body = $("models");
  body.replaceChildren();
  if (!list.length) {
    const row = document.createElement("tr");
    const cell = text("td", "no model is served yet", "muted");
    cell.colSpan = 11;
    row.append(cell);
    body.append(row);
    return;
  }
  for (const m of list) {
    const row = document.createElement("tr");
    row.dataset.model = m.name;
    const labels = Object.entries(m.version_labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    const versions = m.versions.join(", ") + (labels ? ` (${labels})` : "");
    const ready = text("td", m.ready ? "yes" : "no", m.ready ? "yes" : "no");
    row.append(text("td", m.name), text("td", versions), text("td", `${m.runtime} · ${m.device}`),
      text("td", m.precision), ready, text("td", fmt(m.requests_per_s), "rps"),
      text("td", fmt(m.images_per_s), "ips"), text("td", fmt(m.p50_ms), "p50"), text("td", fmt(m.p99_ms), "p99"),
      text("td", fmt(m.queue_depth, 0), "queue"), text("td", fmt(m.inflight, 0), "inflight"));
    body.append(row);
    $("window").textContent = fmt(m.window_s, 0);
  }
}

function renderModelChoice(list) {
  const select = $("model");
  const chosen = select.value;
  const names = list.map((m) => m.name);
  if (names.join("\n") !== Array.from(select.options, (o) => o.value).join("\n")) {
    select.replaceChildren(...names.map((n) => { const o = text("option", n); o.value = n; return o; }));
    if (names.includes(chosen)) select.value = chosen;
  }
  renderVersionChoice();
}

function renderVersionChoice() {
  const m = models.find((x) => x.name === $("model").value);
  const select = $("version");
  const chosen = select.value;
  const options = [["", "newest (or the traffic split)"]];
  if (m) {
    for (const v of m.versions) options.push([`version:${v}`, `version ${v}`]);
    for (const [label, v] of Object.entries(m.version_labels || {})) options.push([`label:${label}`, `label ${label} (v${v})`]);
  }
  if (options.map((o) => o[0]).join("\n") !== Array.from(select.options, (o) => o.value).join("\n")) {
    select.replaceChildren(...options.map(([value, label]) => { const o = text("option", label); o.value = value; return o; }));
    if (options.some((o) => o[0] === chosen)) select.value = chosen;
  }
}

// -- classify ----------------------------------------------------------------------------------------

function classifyUrl() {
  const model = encodeURIComponent($("model").value);
  const [kind, value] = $("version").value.split(":");
  let path = `/v1/models/${model}`;
  if (kind === "version") path += `/versions/${encodeURIComponent(value)}`;
  if (kind === "label") path += `/labels/${encodeURIComponent(value)}`;
  const k = Math.max(1, Math.min(100, parseInt($("top-k").value, 10) || 5));
  return `${path}/classify?top_k=${k}`;
}

function showMessage(message, isError = false) {
  $("message").textContent = message;
  $("message").className = isError ? "error" : "muted";
}

async function classifyFile(file) {
  const item = text("li", null, "result");
  item.dataset.status = "pending";
  const img = document.createElement("img");
  img.alt = file.name || "pasted image";
  img.src = URL.createObjectURL(file);
  const info = document.createElement("div");
  const meta = text("div", `${file.name || "pasted image"} · classifying…`, "meta");
  info.append(meta);
  item.append(img, info);
  $("results").prepend(item);
  if (!$("model").value) {
    meta.textContent = "no model is served yet";
    item.dataset.status = "error";
    return;
  }
  const body = new FormData();
  body.append("file", file, file.name || "pasted.png");
  const started = performance.now();
  try {
    const response = await fetch(classifyUrl(), { method: "POST", body, headers: headers() });
    const elapsed = performance.now() - started;
    const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) {
      const hint = response.status === 401 ? " (enter the bearer token above)" : "";
      meta.textContent = `${file.name || "pasted image"} · HTTP ${response.status}`;
      info.append(text("div", `${answer.error || "request failed"}${hint}`, "error"));
      item.dataset.status = "error";
      return;
    }
    meta.textContent = `${file.name || "pasted image"} · ${answer.model_name} v${answer.model_version} · ` +
      `latency ${elapsed.toFixed(1)} ms`;
    item.dataset.version = answer.model_version;
    const predictions = answer.results[0].predictions;
    predictions.forEach((p, i) => {
      const bar = text("div", null, i === 0 ? "bar top" : "bar");
      const track = text("div", null, "track");
      const fill = text("div", null, "fill");
      fill.style.width = `${Math.max(0, Math.min(100, p.score * 100)).toFixed(1)}%`;
      track.append(fill);
      bar.append(text("span", p.label, "label"), track, text("span", `${(p.score * 100).toFixed(1)}%`, "score"));
      info.append(bar);
    });
    item.dataset.status = "done";
  } catch (err) {
    meta.textContent = `${file.name || "pasted image"} · the server could not be reached`;
    item.dataset.status = "error";
  }
}

async function classifyFiles(files) {
  const images = Array.from(files).filter((f) => f.type.startsWith("image/") || f.type === "");
  if (!images.length) { showMessage("no image among the files given", true); return; }
  showMessage(`classifying ${images.length} image${images.length > 1 ? "s" : ""}…`);
  for (const file of images) await classifyFile(file);  // one at a time: the order stays the order given
  showMessage("");
}

// -- wiring ------------------------------------------------------------------------------------------

function init() {
  const token = $("token");
  token.value = sessionStorage.getItem(TOKEN_KEY) || "";
  token.addEventListener("change", () => sessionStorage.setItem(TOKEN_KEY, token.value.trim()));
  $("model").addEventListener("change", renderVersionChoice);
  const drop = $("drop");
  drop.addEventListener("click", (e) => { if (e.target === drop || e.target.tagName === "P") $("files").click(); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("files").click(); } });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); classifyFiles(e.dataTransfer.files); });
  $("files").addEventListener("change", (e) => { classifyFiles(e.target.files); e.target.value = ""; });
  document.addEventListener("paste", (e) => {
    const files = Array.from(e.clipboardData?.items || []).filter((i) => i.kind === "file").map((i) => i.getAsFile());
    if (files.length) { e.preventDefault(); classifyFiles(files); }
  });
  refreshStatus();
  setInterval(refreshStatus, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", init);
