// The browser page: pick an image, tick tasks, see every map and the routers for that request.
// Plain JavaScript, no build step. Talks only to this server's own API.
"use strict";

const API_KEY_HEADER = "X-API-Key";
// Maps and the input are shown 320 CSS pixels wide (style.css): ask for maps no larger than
// that in device pixels, so a 12-MP photo does not come back as five 12-MP maps.
const DISPLAY_WIDTH = 320;
const displaySide = () => Math.ceil(DISPLAY_WIDTH * (window.devicePixelRatio || 1));
const state = {
  models: [], model: null, imageBlob: null, imageBitmap: null, response: null, maps: {},
};
const $ = (id) => document.getElementById(id);

function apiHeaders(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, [API_KEY_HEADER]: key } : extra;
}

// Every API failure carries {"error": {"code", "message", "status"}}: show its words.
async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error.message} (${body.error.code}, HTTP ${response.status})`;
  } catch (_) { /* not JSON: fall through */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// The models the server serves, one option per version; the default model's highest version
// is picked first (the one /predict runs without ?model=), and a reload keeps the user's pick.
// Loads overlap (the page's own at start, one per API-key change): only the newest one's
// answer counts, so a slow keyless 401 cannot undo a later keyed list.
let modelsLoad = 0;
async function loadModels() {
  const ticket = ++modelsLoad;
  const response = await fetch("v1/models", { headers: apiHeaders() });
  if (ticket !== modelsLoad) return;
  if (!response.ok) {
    $("model-info").textContent = "model unavailable";
    showError(await errorText(response));
    return;
  }
  const body = await response.json();
  if (ticket !== modelsLoad) return;
  state.models = body.models || [];
  const picker = $("model");
  const keep = picker.selectedOptions[0]?.dataset.key;
  picker.replaceChildren();
  state.models.forEach((m, index) => {
    const option = document.createElement("option");
    option.value = String(index);
    option.textContent = `${m.name} · version ${m.version}`;
    option.dataset.key = `${m.name}/${m.version}`;
    picker.appendChild(option);
  });
  const defaults = state.models.filter((m) => m.name === body.default_model);
  const chosen = [...picker.options].find((o) => o.dataset.key === keep) ||
    [...picker.options].find((o) => defaults.length &&
      o.dataset.key === `${defaults.at(-1).name}/${defaults.at(-1).version}`);
  if (chosen) picker.value = chosen.value;
  showModel();
  showError(state.models.length ? "" : "the server serves no model now");
}

function showModel() {
  const option = $("model").selectedOptions[0];
  state.model = option ? state.models[Number(option.value)] : null;
  const box = $("tasks");
  box.querySelectorAll("label").forEach((el) => el.remove());
  const m = state.model;
  if (!m) { updateRunButton(); return; }
  const adapters = m.adapters || {};
  $("model-info").textContent =
    `${m.name} ${m.version} (${m.checkpoint}) · ${adapters.spec || ""} ` +
    `${adapters.routing || ""} · ${(m.providers || []).join(", ")}`;
  // What the model learned from (metadata.json's training note): a synthetic-only model's
  // rough maps on a real photo, or photo-trained normals, are not mistaken for a fault.
  const note = m.training ? m.training.note : "";
  $("model-note").textContent = note;
  $("model-note").hidden = !note;
  for (const task of m.tasks) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" name="task" value="${task.name}"> ${task.name}`;
    box.appendChild(label);
  }
  const first = box.querySelector("input");
  if (first) first.checked = true;
  updateRunButton();
}

async function loadSamples() {
  const response = await fetch("v1/samples");
  if (!response.ok) return;
  const { samples } = await response.json();
  for (const url of samples) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = url.split("/").pop();
    img.title = img.alt;
    img.addEventListener("click", async () => setImage(await (await fetch(url)).blob()));
    $("samples").appendChild(img);
  }
}

async function setImage(blob) {
  state.imageBlob = blob;
  try {
    state.imageBitmap = await createImageBitmap(blob);
  } catch (_) {
    state.imageBitmap = null; // the browser cannot show it; the server will say why
  }
  drawInput();
  updateRunButton();
}

// The size the server's max_side gives an image of this size: longest side at most the
// display's, aspect kept, never enlarged.
function shownSize(width, height) {
  const scale = Math.min(1, displaySide() / Math.max(width, height));
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
}

function drawInput() {
  const card = $("input-card");
  if (!state.imageBitmap) { card.hidden = true; return; }
  const canvas = $("input-canvas");
  [canvas.width, canvas.height] = shownSize(state.imageBitmap.width, state.imageBitmap.height);
  canvas.getContext("2d").drawImage(state.imageBitmap, 0, 0, canvas.width, canvas.height);
  card.hidden = false;
}

function selectedTasks() {
  return [...document.querySelectorAll('input[name="task"]:checked')].map((el) => el.value);
}

function updateRunButton() {
  $("run").disabled = !(state.imageBlob && state.model && selectedTasks().length);
}

async function predict() {
  const tasks = selectedTasks();
  showError("");
  $("run").disabled = true;
  $("timing").textContent = "running…";
  const started = performance.now();
  try {
    const m = state.model;
    const url = `predict?tasks=${tasks.join(",")}&router_stats=true&max_side=${displaySide()}` +
      `&model=${encodeURIComponent(m.name)}&version=${encodeURIComponent(m.version)}`;
    const response = await fetch(url, {
      method: "POST",
      headers: apiHeaders({ "Content-Type": state.imageBlob.type || "application/octet-stream" }),
      body: state.imageBlob,
    });
    if (!response.ok) {
      showError(await errorText(response));
      $("timing").textContent = "";
      return;
    }
    state.response = await response.json();
    const roundTrip = performance.now() - started;
    const t = state.response.timings_ms || {};
    $("timing").textContent =
      `round trip ${roundTrip.toFixed(0)} ms · server ${(t.total || 0).toFixed(1)} ms ` +
      `(inference ${(t.inference || 0).toFixed(1)} ms) · ${state.response.provider} · ` +
      `${state.response.model.name} version ${state.response.model.version}`;
    await renderMaps(state.response);
    renderRouters(state.response);
    $("download-raw").hidden = false;
  } catch (error) {
    showError(`request failed: ${error}`);
  } finally {
    updateRunButton();
  }
}

// PNG payloads are decoded without colour management so that class ids stay exact.
async function decodePng(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const blob = new Blob([bytes], { type: "image/png" });
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: "none", premultiplyAlpha: "none",
  });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  return { blob, pixels: ctx.getImageData(0, 0, bitmap.width, bitmap.height) };
}

// Turn a decoded map into RGBA for display: palettes for class maps, grey or RGB otherwise.
function colourise(task, pixels) {
  const out = new ImageData(pixels.width, pixels.height);
  const src = pixels.data;
  const dst = out.data;
  const palette = task.palette;
  for (let i = 0; i < src.length; i += 4) {
    if (palette) {
      const colour = palette[src[i]] || [255, 255, 255];
      dst[i] = colour[0]; dst[i + 1] = colour[1]; dst[i + 2] = colour[2];
    } else {
      dst[i] = src[i]; dst[i + 1] = src[i + 1]; dst[i + 2] = src[i + 2];
    }
    dst[i + 3] = 255;
  }
  return out;
}

async function renderMaps(body) {
  document.querySelectorAll(".map-card").forEach((el) => el.remove());
  state.maps = {};
  for (const [name, task] of Object.entries(body.tasks)) {
    const { blob, pixels } = await decodePng(task.data);
    const layer = new OffscreenCanvas(pixels.width, pixels.height);
    layer.getContext("2d").putImageData(colourise(task, pixels), 0, 0);
    state.maps[name] = { task, blob, layer, present: presentClasses(task, pixels) };
    $("results").appendChild(mapCard(name));
  }
  drawOverlays();
}

function presentClasses(task, pixels) {
  if (!task.classes) return [];
  const seen = new Set();
  for (let i = 0; i < pixels.data.length; i += 4) seen.add(pixels.data[i]);
  return [...seen].sort((a, b) => a - b);
}

function mapCard(name) {
  const { task, blob, present } = state.maps[name];
  const card = document.createElement("figure");
  card.className = "card map-card";
  card.dataset.task = name;
  const canvas = document.createElement("canvas");
  canvas.className = "map";
  card.appendChild(canvas);
  const caption = document.createElement("figcaption");
  const link = document.createElement("a");
  link.textContent = "PNG";
  link.download = `${name}.png`;
  link.href = URL.createObjectURL(blob);
  link.className = "download";
  caption.append(`${name} (${task.kind})`, link);
  card.appendChild(caption);
  if (task.classes) {
    const legend = document.createElement("div");
    legend.className = "legend";
    for (const id of present) {
      const entry = document.createElement("span");
      const colour = task.palette[id] || [255, 255, 255];
      entry.style.setProperty("--swatch", `rgb(${colour.join(",")})`);
      entry.textContent = task.classes[id] ?? `id ${id}`;
      legend.appendChild(entry);
    }
    card.appendChild(legend);
  }
  return card;
}

// Maps are drawn over the input with the slider's opacity (0 shows the input only).
function drawOverlays() {
  const alpha = Number($("opacity").value);
  for (const card of document.querySelectorAll(".map-card")) {
    const { layer } = state.maps[card.dataset.task];
    const canvas = card.querySelector("canvas");
    canvas.width = layer.width;
    canvas.height = layer.height;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (state.imageBitmap) ctx.drawImage(state.imageBitmap, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = state.imageBitmap ? alpha : 1;
    ctx.drawImage(layer, 0, 0);
    ctx.globalAlpha = 1;
  }
}

function renderRouters(body) {
  const holder = $("router-maps");
  holder.replaceChildren();
  const router = body.router || {};
  for (const [name, stats] of Object.entries(router)) {
    holder.appendChild(routerCard(name, stats));
  }
  $("routers").hidden = !Object.keys(router).length;
}

// A layer x expert heatmap of token share; shared experts marked; shared gate share per layer.
function routerCard(name, stats) {
  const rows = stats.expert_tokens;
  const layers = rows.length;
  const experts = layers ? rows[0].length : 0;
  const cell = Math.max(8, Math.min(28, Math.floor(480 / Math.max(experts, 1))));
  const labelWidth = 28, barWidth = 60, top = 16;
  const canvas = document.createElement("canvas");
  canvas.className = "router";
  canvas.width = labelWidth + experts * cell + 8 + barWidth;
  canvas.height = top + layers * cell + 4;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = "10px sans-serif";
  const shared = new Set(stats.shared_experts || []);
  for (let e = 0; e < experts; e++) {
    ctx.fillStyle = shared.has(e) ? "#c00" : "#555";
    ctx.fillText(shared.has(e) ? "S" : String(e), labelWidth + e * cell + 2, top - 4);
  }
  for (let l = 0; l < layers; l++) {
    const y = top + l * cell;
    ctx.fillStyle = "#555";
    ctx.fillText(`L${l}`, 2, y + cell * 0.7);
    const total = stats.tokens_per_layer || 1;
    for (let e = 0; e < experts; e++) {
      const share = rows[l][e] / total; // fraction of the layer's tokens this expert processed
      ctx.fillStyle = heat(share);
      ctx.fillRect(labelWidth + e * cell, y, cell - 1, cell - 1);
      if (shared.has(e)) {
        ctx.strokeStyle = "#c00";
        ctx.strokeRect(labelWidth + e * cell + 0.5, y + 0.5, cell - 2, cell - 2);
      }
    }
    const gate = (stats.shared_gate_share || [])[l] || 0;
    const x0 = labelWidth + experts * cell + 8;
    ctx.fillStyle = "#eee";
    ctx.fillRect(x0, y, barWidth, cell - 1);
    ctx.fillStyle = "#c00";
    ctx.fillRect(x0, y, barWidth * gate, cell - 1);
  }
  const card = document.createElement("figure");
  card.className = "card router-card";
  card.dataset.task = name;
  card.appendChild(canvas);
  const caption = document.createElement("figcaption");
  caption.textContent = `${name}: ${layers} layers x ${experts} experts`;
  card.appendChild(caption);
  return card;
}

// White -> dark blue as the share grows from 0 to 1.
function heat(share) {
  const s = Math.max(0, Math.min(1, share));
  const r = Math.round(255 * (1 - s));
  const g = Math.round(255 * (1 - 0.8 * s));
  return `rgb(${r},${g},255)`;
}

function downloadRaw() {
  const blob = new Blob([JSON.stringify(state.response, null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "response.json";
  link.click();
}

function wire() {
  $("file-input").addEventListener("change", (event) => {
    if (event.target.files.length) setImage(event.target.files[0]);
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) setImage(event.dataTransfer.files[0]);
  });
  $("tasks").addEventListener("change", updateRunButton);
  $("run").addEventListener("click", predict);
  $("opacity").addEventListener("input", drawOverlays);
  $("download-raw").addEventListener("click", downloadRaw);
  $("model").addEventListener("change", showModel);
  $("api-key").addEventListener("change", loadModels);
}

wire();
loadModels();
loadSamples();
