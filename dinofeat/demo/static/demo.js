// dinofeat demo page: no framework, just fetch() against the JSON API of dinofeat/demo/app.py.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;  // the last analysis: image_id, original_size, model

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function call(url, options) {
  const response = await fetch(url, options);
  let body;
  try { body = await response.json(); } catch (e) { body = {error: `server answered ${response.status}`}; }
  if (!response.ok) { throw new Error(body.error || `server answered ${response.status}`); }
  return body;
}

async function withBusy(what, work) {
  $("busy").textContent = what;
  showError("");
  try { return await work(); } catch (error) { showError(error.message); } finally { $("busy").textContent = ""; }
}

function showStatus(status) {
  $("status").textContent = status.message;
  $("status").className = status.state;
  $("model").value = status.state === "error" ? status.active : status.requested;
}

function showAnalysis(result) {
  current = result;
  $("picture").src = result.picture;
  $("pca").src = result.pca;
  $("similarity").removeAttribute("src");
  $("similarity-caption").textContent = "Similarity to the clicked patch (click the image)";
  if (result.attention) { $("attention").src = result.attention; } else { $("attention").removeAttribute("src"); }
  $("attention-note").textContent = result.attention_note;
  const panel = $("neighbours-panel");
  panel.hidden = !result.neighbours;
  $("neighbours").replaceChildren();
  if (result.neighbours) {
    $("neighbours-message").textContent = result.neighbours.message;
    for (const hit of result.neighbours.hits) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = `/api/neighbour/${hit.position}`;
      img.alt = hit.name;
      const caption = document.createElement("figcaption");
      caption.textContent = `${hit.name} (${hit.score.toFixed(3)})`;
      figure.append(img, caption);
      $("neighbours").append(figure);
    }
  }
}

async function analyse(query, body, headers) {
  await withBusy("computing...", async () => {
    showAnalysis(await call(`/api/analyse${query}`, {method: "POST", body, headers}));
  });
}

$("sample").addEventListener("change", () => {
  const name = $("sample").value;
  if (name) { analyse(`?sample=${encodeURIComponent(name)}`); }
});

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (file) { analyse("", file, {"X-Filename": file.name, "Content-Type": "application/octet-stream"}); }
});

$("picture").addEventListener("click", async (event) => {
  if (!current) { return; }
  const box = $("picture").getBoundingClientRect();
  const [width, height] = current.original_size;
  const x = (event.clientX - box.left) / box.width * width;
  const y = (event.clientY - box.top) / box.height * height;
  await withBusy("computing...", async () => {
    const result = await call("/api/similarity", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({image_id: current.image_id, x, y}),
    });
    $("similarity").src = result.similarity;
    $("similarity-caption").textContent =
      `Similarity to the patch at (${x.toFixed(0)}, ${y.toFixed(0)}), patch ${result.patch.join(", ")}`;
  });
});

async function pollModel() {
  const status = await call("/api/model");
  showStatus(status);
  if (status.state === "loading") { setTimeout(() => pollModel().catch((e) => showError(e.message)), 500); return; }
  if (status.state === "ready" && current && current.model !== status.active) {
    analyse(`?image_id=${current.image_id}`);
  }
}

$("load-model").addEventListener("click", async () => {
  await withBusy("", async () => {
    showStatus(await call("/api/model", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({name: $("model").value}),
    }));
    await pollModel();
  });
});

(async () => {
  await withBusy("starting...", async () => {
    const state = await call("/api/state");
    for (const name of state.models) { $("model").append(new Option(name, name)); }
    for (const name of state.samples) { $("sample").append(new Option(name, name)); }
    showStatus(state.status);
    document.body.dataset.ready = "1";
  });
})();
