// The playground: sends the prompt to /v1/completions (or /v1/infill when it has [MASK] gaps) with
// stream_mode "denoise", and redraws the canvas from every step's frame. No build step, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const GAP = /\[MASK\](x\d+)?/;
let model = null;
let controller = null;

async function loadModel() {
  const response = await fetch("/v1/models");
  const body = await response.json();
  model = body.data[0];
  $("model").textContent = `${model.id} · ${model.process} · ${model.seq_len} tokens`;
  for (const name of model.samplers) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    option.selected = name === model.default_sampler;
    $("sampler").appendChild(option);
  }
  // the inputs' bounds are the server's own limits (GET /v1/models), never a copy that could drift
  $("steps").max = model.limits.max_steps;
  $("steps-limit").textContent = `\u2264 ${model.limits.max_steps}`;
  showMaxTokens();
}

function showMaxTokens() {
  // the most tokens the chosen sampler writes, prompt included (the server says so if the prompt leaves less)
  const most = model.max_tokens[$("sampler").value];
  $("max_tokens").max = most;
  $("max_tokens-limit").textContent = `\u2264 ${most}`;
}

function insertGap() {
  const area = $("prompt");
  const size = Math.max(1, parseInt($("gap-size").value || "1", 10));
  const gap = size === 1 ? "[MASK]" : `[MASK]x${size}`;
  const at = area.selectionStart ?? area.value.length;
  area.value = area.value.slice(0, at) + gap + area.value.slice(area.selectionEnd ?? at);
  area.focus();
}

function numberOf(id) {
  const value = $(id).value;
  return value === "" ? undefined : Number(value);
}

function requestBody(prompt, infill) {
  const body = { stream: true, stream_mode: "denoise", sampler: $("sampler").value || undefined,
                 steps: numberOf("steps"), temperature: numberOf("temperature"), top_p: numberOf("top_p"),
                 seed: numberOf("seed"), prompt };
  if (!infill) {
    body.model = model.id;
    body.max_tokens = numberOf("max_tokens");
  }
  return body;
}

function draw(canvas, prefix, tokens, changed) {
  const fresh = new Set(changed);
  canvas.replaceChildren();
  if (prefix) {
    const span = document.createElement("span");
    span.className = "fixed";
    span.textContent = prefix;
    canvas.appendChild(span);
  }
  tokens.forEach((piece, i) => {
    const span = document.createElement("span");
    span.textContent = piece;
    if (piece === "\u2592") span.className = "mask";
    else if (fresh.has(i)) span.className = "changed";
    canvas.appendChild(span);
  });
}

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      if (data.length) yield data.join("\n");
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function generate() {
  const canvas = $("canvas");
  const prompt = $("prompt").value;
  const infill = GAP.test(prompt);
  const delay = numberOf("delay") || 0;
  controller = new AbortController();
  const signal = controller.signal;
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("final").hidden = true;
  // nothing of the last run stays on screen to be mistaken for this one's
  canvas.replaceChildren();
  canvas.dataset.state = "running";
  canvas.dataset.frames = "0";
  $("status").textContent = "waiting for a slot…";
  let frames = 0;
  let finalText = "";
  try {
    const response = await fetch(infill ? "/v1/infill" : "/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody(prompt, infill)), signal });
    if (!response.ok) {
      const body = await response.json();
      throw new Error(body.error ? body.error.message : response.statusText);
    }
    for await (const data of sseEvents(response)) {
      // one read can hold many frames (drawn `delay` ms apart): a stop ends them here, not at the next read
      signal.throwIfAborted();
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices.find((c) => c.index === 0);
      if (!choice) continue;
      finalText += choice.text || "";
      if (choice.diffusion) {
        frames += 1;
        canvas.dataset.frames = String(frames);
        draw(canvas, infill ? "" : prompt, choice.diffusion.tokens, choice.diffusion.changed);
        $("status").textContent = `step ${choice.diffusion.step} · t = ${choice.diffusion.t.toFixed(3)}`;
        if (delay) await sleep(delay);
      }
      if (choice.finish_reason) {
        $("status").textContent = `done in ${frames} frames (${choice.finish_reason})`;
      }
    }
    const shown = infill ? finalText : prompt + finalText;
    canvas.replaceChildren(document.createTextNode(shown));
    $("final").textContent = shown;
    canvas.dataset.state = "done";
  } catch (error) {
    const stopped = error.name === "AbortError";
    canvas.dataset.state = stopped ? "stopped" : "error";
    const line = document.createElement("div");
    line.className = "error";
    line.textContent = stopped ? "stopped" : `error: ${error.message}`;
    // stopped: under this run's last frame; an error: instead of a canvas that is no answer to this request
    if (stopped) canvas.appendChild(line);
    else canvas.replaceChildren(line);
    $("status").textContent = line.textContent;
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

$("gap").addEventListener("click", insertGap);
$("sampler").addEventListener("change", showMaxTokens);
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
loadModel().catch((error) => { $("model").textContent = `cannot reach the server: ${error.message}`; });
