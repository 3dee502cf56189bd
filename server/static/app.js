// The web page's client: it calls POST /invocations exactly as any SageMaker client would.
// One image is sent twice, concurrently: with Accept: image/jpeg for the segmented picture,
// and with Accept: application/json (plus "include": ["scores"]) for the table. Both carry
// the same score threshold and class filter in X-Amzn-SageMaker-Custom-Attributes, so they
// describe the same detections. The class filter offers the classes /ping lists for the
// served model. No framework, no build step.
"use strict";

(() => {
  const ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes";
  // Content types /invocations accepts; anything else goes as application/x-image and the
  // server sniffs the bytes (and says so legibly if it cannot decode them).
  const IMAGE_TYPES = new Set(["image/jpeg", "image/png"]);
  const PING_RETRY_MS = 1000;
  const RERUN_DEBOUNCE_MS = 250; // a slider drag or a few quick ticks make one run, not many

  const $ = (id) => document.getElementById(id);
  const ui = {
    modelStatus: $("model-status"),
    demoNotice: $("demo-notice"),
    dropzone: $("dropzone"),
    file: $("file"),
    fileName: $("file-name"),
    sample: $("sample"),
    threshold: $("threshold"),
    thresholdValue: $("threshold-value"),
    classFilter: $("class-filter"),
    classList: $("class-list"),
    classesAll: $("classes-all"),
    classesNone: $("classes-none"),
    status: $("status"),
    error: $("error"),
    errorTitle: $("error-title"),
    errorMessage: $("error-message"),
    result: $("result"),
    image: $("segmented"),
    caption: $("caption"),
    download: $("download"),
    tableCaption: $("table-caption"),
    rows: document.querySelector("#detections tbody"),
  };

  let current = null; // {blob, name}: the image being shown
  let controller = null; // aborts the requests of a run that a newer run replaces
  let runId = 0;
  let imageUrl = null;
  let rerunTimer = null;

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // The colour engine/render.py gives the index-th detection (its _make_palette: golden-ratio
  // hue steps, saturation 0.85, brightness alternating 1.0 / 0.8), so a table row's swatch
  // matches its mask in the picture. tests/test_web_page.py checks the two stay equal.
  const PALETTE_SIZE = 48;
  function instanceColour(index) {
    const i = index % PALETTE_SIZE;
    const h = (i * 0.618033988749895) % 1.0;
    const s = 0.85;
    const v = i % 2 === 0 ? 1.0 : 0.8;
    const sector = Math.floor(h * 6.0);
    const f = h * 6.0 - sector;
    const p = v * (1.0 - s);
    const q = v * (1.0 - s * f);
    const t = v * (1.0 - s * (1.0 - f));
    const rgb = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][sector % 6];
    return rgb.map((c) => roundHalfEven(c * 255));
  }

  function roundHalfEven(x) { // Python's round()
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  // ---- talking to the server ------------------------------------------------------------

  async function invoke(blob, accept, attributes, signal) {
    const type = IMAGE_TYPES.has(blob.type) ? blob.type : "application/x-image";
    const resp = await fetch("/invocations", {
      method: "POST",
      body: blob,
      headers: {
        "Content-Type": type,
        "Accept": accept,
        [ATTRIBUTES_HEADER]: JSON.stringify(attributes),
      },
      signal,
    });
    if (!resp.ok) {
      throw await readError(resp);
    }
    return resp;
  }

  // Every error the app sends is JSON {"error": message, "status": code}; a proxy's or
  // waitress's own (e.g. a plain-text 413) may not be, so fall back to the text.
  async function readError(resp) {
    const text = await resp.text();
    let message = text.trim() || resp.statusText || "request failed";
    try {
      const body = JSON.parse(text);
      if (body && typeof body.error === "string") {
        message = body.error;
      }
    } catch (_notJson) {
      // keep the plain text
    }
    return new ApiError(resp.status, message);
  }

  function responseAttributes(resp) {
    try {
      return JSON.parse(resp.headers.get(ATTRIBUTES_HEADER) || "{}");
    } catch (_notJson) {
      return {};
    }
  }

  // The notice as the server words it, with `command` spans shown as code.
  function showNotice(element, text) {
    const sentence = text ? `${text.charAt(0).toUpperCase()}${text.slice(1)}.` : "";
    element.replaceChildren(...sentence.split("`").map((part, i) => {
      if (i % 2 === 0) {
        return document.createTextNode(part);
      }
      const code = document.createElement("code");
      code.textContent = part;
      return code;
    }));
  }

  async function pollModel() {
    let retry = true;
    try {
      const resp = await fetch("/ping", { cache: "no-store" });
      if (resp.ok) {
        const info = await resp.json();
        ui.modelStatus.textContent = `Model ${info.model} on ${info.backend}`;
        ui.modelStatus.dataset.state = "ready";
        showClasses(info.classes || []);
        // The bundled demo model gives confident nonsense on real photos: say so up front.
        ui.demoNotice.hidden = !info.demo;
        showNotice(ui.demoNotice, info.demo ? info.notice : "");
        retry = false;
      } else {
        const err = await readError(resp);
        ui.modelStatus.textContent = resp.status === 503 ? "The model is loading\u2026" : `Server: ${err.message}`;
        ui.modelStatus.dataset.state = "loading";
      }
    } catch (_networkError) {
      ui.modelStatus.textContent = "The server cannot be reached; retrying\u2026";
      ui.modelStatus.dataset.state = "down";
    }
    if (retry) {
      setTimeout(pollModel, PING_RETRY_MS);
    }
  }

  // ---- the class filter --------------------------------------------------------------------

  function showClasses(names) {
    ui.classList.replaceChildren(...names.map((name) => {
      const input = document.createElement("input");
      input.type = "checkbox";
      input.name = "class";
      input.value = name;
      input.checked = true;
      const text = document.createElement("span");
      text.textContent = name;
      const label = document.createElement("label");
      label.append(input, text);
      const item = document.createElement("li");
      item.append(label);
      return item;
    }));
    ui.classFilter.hidden = names.length === 0;
  }

  function classBoxes() {
    return [...ui.classList.querySelectorAll("input[type=checkbox]")];
  }

  // The ticked class names, or null when every class is ticked: then no filter is sent (the
  // API's default), which also keeps the header short for a model with many classes.
  function chosenClasses() {
    const boxes = classBoxes();
    const ticked = boxes.filter((box) => box.checked).map((box) => box.value);
    return ticked.length === boxes.length ? null : ticked;
  }

  function tickAll(checked) {
    classBoxes().forEach((box) => { box.checked = checked; });
    rerunSoon();
  }

  // ---- one run: an image, a threshold and classes -> picture and table ----------------------

  async function segment() {
    if (!current) {
      return;
    }
    if (controller) {
      controller.abort();
    }
    controller = new AbortController();
    const { signal } = controller;
    const id = ++runId;
    const threshold = Number(ui.threshold.value);
    const classes = chosenClasses();
    showError(null);
    if (classes && classes.length === 0) {
      // The API refuses an empty filter (it would keep nothing): say what to do instead.
      ui.status.textContent = "No class is ticked: tick at least one to segment the image.";
      ui.result.hidden = true;
      setBusy(false);
      return;
    }
    setBusy(true);
    ui.status.textContent = `Segmenting ${current.name}\u2026`;
    const attributes = { score_threshold: threshold };
    if (classes) {
      attributes.classes = classes;
    }
    try {
      const [picture, table] = await Promise.all([
        invoke(current.blob, "image/jpeg", attributes, signal),
        invoke(current.blob, "application/json", { ...attributes, include: ["scores"] }, signal),
      ]);
      const [blob, result] = await Promise.all([picture.blob(), table.json()]);
      if (id !== runId) {
        return;
      }
      showPicture(blob, result.labels.length);
      showTable(result, threshold, classes);
      const ms = responseAttributes(table).inference_ms;
      const count = plural(result.labels.length, "object");
      ui.status.textContent = `${count} at score \u2265 ${threshold.toFixed(2)} in ${current.name}` +
        (classes ? `, ${classes.length} of ${classBoxes().length} classes` : "") +
        (typeof ms === "number" ? ` (inference ${Math.round(ms)} ms).` : ".");
    } catch (err) {
      if (id !== runId || err.name === "AbortError") {
        return;
      }
      controller.abort(); // the other request of the pair is no use now
      ui.status.textContent = "";
      ui.result.hidden = true; // no stale picture or table next to the error
      showError(err);
    } finally {
      if (id === runId) {
        setBusy(false);
      }
    }
  }

  function setBusy(busy) {
    ui.result.setAttribute("aria-busy", String(busy));
    document.body.classList.toggle("busy", busy);
  }

  function showError(err) {
    if (!err) {
      ui.error.hidden = true;
      return;
    }
    if (err instanceof ApiError) {
      ui.errorTitle.textContent = `Error ${err.status}:`;
      ui.errorMessage.textContent = err.message;
    } else {
      ui.errorTitle.textContent = "Could not reach the server:";
      ui.errorMessage.textContent = err.message || String(err);
    }
    ui.error.hidden = false;
  }

  function setImage(blob) {
    if (imageUrl) {
      URL.revokeObjectURL(imageUrl);
    }
    imageUrl = URL.createObjectURL(blob);
    ui.image.src = imageUrl;
    return imageUrl;
  }

  function showPicture(blob, count) {
    const url = setImage(blob);
    ui.image.alt = `${current.name} with ${plural(count, "detected object")} outlined and coloured`;
    ui.caption.textContent = "Segmented by the server (JPEG).";
    ui.download.href = url;
    ui.download.download = `${current.name.replace(/\.[^.]+$/, "")}-segmented.jpg`;
    ui.download.hidden = false;
    ui.result.hidden = false;
  }

  function showTable(result, threshold, classes) {
    const { labels, boxes, scores } = result;
    ui.tableCaption.textContent = `${plural(labels.length, "detection")}, highest score first`;
    const rows = labels.map((label, i) => {
      const tr = document.createElement("tr");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = `rgb(${instanceColour(i).join(", ")})`;
      swatch.setAttribute("aria-hidden", "true");
      const name = document.createElement("span");
      name.className = "class-name";
      name.textContent = className(label);
      const labelCell = cell("td", "", null, "label");
      labelCell.append(swatch, name);
      tr.append(
        cell("th", String(i + 1), "row"),
        labelCell,
        cell("td", `${(scores[i] * 100).toFixed(1)}%`, null, "num"),
        cell("td", boxes[i].map((v) => Math.round(v)).join(", "), null, "num box"),
      );
      return tr;
    });
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const which = classes ? "Nothing of the ticked classes" : "Nothing";
      const td = cell("td", `${which} scored ${threshold.toFixed(2)} or more. Lower the threshold to see weaker detections.`);
      td.colSpan = 4;
      td.className = "empty";
      tr.append(td);
      rows.push(tr);
    }
    ui.rows.replaceChildren(...rows);
  }

  function cell(tag, text = "", scope = null, className = "") {
    const el = document.createElement(tag);
    el.textContent = text;
    if (scope) {
      el.scope = scope;
    }
    if (className) {
      el.className = className;
    }
    return el;
  }

  // The API's label is "<class name> <score as a whole percent>%".
  function className(label) {
    return label.replace(/ \d+%$/, "");
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  // ---- choosing an image -----------------------------------------------------------------

  function useImage(blob, name) {
    current = { blob, name };
    ui.fileName.textContent = name;
    // Show the original at once; the segmented picture replaces it when it arrives.
    setImage(blob);
    ui.image.alt = `${name}, being segmented`;
    ui.caption.textContent = "Original; segmenting\u2026";
    ui.download.hidden = true;
    ui.tableCaption.textContent = "Detections";
    ui.rows.replaceChildren();
    ui.result.hidden = false;
    segment();
  }

  ui.file.addEventListener("change", () => {
    const file = ui.file.files[0];
    if (file) {
      useImage(file, file.name);
    }
    ui.file.value = ""; // choosing the same file again should run again
  });

  // sample.jpg: demo.shapes.generate_scene(2_000_019, width=640, height=480) as a JPEG of
  // quality 90, a scene the demo model never saw in training (seeds >= 10_000_000).
  ui.sample.addEventListener("click", async () => {
    try {
      const resp = await fetch("/static/sample.jpg");
      if (!resp.ok) {
        throw await readError(resp);
      }
      useImage(await resp.blob(), "sample.jpg");
    } catch (err) {
      showError(err);
    }
  });

  function rerunSoon() {
    clearTimeout(rerunTimer);
    rerunTimer = setTimeout(segment, RERUN_DEBOUNCE_MS);
  }

  ui.threshold.addEventListener("input", () => {
    ui.thresholdValue.textContent = Number(ui.threshold.value).toFixed(2);
    rerunSoon();
  });
  ui.classList.addEventListener("change", rerunSoon);
  ui.classesAll.addEventListener("click", () => tickAll(true));
  ui.classesNone.addEventListener("click", () => tickAll(false));

  // Drop anywhere on the page; without preventDefault the browser would open the file.
  let dragDepth = 0;
  window.addEventListener("dragenter", (e) => {
    e.preventDefault();
    dragDepth += 1;
    ui.dropzone.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) {
      ui.dropzone.classList.remove("dragging");
    }
  });
  window.addEventListener("dragover", (e) => {
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    dragDepth = 0;
    ui.dropzone.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (file) {
      useImage(file, file.name);
    }
  });

  ui.thresholdValue.textContent = Number(ui.threshold.value).toFixed(2);
  window.maskrcnnPage = { instanceColour }; // for tests
  pollModel();
})();
