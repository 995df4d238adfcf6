// wanq's web page: plain JavaScript on the public API, with the person's API key on every request.
// Live progress comes from the Server-Sent Events endpoint read through fetch(), because EventSource cannot send
// an Authorization header; videos and thumbnails are fetched the same way and shown from blob: URLs.
"use strict";

const KEY_STORAGE = "wanq.apiKey";
const TERMINAL = new Set(["completed", "failed", "canceled"]);
// Browsers open at most six HTTP/1.1 connections per server: keep some for everything else.
const MAX_STREAMS = 4;
const POLL_MS = 3000;
const STAGES = {
  queued: "Queued",
  loading: "Loading the model",
  encoding_prompt: "Encoding the prompt",
  denoising: "Denoising",
  decoding: "Decoding frames",
  interpolating: "Interpolating frames",
  upscaling: "Upscaling",
  encoding_video: "Encoding the MP4",
  uploading: "Uploading",
  done: "Done",
};

const $ = (selector) => document.querySelector(selector);
const jobs = new Map(); // id -> {video, el, media}
const streams = new Map(); // id -> AbortController
let models = [];

// API ------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

async function api(path, { method = "GET", body, json, signal } = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The server does not answer. Is it running?", "unreachable");
  }
  if (!response.ok) {
    let error = {};
    try {
      error = (await response.json()).error || {};
    } catch {
      /* not our error body */
    }
    const retry = response.headers.get("Retry-After");
    throw new ApiError(response.status, error.message || `HTTP ${response.status}`, error.code, retry ? Number(retry) : null);
  }
  return response;
}

function explain(err) {
  if (err.status === 401) {
    $("#key-panel").open = true;
    return apiKey() ? `The server refused this API key: ${err.message}` : "This server needs an API key: enter it above.";
  }
  if (err.status === 429) {
    return `Quota exceeded: ${err.message}${err.retryAfter ? ` Retry in ${err.retryAfter} s.` : ""}`;
  }
  return err.message || String(err);
}

function say(text, isError = false) {
  const message = $("#message");
  message.textContent = text;
  message.classList.toggle("is-error", isError);
}

// Server-Sent Events over fetch: yields each event's data, parsed as JSON. `video.preview` is the change that brought a
// new preview: the same video object (its preview_step the new one's), so it is handled like any other change.
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const lines = block.split("\n");
        const named = lines.find((line) => line.startsWith("event:"));
        const event = named ? named.slice(6).trim() : "message";
        const data = lines
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        // `interrupted`: the server ended the stream early; the caller reopens it.
        if (data && (event === "video" || event === "video.preview" || event === "message")) yield JSON.parse(data);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// Following jobs -------------------------------------------------------------------------------

async function follow(id) {
  if (streams.has(id) || streams.size >= MAX_STREAMS) return;
  const controller = new AbortController();
  streams.set(id, controller);
  let failures = 0;
  try {
    while (!controller.signal.aborted) {
      try {
        const response = await api(`/v1/videos/${id}/events`, { signal: controller.signal });
        for await (const video of sseEvents(response.body)) {
          failures = 0;
          update(video);
          if (TERMINAL.has(video.status)) return;
        }
      } catch (err) {
        if (controller.signal.aborted) return;
        if (err.status === 404) return forget(id);
        if (err.status && err.status < 500) return say(explain(err), true);
        if (++failures > 5) return; // the poll below takes over
      }
      // The stream ended before a final status (a restart, a proxy timeout): reopen it; it starts from the current state.
      await new Promise((resolve) => setTimeout(resolve, Math.min(200 * 2 ** failures, 5000)));
    }
  } finally {
    streams.delete(id);
    followMore();
  }
}

function followMore() {
  for (const [id, job] of jobs) {
    if (streams.size >= MAX_STREAMS) return;
    if (!TERMINAL.has(job.video.status) && !streams.has(id)) follow(id);
  }
}

function unfollow(id) {
  const controller = streams.get(id);
  if (controller) controller.abort();
  streams.delete(id);
}

// Jobs that could not get a stream (more than MAX_STREAMS running) are refreshed by polling the list.
setInterval(() => {
  const waiting = [...jobs.values()].some((job) => !TERMINAL.has(job.video.status) && !streams.has(job.video.id));
  if (waiting && !document.hidden) refreshJobs();
}, POLL_MS);

// Rendering ------------------------------------------------------------------------------------

function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return s >= 60 ? `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}` : `${s}s`;
}

function stageText(job) {
  const video = job.video;
  if (video.status === "queued") {
    const parts = ["Queued"];
    if (video.queue_position != null) parts.push(`position ${video.queue_position + 1} in line`);
    if (video.estimated_start_at) parts.push(`starts ~${new Date(video.estimated_start_at * 1000).toLocaleTimeString()}`);
    return parts.join(" · ");
  }
  if (video.status === "completed") {
    const total = video.timings && video.timings.total;
    return total ? `Done in ${clock(total)}` : "Done";
  }
  if (video.status === "canceled") return video.step ? `Canceled at step ${video.step}/${video.total_steps}` : "Canceled";
  if (video.status === "failed") return "Failed";
  let text = STAGES[video.stage] || video.stage;
  if (video.stage === "denoising") text += ` step ${video.step}/${video.total_steps}`;
  if (video.cancel_requested) text += " · stopping";
  const now = Date.now() / 1000;
  if (video.started_at) text += ` · ${clock(now - video.started_at)} elapsed`;
  // The server's estimate (the CLI shows the same): none until there is something to go by.
  if (video.eta_s != null && video.eta_s >= 1) text += ` · ~${clock(video.eta_s)} left`;
  return text;
}

// What the step cache skipped, once denoised: "step cache skipped 42% (reused 3/8 steps of transformer, ...)".
function cacheText(video) {
  const stats = video.cache_stats;
  if (!stats) return "";
  const reused = Object.entries(stats.steps_reused).map(([expert, n]) => `${n}/${stats.steps[expert]} steps of ${expert}`);
  return `step cache skipped ${Math.round(stats.blocks_skipped_share * 100)}% (reused ${reused.join(", ")})`;
}

function statusLabel(status) {
  return { queued: "queued", in_progress: "running", completed: "done", failed: "failed", canceled: "canceled" }[status] || status;
}

function render(job) {
  const { video, el } = job;
  el.dataset.status = video.status;
  el.querySelector(".prompt").textContent = video.prompt;
  const badge = el.querySelector(".badge");
  badge.textContent = statusLabel(video.status);
  badge.className = `badge badge-${video.status}`;
  const created = new Date(video.created_at * 1000).toLocaleString();
  const frames = video.source_frames ? video.source_frames + video.num_frames - 1 : video.num_frames;
  const shape = video.kind === "image" ? "image" : `${video.seconds} s (${frames} frames at ${video.fps} fps)`;
  const parts = [video.model, video.size, shape, `seed ${video.seed}`];
  if (video.extended_from_video_id) parts.push(`extends ${video.extended_from_video_id} by ${video.num_frames - 1} frames`);
  if (video.remixed_from_video_id) parts.push(`remix of ${video.remixed_from_video_id}`);
  if (video.cache_stats) parts.push(cacheText(video));
  el.querySelector(".meta").textContent = [...parts, created].join(" · ");
  const progress = el.querySelector("progress");
  progress.value = video.progress;
  progress.setAttribute("aria-label", `Progress of “${video.prompt.slice(0, 40)}”: ${video.progress}%`);
  el.querySelector(".pct").textContent = `${video.progress}%`;
  el.querySelector(".stage").textContent = stageText(job);
  const error = el.querySelector(".error");
  error.hidden = !(video.error && video.status === "failed");
  error.textContent = video.error ? video.error.message : "";
  const cancel = el.querySelector(".cancel");
  cancel.hidden = TERMINAL.has(video.status);
  cancel.disabled = Boolean(video.cancel_requested);
  cancel.textContent = video.cancel_requested ? "Stopping…" : "Cancel";
  el.querySelector(".extend").hidden = !(video.status === "completed" && video.kind !== "image");
  el.querySelector(".remix").hidden = video.status !== "completed";
  if (video.status === "completed" && !job.media) mediaObserver.observe(el);
  showPreview(job);
}

// The latest preview (`preview_every`): on the card while the job runs, and kept when it is canceled or fails; the
// video replaces it once the job completes. Fetched again whenever preview_step changes, whether that came as a
// `video.preview` event or from polling the list.
function showPreview(job) {
  const { video, el } = job;
  const box = el.querySelector(".preview-box");
  if (video.status === "completed" || video.preview_step == null) {
    if (video.status === "completed" && job.previewUrl) {
      URL.revokeObjectURL(job.previewUrl);
      job.previewUrl = null;
      box.hidden = true;
    }
    return;
  }
  if (job.previewStep === video.preview_step) return;
  job.previewStep = video.preview_step;
  loadPreview(job, video.preview_step);
}

async function loadPreview(job, step) {
  const { el } = job;
  try {
    const blob = await api(`/v1/videos/${job.video.id}/content?variant=preview`).then((r) => r.blob());
    // A newer preview was asked for meanwhile, the job completed or the card is gone: this one is stale.
    if (job.previewStep !== step || job.video.status === "completed" || !jobs.has(job.video.id)) return;
    const url = URL.createObjectURL(new Blob([blob], { type: "video/mp4" }));
    if (job.previewUrl) URL.revokeObjectURL(job.previewUrl);
    job.previewUrl = url;
    const player = el.querySelector("video.preview");
    player.muted = true; // autoplay needs it
    player.src = url;
    player.dataset.step = String(step);
    player.play().catch(() => {}); // a browser that refuses autoplay still shows the first frame
    const decoder = job.video.decoder === "tiny" ? "; the video: tiny decoder" : "";
    el.querySelector(".preview-box figcaption").textContent =
      `Preview after step ${step} of ${job.video.total_steps} (a quick draft of the frames${decoder})`;
    el.querySelector(".preview-box").hidden = false;
  } catch {
    job.previewStep = null; // tried again on the next change
  }
}

function update(video) {
  let job = jobs.get(video.id);
  if (!job) return;
  job.video = video;
  render(job);
}

function addJob(video, { prepend = false } = {}) {
  if (jobs.has(video.id)) return update(video);
  const el = $("#job-template").content.firstElementChild.cloneNode(true);
  el.dataset.id = video.id;
  el.querySelector("video.full").setAttribute("aria-label", `Video: ${video.prompt.slice(0, 80)}`);
  el.querySelector("video.preview").setAttribute("aria-label", `Latest preview: ${video.prompt.slice(0, 80)}`);
  el.querySelector(".cancel").addEventListener("click", () => cancelJob(video.id));
  el.querySelector(".delete").addEventListener("click", () => deleteJob(video.id));
  el.querySelector(".extend").addEventListener("click", () => openFollowup(video.id, "extend"));
  el.querySelector(".remix").addEventListener("click", () => openFollowup(video.id, "remix"));
  el.querySelector(".followup-close").addEventListener("click", () => (el.querySelector(".followup").hidden = true));
  el.querySelector(".followup").addEventListener("submit", (event) => submitFollowup(event, video.id));
  const job = { video, el, media: null, added: performance.now(), previewStep: null, previewUrl: null };
  jobs.set(video.id, job);
  const list = $("#jobs");
  if (prepend) list.prepend(el);
  else list.append(el);
  render(job);
  $("#empty").hidden = true;
  if (!TERMINAL.has(video.status)) follow(video.id);
}

function forget(id) {
  const job = jobs.get(id);
  if (!job) return;
  unfollow(id);
  mediaObserver.unobserve(job.el);
  if (job.media) job.media.forEach((url) => URL.revokeObjectURL(url));
  if (job.previewUrl) URL.revokeObjectURL(job.previewUrl);
  job.el.remove();
  jobs.delete(id);
  $("#empty").hidden = jobs.size > 0;
}

// Finished videos: fetched with the key when they scroll into view, shown from blob: URLs.
const mediaObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    mediaObserver.unobserve(entry.target);
    const job = jobs.get(entry.target.dataset.id);
    if (job && !job.media) loadMedia(job);
  }
});

async function loadMedia(job) {
  job.media = [];
  const id = job.video.id;
  if (job.video.kind === "image") return loadImage(job);
  const player = job.el.querySelector("video.full");
  try {
    const thumbnail = await api(`/v1/videos/${id}/content?variant=thumbnail`).then((r) => r.blob());
    const poster = URL.createObjectURL(thumbnail);
    job.media.push(poster);
    player.poster = poster;
  } catch {
    /* a poster is a nicety: the video still plays without it */
  }
  try {
    const blob = await api(`/v1/videos/${id}/content?variant=video`).then((r) => r.blob());
    const url = URL.createObjectURL(new Blob([blob], { type: "video/mp4" }));
    job.media.push(url);
    player.src = url;
    player.hidden = false;
    const link = job.el.querySelector(".download");
    link.href = url;
    link.download = `${id}.mp4`;
    link.hidden = false;
  } catch (err) {
    const error = job.el.querySelector(".error");
    error.textContent = `Could not load the video: ${explain(err)}`;
    error.hidden = false;
  }
}

// An image job (POST /v1/images/generations): its PNG, shown and downloadable.
async function loadImage(job) {
  const id = job.video.id;
  try {
    const blob = await api(`/v1/videos/${id}/content?variant=image`).then((r) => r.blob());
    const url = URL.createObjectURL(blob);
    job.media.push(url);
    const still = job.el.querySelector("img.still");
    still.src = url;
    still.alt = `Image: ${job.video.prompt.slice(0, 80)}`;
    still.hidden = false;
    const link = job.el.querySelector(".download");
    link.href = url;
    link.download = `${id}.png`;
    link.textContent = "Download PNG";
    link.hidden = false;
  } catch (err) {
    const error = job.el.querySelector(".error");
    error.textContent = `Could not load the image: ${explain(err)}`;
    error.hidden = false;
  }
}

// Actions --------------------------------------------------------------------------------------

// Extend (a new part from the last frame, delivered as the whole video) or remix (a new prompt, same parameters).
function openFollowup(id, mode) {
  const job = jobs.get(id);
  if (!job) return;
  const form = job.el.querySelector(".followup");
  form.dataset.mode = mode;
  form.querySelector(".followup-title").textContent =
    mode === "extend" ? "Continue this video from its last frame" : "Remix: the same settings and seed, a new prompt";
  form.querySelector(".followup-extend").hidden = mode !== "extend";
  form.querySelector(".followup-submit").textContent = mode === "extend" ? "Extend" : "Remix";
  const prompt = form.elements.prompt;
  prompt.placeholder = mode === "extend" ? "What happens next" : job.video.prompt;
  if (mode === "extend") {
    // Only image-to-video models can start from a frame.
    const able = models.filter((m) => m.image_input !== "none");
    const select = form.elements.model;
    select.replaceChildren(
      ...able.map((m) => {
        const option = document.createElement("option");
        option.value = m.id;
        option.textContent = m.id;
        return option;
      }),
    );
    if (able.some((m) => m.id === job.video.model)) select.value = job.video.model;
    form.elements.seconds.placeholder = `seconds to add (default ${(job.video.num_frames / job.video.fps).toFixed(1)})`;
  }
  form.hidden = false;
  prompt.focus();
}

async function submitFollowup(event, id) {
  event.preventDefault();
  const form = event.target;
  const mode = form.dataset.mode;
  const prompt = form.elements.prompt.value;
  if (!prompt.trim()) {
    form.elements.prompt.focus();
    return say("Write a prompt first.", true);
  }
  const button = form.querySelector(".followup-submit");
  button.disabled = true;
  try {
    let response;
    if (mode === "extend") {
      const body = { video: { id }, prompt, model: form.elements.model.value };
      if (form.elements.seconds.value !== "") body.seconds = Number(form.elements.seconds.value);
      response = await api("/v1/videos/extensions", { method: "POST", json: body });
    } else {
      response = await api(`/v1/videos/${id}/remix`, { method: "POST", json: { prompt } });
    }
    const video = await response.json();
    addJob(video, { prepend: true });
    form.hidden = true;
    form.elements.prompt.value = "";
    say(`${mode === "extend" ? "Extending" : "Remixing"} ${id} as ${video.id}.`);
  } catch (err) {
    say(explain(err), true);
  } finally {
    button.disabled = false;
  }
}

async function refreshJobs() {
  const asked = performance.now();
  try {
    const page = await (await api("/v1/videos?limit=30")).json();
    const seen = new Set();
    for (const video of page.data) {
      seen.add(video.id);
      addJob(video);
    }
    // Jobs deleted elsewhere (another tab, the CLI) leave the page too; ones submitted since we asked stay.
    for (const [id, job] of [...jobs]) if (!seen.has(id) && !streams.has(id) && job.added < asked) forget(id);
    // Keep the server's order (newest first), moving only what is out of place: moving a playing <video> pauses it.
    const list = $("#jobs");
    page.data.forEach((video, index) => {
      const el = jobs.get(video.id).el;
      if (list.children[index] !== el) list.insertBefore(el, list.children[index] || null);
    });
    $("#empty").hidden = jobs.size > 0;
  } catch (err) {
    say(explain(err), true);
  }
}

async function loadModels() {
  try {
    models = (await (await api("/v1/models")).json()).data;
  } catch (err) {
    say(explain(err), true);
    return;
  }
  const select = $("#model");
  const previous = select.value;
  select.replaceChildren(
    ...models.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.live_workers ? m.id : `${m.id} (no worker running)`;
      return option;
    }),
  );
  if (models.some((m) => m.id === previous)) select.value = previous;
  showModelDefaults();
}

function showModelDefaults() {
  const model = models.find((m) => m.id === $("#model").value);
  if (!model) return;
  const d = model.defaults;
  $("#size").placeholder = d.size;
  $("#size-hint").textContent = `Multiples of ${model.size_multiple}; default ${d.size}.`;
  $("#seconds").placeholder = (d.num_frames / d.fps).toFixed(1);
  $("#num_frames").placeholder = d.num_frames;
  $("#steps").placeholder = d.num_inference_steps;
  $("#fps").placeholder = d.fps;
  const image = $("#image");
  image.disabled = model.image_input === "none";
  image.required = model.image_input === "required";
  $("#image-hint").textContent = {
    none: "This model is text-to-video only.",
    optional: "Optional: the video starts from this image.",
    required: "Required: this model animates an image.",
  }[model.image_input];
}

async function submitJob(event) {
  event.preventDefault();
  const form = event.target;
  const prompt = $("#prompt").value;
  if (!prompt.trim()) {
    $("#prompt").focus();
    return say("Write a prompt first.", true);
  }
  const fields = { prompt, model: $("#model").value };
  for (const name of ["size", "negative_prompt", "decoder"]) {
    const value = form.elements[name].value.trim();
    if (value) fields[name] = value;
  }
  for (const name of ["seconds", "seed", "num_frames", "num_inference_steps", "fps", "preview_every", "interpolate", "upscale"]) {
    const value = form.elements[name].value;
    if (value !== "") fields[name] = Number(value);
  }
  // n videos in one request (a wanq extension of OpenAI's create): n = 1 sends nothing, as before.
  const n = form.elements.n.value;
  if (n !== "" && Number(n) !== 1) fields.n = Number(n);
  const file = $("#image").disabled ? null : $("#image").files[0];
  const button = $("#submit-button");
  button.disabled = true;
  say("Submitting…");
  try {
    let response;
    if (file) {
      const data = new FormData();
      for (const [name, value] of Object.entries(fields)) data.append(name, String(value));
      data.append("input_reference", file);
      response = await api("/v1/videos", { method: "POST", body: data });
    } else {
      response = await api("/v1/videos", { method: "POST", json: fields });
    }
    const video = await response.json();
    const ids = video.video_ids || [video.id];
    // The answer is the first job; the others are ordinary videos: fetch them, then show all n, newest on top as
    // the list orders them.
    const others = await Promise.all(ids.slice(1).map(async (id) => (await api(`/v1/videos/${id}`)).json()));
    for (const each of [video, ...others]) addJob(each, { prepend: true });
    say(ids.length > 1 ? `Submitted ${ids.length} videos: ${ids.join(", ")}.` : `Submitted ${video.id}.`);
  } catch (err) {
    say(explain(err), true);
  } finally {
    button.disabled = false;
  }
}

async function cancelJob(id) {
  try {
    update(await (await api(`/v1/videos/${id}/cancel`, { method: "POST" })).json());
    follow(id);
  } catch (err) {
    say(explain(err), true);
  }
}

async function deleteJob(id) {
  const job = jobs.get(id);
  if (!job || !confirm(`Delete “${job.video.prompt.slice(0, 60)}” and its video?`)) return;
  try {
    await api(`/v1/videos/${id}`, { method: "DELETE" });
    forget(id);
    say("Deleted.");
  } catch (err) {
    if (err.status === 404) forget(id);
    else say(explain(err), true);
  }
}

// Key ------------------------------------------------------------------------------------------

function showKeyState() {
  const key = apiKey();
  $("#key-state").textContent = key ? `saved (…${key.slice(-4)})` : "none";
}

function start() {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    $("#api-key").value = "";
    $("#key-panel").open = false;
    showKeyState();
    reload();
    if (key) say("Key saved.");
  });
  $("#key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    showKeyState();
    reload();
    say("Key forgotten.");
  });
  $("#submit-form").addEventListener("submit", submitJob);
  $("#model").addEventListener("change", showModelDefaults);
  $("#refresh").addEventListener("click", () => {
    loadModels();
    refreshJobs();
  });
  showKeyState();
  reload();
}

function reload() {
  for (const id of [...jobs.keys()]) forget(id);
  say("");
  loadModels();
  refreshJobs();
}

start();
