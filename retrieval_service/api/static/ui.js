// The service's web page: no framework, no build step. Every /v1 call carries the bearer token typed into the
// page (kept in sessionStorage, never in a URL); thumbnails are fetched with it and shown through blob URLs.
// Data from the service is only ever set as textContent or attributes, never parsed as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "sjft.token";
  const THUMB_PX = 128;
  const MAX_PARALLEL_THUMBS = 6;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    query: null, // {kind: "files", files: [[name, File]]} or {kind: "source", sourceId}
    offset: 0,
    thumbs: new Map(), // source_id -> Promise<blob URL>
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "text") node.textContent = value;
      else if (key === "on") Object.entries(value).forEach(([ev, fn]) => node.addEventListener(ev, fn));
      else node.setAttribute(key, value);
    }
    children.filter((c) => c != null).forEach((c) => node.append(c));
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    Object.entries(attrs).forEach(([key, value]) => node.setAttribute(key, value));
    return node;
  }

  function status(message, isError = false) {
    $("status").textContent = message;
    $("status").className = isError ? "error" : "muted";
  }

  // -- the service

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
    const response = await fetch(path, { ...options, headers });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try {
        const body = await response.json();
        if (body && body.error) message = `${body.error.message} (${body.error.code}, HTTP ${response.status})`;
      } catch (_) { /* not the JSON error shape: keep the status line */ }
      throw new Error(message);
    }
    return response;
  }

  let running = 0;
  const waiting = [];
  async function limited(task) {
    // A grid of 100 thumbnails must not open 100 requests at once on a shared service.
    if (running >= MAX_PARALLEL_THUMBS) await new Promise((resolve) => waiting.push(resolve));
    running += 1;
    try { return await task(); } finally { running -= 1; if (waiting.length) waiting.shift()(); }
  }

  function thumbnail(sourceId) {
    if (!state.thumbs.has(sourceId)) {
      const url = limited(async () => {
        const response = await api(`v1/sources/${sourceId}?size=${THUMB_PX}`);
        return URL.createObjectURL(await response.blob());
      });
      url.catch(() => state.thumbs.delete(sourceId)); // a failed fetch is retried next time it is shown
      state.thumbs.set(sourceId, url);
    }
    return state.thumbs.get(sourceId);
  }

  function thumbImage(sourceId, alt) {
    const img = el("img", { class: "thumb", alt, width: THUMB_PX, height: THUMB_PX });
    img.addEventListener("load", () => img.setAttribute("data-loaded", "1"));
    thumbnail(sourceId).then((url) => { img.src = url; }).catch((err) => {
      img.setAttribute("data-error", err.message);
      img.title = err.message;
    });
    return img;
  }

  async function loadIndexInfo() {
    try {
      const info = await (await api("v1/index")).json();
      $("index-info").textContent =
        `index: ${info.size.toLocaleString()} sources, ${info.classes.length} classes, ${info.bank} bank, ` +
        `spec ${info.spec_hash.slice(0, 12)}`;
      $("index-info").className = "muted";
    } catch (err) {
      $("index-info").textContent = `index: ${err.message}`;
      $("index-info").className = "error";
    }
  }

  // -- neighbors

  function settings() {
    const k = Math.max(1, Math.min(200, parseInt($("k").value, 10) || 12));
    $("k").value = k;
    return { k, metric: $("metric").value };
  }

  async function search(append) {
    if (!state.query) return;
    const { k, metric } = settings();
    status(append ? "loading more..." : "searching...");
    try {
      let response;
      if (state.query.kind === "files") {
        const form = new FormData();
        state.query.files.forEach(([name, file]) => form.append("files", file, name));
        form.append("k", k);
        form.append("offset", state.offset);
        form.append("metric", metric);
        response = await api("v1/neighbors/upload", { method: "POST", body: form });
      } else {
        const id = state.query.sourceId;
        const body = { queries: [{ id: `source ${id}`, source_id: id }], k, offset: state.offset, metric };
        response = await api("v1/neighbors", {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
        });
      }
      const data = await response.json();
      render(data.results, append);
      const found = data.results.reduce((n, r) => n + r.neighbors.length, 0);
      status(`${found} neighbors (${metric}, ranks ${state.offset + 1}-${state.offset + k}) ` +
        `in ${data.took_ms.toFixed(1)} ms${data.cached ? ", cached" : ""}`);
      $("more").disabled = found === 0;
    } catch (err) {
      status(err.message, true);
    }
  }

  function start(query) {
    state.query = query;
    state.offset = 0;
    search(false);
  }

  function queryImage(result) {
    if (state.query.kind === "source") return thumbImage(state.query.sourceId, result.id);
    const file = state.query.files.find(([name]) => name === result.id);
    const img = el("img", { class: "query-image", alt: result.id });
    if (file) {
      img.src = URL.createObjectURL(file[1]);
      img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
    }
    return img;
  }

  function card(neighbor, rank) {
    return el("figure", {
      class: "card", "data-source-id": neighbor.source_id, tabindex: "0",
      title: "show this source's own neighbors",
      on: {
        click: () => start({ kind: "source", sourceId: neighbor.source_id }),
        keydown: (e) => { if (e.key === "Enter") start({ kind: "source", sourceId: neighbor.source_id }); },
      },
    },
    thumbImage(neighbor.source_id, `source ${neighbor.source_id}`),
    el("figcaption", {},
      el("span", { class: "distance", "data-distance": neighbor.distance, text: neighbor.distance.toFixed(4) }),
      el("span", { class: "class-name", text: neighbor.class_name }),
      el("span", { class: "source-id", text: `#${neighbor.source_id} (rank ${rank})` })));
  }

  function render(results, append) {
    const container = $("results");
    if (!append) container.replaceChildren();
    for (const result of results) {
      let section = [...container.querySelectorAll(".result")].find((s) => s.dataset.queryId === result.id);
      if (!section) {
        section = el("section", { class: "result", "data-query-id": result.id },
          el("div", { class: "query" }, queryImage(result), el("h2", { text: result.id })),
          el("div", { class: "grid" }));
        container.append(section);
      }
      const grid = section.querySelector(".grid");
      result.neighbors.forEach((n, i) => grid.append(card(n, state.offset + i + 1)));
    }
  }

  function pickFiles(fileList) {
    const files = [...fileList].filter((f) => f.type.startsWith("image/") || f.type === "");
    if (!files.length) { status("no image files in that selection", true); return; }
    const seen = new Map(); // result ids are file names and must be unique within a request
    const named = files.map((file) => {
      const count = (seen.get(file.name) || 0) + 1;
      seen.set(file.name, count);
      return [count > 1 ? `${count}-${file.name}` : file.name, file];
    });
    start({ kind: "files", files: named });
  }

  // -- jobs

  function chart(points) {
    // Accuracy per round: mean class accuracy (solid) and top-1 (dashed), y from 0 to 1.
    const w = 260, h = 96, pad = 6;
    const root = svg("svg", { class: "chart", viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: "img" });
    root.append(svg("rect", { x: 0, y: 0, width: w, height: h, class: "chart-bg" }));
    const maxRound = Math.max(1, ...points.map((p) => p.round));
    const x = (r) => pad + (r / maxRound) * (w - 2 * pad);
    const y = (v) => h - pad - v * (h - 2 * pad);
    for (const [key, cls] of [["mean_class_acc", "line-mca"], ["top1", "line-top1"]]) {
      const pts = points.filter((p) => typeof p[key] === "number");
      if (!pts.length) continue;
      root.append(svg("polyline", {
        class: cls, "data-series": key, points: pts.map((p) => `${x(p.round)},${y(p[key])}`).join(" "),
      }));
      pts.forEach((p) => root.append(svg("circle", { class: cls, cx: x(p.round), cy: y(p[key]), r: 2.5 })));
    }
    [["1.0", pad + 8], ["0.0", h - pad]].forEach(([text, yy]) => {
      const label = svg("text", { x: w - pad, y: yy, class: "axis", "text-anchor": "end" });
      label.textContent = text;
      root.append(label);
    });
    [["mean class acc", "line-mca", 14], ["top-1", "line-top1", 26]].forEach(([text, cls, yy]) => {
      root.append(svg("line", { x1: pad + 2, x2: pad + 16, y1: yy - 4, y2: yy - 4, class: cls }));
      const label = svg("text", { x: pad + 20, y: yy, class: "legend" });
      label.textContent = text;
      root.append(label);
    });
    const title = svg("title");
    title.textContent = points.map((p) => `round ${p.round}: ${fmt(p.mean_class_acc)} / ${fmt(p.top1)}`).join("\n");
    root.append(title);
    return root;
  }

  const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : "-");

  function jobSources(metrics) {
    for (const key of ["source_ids", "sources", "selected_source_ids"]) {
      const ids = metrics[key];
      if (Array.isArray(ids) && ids.every(Number.isInteger)) return ids;
    }
    return null;
  }

  function jobView(job) {
    const rounds = job.events.filter((e) => e.type === "round")
      .map((e) => ({ round: e.round ?? 0, ...e.metrics }));
    const table = el("table", { class: "rounds" },
      el("tr", {}, ...["round", "mean class acc", "top-1", "sources in use", "mean K"].map((t) => el("th", { text: t }))));
    rounds.forEach((r) => table.append(el("tr", {},
      ...[r.round, fmt(r.mean_class_acc), fmt(r.top1), r.sources_in_use ?? "-", r.k_mean ?? "-"]
        .map((v) => el("td", { text: String(v) })))));
    const last = job.last_metrics || {};
    const ids = jobSources(last);
    let sources;
    if (ids) {
      sources = el("div", { class: "grid small" }, ...ids.slice(0, 48).map((id) => el("figure", {
        class: "card", "data-source-id": id, title: "show this source's neighbors",
        on: { click: () => { showTab("neighbors"); start({ kind: "source", sourceId: id }); } },
      }, thumbImage(id, `source ${id}`))));
    } else {
      const text = "sources in use" in last ? `${last.sources_in_use} sources in use (the events list no ids)`
        : "the job's events list no sources";
      sources = el("p", { class: "muted", text });
    }
    return el("article", { class: "job", "data-job-id": job.job_id },
      el("h3", {}, el("span", { class: "job-name", text: job.name }),
        el("span", { class: `badge ${job.status}`, text: job.status })),
      el("p", { class: "muted", text: `${job.rounds} rounds; target ${job.target || "-"}; ` +
        `created ${job.created}; updated ${job.updated}` }),
      rounds.length ? chart(rounds) : el("p", { class: "muted", text: "no rounds reported yet" }),
      rounds.length ? table : null,
      el("h4", { text: "sources" }), sources,
      el("details", {}, el("summary", { text: "configuration" }),
        el("pre", { text: JSON.stringify(job.config, null, 2) })));
  }

  async function loadJobs() {
    status("loading jobs...");
    try {
      // The listing is a summary per job; the rounds (events) come with each job's full record.
      const { jobs: listed } = await (await api("v1/jobs?limit=50")).json();
      const jobs = await Promise.all(listed.map(async (j) => (await api(`v1/jobs/${j.job_id}`)).json()));
      $("jobs").replaceChildren(...(jobs.length ? jobs.map(jobView)
        : [el("p", { class: "muted", text: "no training job has registered with this service" })]));
      status(`${jobs.length} jobs`);
    } catch (err) {
      status(err.message, true);
    }
  }

  // -- wiring

  function showTab(name) {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.tab === name));
    document.querySelectorAll(".panel").forEach((p) => { p.hidden = p.id !== `panel-${name}`; });
    if (name === "jobs") loadJobs();
  }

  function init() {
    $("token").value = state.token;
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault(); // never submit: the token must not end up in a URL
      state.token = $("token").value.trim();
      sessionStorage.setItem(TOKEN_KEY, state.token);
      state.thumbs.clear();
      loadIndexInfo();
      status(state.token ? "token set for this tab" : "token cleared");
    });
    document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => showTab(t.dataset.tab)));
    $("files").addEventListener("change", (e) => pickFiles(e.target.files));
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      pickFiles(e.dataTransfer.files);
    });
    $("metric").addEventListener("change", () => start(state.query));
    $("k").addEventListener("change", () => start(state.query));
    $("more").addEventListener("click", () => { state.offset += settings().k; search(true); });
    $("jobs-refresh").addEventListener("click", loadJobs);
    loadIndexInfo();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
