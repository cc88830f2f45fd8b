// The reader's page: show the next item, send each answer once, move on. The server decides what comes next
// (the first unanswered item in this reader's order), so a reload, a second tab or a restarted server all
// continue where the reading stands; an answer the server already holds changes nothing there.
"use strict";

const base = "/r/" + location.pathname.split("/")[2];
let state = null;      // the server's last word: {answered, total, done, question, choices, keys, item}
let shownAt = 0;       // performance.now() when the item's images were on screen
let busy = true;       // no answer while an item loads or an answer is on its way

const $ = (id) => document.getElementById(id);

function setStatus(text) { $("status").textContent = text; }

async function request(path, options) {
  // Retry until the server answers: a dropped connection or a server being restarted costs a wait, not an answer.
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await fetch(base + path, Object.assign({ cache: "no-store" }, options));
      if (response.ok) { setStatus(""); return await response.json(); }
      if (response.status < 500) { return null; }   // refused: reload the state instead
    } catch (e) { /* the server is away: wait and try again */ }
    setStatus("connection lost: retrying, your answers are kept");
    await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * (attempt + 1))));
  }
}

function loadImages(urls) {
  return Promise.all(urls.map((url) => new Promise((resolve) => {
    const img = new Image();
    img.alt = "image to read";
    img.onload = () => resolve(img);
    img.onerror = () => resolve(img);
    img.src = url;
  })));
}

function showComplete() {
  $("reading").hidden = true;
  $("complete").hidden = false;
  $("complete-total").textContent = String(state.total);
  $("progress").textContent = state.total + " / " + state.total;
  document.body.dataset.position = "done";
}

async function show(next) {
  if (!next) { setStatus("this link is not valid (ask for yours)"); return; }
  state = next;
  busy = true;
  if (state.done) { showComplete(); return; }
  const images = await loadImages(state.item.images);
  const box = $("images");
  box.className = images.length > 1 ? "pair" : "";
  box.replaceChildren(...images);
  images.forEach((img) => img.addEventListener("click", () => box.classList.toggle("actual")));
  $("question").textContent = state.question;
  $("choices").replaceChildren(...state.choices.map((label, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.dataset.choice = String(i);
    if (state.keys[i].length) { button.title = "key: " + state.keys[i].join(" or "); }
    button.addEventListener("click", () => answer(i));
    return button;
  }));
  $("hint").textContent = "Keys: " + state.keys.map((keys) => keys.map(keyName).join("/")).filter(Boolean).join(", ")
    + ". Click an image for 1:1 pixels.";
  $("progress").textContent = state.item.position + " / " + state.total;
  $("reading").hidden = false;
  $("complete").hidden = true;
  document.body.dataset.position = String(state.item.position);  // for scripts that drive the page
  shownAt = performance.now();
  busy = false;
}

function keyName(key) { return { ArrowLeft: "\u2190", ArrowRight: "\u2192" }[key] || key; }

async function answer(choice) {
  if (busy || !state || state.done) { return; }
  busy = true;
  document.querySelectorAll("#choices button").forEach((b) => { b.disabled = true; });
  const body = JSON.stringify({ item: state.item.key, answer: state.choices[choice],
                                time_ms: Math.round(performance.now() - shownAt) });
  const next = await request("/answer", { method: "POST", headers: { "Content-Type": "application/json" }, body });
  await show(next || await request("/state"));
}

document.addEventListener("keydown", (event) => {
  if (event.repeat || event.ctrlKey || event.altKey || event.metaKey || !state || state.done) { return; }
  const choice = state.keys.findIndex((keys) => keys.includes(event.key));
  if (choice >= 0) { event.preventDefault(); answer(choice); }
});

request("/state").then(show);
