// vistag web page: vanilla JS against the JSON API of the same server. No build step, no network
// beyond this origin. Every value from the server is put in the page as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  limits: null, detailId: null, previewUrl: null, writesEnabled: false,
  dupPending: [], dupThreshold: null, dupTotal: 0, dupNote: "",
};

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function baseName(uri) {
  const parts = uri.split(/[\\/]/);
  return parts[parts.length - 1] || uri;
}

// tags: the calibrated confidence is what a person reads; the raw score (not comparable across
// labels or methods: ZLaP's are ~0.001) stays in the tooltip
function confidenceText(tag) {
  return tag.confidence == null ? "" : `${Math.round(tag.confidence * 100)}%`;
}

function rawScoreText(tag) {
  return `raw ${tag.method} score ${tag.score.toPrecision(3)}`;
}

function showNotice(message, isError = false) {
  const notice = $("notice");
  notice.textContent = message;
  notice.classList.toggle("error", isError);
  notice.hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    const error = new Error(body.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function explain(error) {
  if (error.status === 503) return `${error.message} — publish an index with: vistag index PATH`;
  return error.message;
}

// -- query state lives in the URL hash, so searches can be bookmarked and the back button works --
function filterParams() {
  const params = new URLSearchParams();
  for (const id of [...FILTER_IDS, "k"]) {
    const value = $(id).value.trim();
    if (value) params.set(id, value);
  }
  return params;
}

function setHash(params) {
  const hash = "#" + params.toString();
  if (location.hash === hash) run();
  else location.hash = hash;
}

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  $("q").value = params.get("q") || "";
  if (params.get("tag")) ensureTagOption(params.get("tag"));
  for (const id of FILTER_IDS) $(id).value = params.get(id) || "";
  if (params.get("k")) $("k").value = params.get("k");
  showActiveFilters();
  return params;
}

async function run() {
  const params = readHash();
  if (params.get("view") === "duplicates") {
    showView("duplicates");
    await loadDuplicates(params);
    return;
  }
  showView("search");
  const filters = filterParams();
  if (params.get("similar")) {
    const id = params.get("similar");
    await searchWith(`/api/similar/${encodeURIComponent(id)}?${filters}`, similarHeading(id));
  } else if (params.get("q")) {
    filters.set("q", params.get("q"));
    await searchWith(`/api/search?${filters}`, textHeading(params.get("q")));
  } else {
    $("grid").replaceChildren();
    $("heading").replaceChildren(el("span", { textContent: "Type what you are looking for, or search by an example image." }));
  }
}

function textHeading(q) {
  return [el("span", { textContent: "Results for " }), el("strong", { textContent: `“${q}”` })];
}

function similarHeading(id) {
  return [el("img", { src: `/api/images/${encodeURIComponent(id)}/thumbnail?size=128`, alt: "" }),
    el("span", { textContent: "More like image " }), el("strong", { textContent: `#${id}` })];
}

async function searchWith(url, heading, options = {}) {
  showNotice("");
  $("grid").setAttribute("aria-busy", "true");
  try {
    const result = await api(url, options);
    $("heading").replaceChildren(...heading,
      el("span", { textContent: ` · ${result.hits.length} shown · ${result.took_ms.toFixed(1)} ms` }));
    renderGrid(result.hits);
  } catch (error) {
    $("grid").replaceChildren();
    $("heading").replaceChildren();
    showNotice(explain(error), true);
  } finally {
    $("grid").removeAttribute("aria-busy");
  }
}

// -- results grid --
function renderGrid(hits) {
  if (!hits.length) {
    $("grid").replaceChildren(el("p", { className: "empty", textContent: "No matching images." }));
    return;
  }
  $("grid").replaceChildren(...hits.map(card));
}

function card(hit) {
  const name = baseName(hit.uri);
  const chips = hit.tags.map((tag) => el("span", {
    className: "chip", title: `${tag.label}: ${rawScoreText(tag)} — filter by this tag`,
    dataset: { tag: tag.label }, role: "button", tabIndex: 0,
  }, [tag.label, el("span", { className: "conf", textContent: confidenceText(tag) })]));
  return el("div", { className: "card", role: "button", tabIndex: 0, title: hit.uri, dataset: { id: hit.id } }, [
    el("img", { src: `${hit.thumbnail}?size=256`, alt: name, loading: "lazy", width: 256, height: 256 }),
    el("div", { className: "meta" }, [
      el("span", { className: "name", textContent: name }),
      el("span", { className: "score", textContent: hit.score.toFixed(3), title: "cosine similarity" }),
    ]),
    el("div", { className: "tags" }, chips),
  ]);
}

function onGridActivate(event) {
  const chip = event.target.closest(".chip");
  if (chip) {
    ensureTagOption(chip.dataset.tag);
    $("tag").value = chip.dataset.tag;
    refresh();
    return;
  }
  const item = event.target.closest(".card");
  if (item) openDetail(item.dataset.id);
}

// -- details dialog --
async function openDetail(id) {
  try {
    const image = await api(`/api/images/${encodeURIComponent(id)}`);
    state.detailId = image.id;
    $("detail-img").src = `${image.thumbnail}?size=512`;
    $("detail-img").alt = baseName(image.uri);
    $("detail-name").textContent = baseName(image.uri);
    $("detail-meta").replaceChildren(...metaRows(image));
    $("detail-tags").replaceChildren(...(image.tags.length ? image.tags.map((tag) => el("li", { dataset: { label: tag.label } }, [
      el("span", { textContent: tag.label }),
      el("span", { className: "conf", textContent: confidenceText(tag) || tag.score.toPrecision(3), title: rawScoreText(tag) }),
    ])) : [el("li", { textContent: "No tags yet (no tag run)." })]));
    showCorrections(image);
    if (!$("detail").open) $("detail").showModal();
  } catch (error) {
    showNotice(explain(error), true);
  }
}

function metaRows(image) {
  const rows = [
    ["id", String(image.id)],
    ["path", image.uri],
    ["size", image.width && image.height ? `${image.width} × ${image.height} px` : "unknown"],
    ["bytes", image.size != null ? image.size.toLocaleString() : "unknown"],
    ["modified", image.mtime ? new Date(image.mtime * 1000).toLocaleString() : "unknown"],
    // in UTC, as the date filters read dates: a time recorded with its offset is converted, one
    // without is stored as UTC (so it shows the camera's clock)
    ["taken", image.taken != null ? `${new Date(image.taken * 1000).toISOString().slice(0, 19).replace("T", " ")} UTC` : null],
    ["camera", image.camera],
    ["lens", image.lens],
    ["place", image.lat != null && image.lon != null ? `${image.lat.toFixed(5)}, ${image.lon.toFixed(5)}` : null],
    ["keywords", image.keywords && image.keywords.length ? image.keywords.join(", ") : null],
    ["sha256", image.sha256 || ""],
  ];
  return rows.filter(([, value]) => value != null)  // unknown photo metadata is left out
    .flatMap(([key, value]) => [el("dt", { textContent: key }), el("dd", { textContent: value })]);
}

function moreLikeThis() {
  $("detail").close();
  const params = filterParams();
  params.set("similar", state.detailId);
  $("q").value = "";
  setHash(params);
}

// -- search by example image (sent to the server, never stored there) --
async function searchByUpload() {
  const file = $("upload").files[0];
  if (!file) return;
  const limit = state.limits ? state.limits.max_upload_bytes : Infinity;
  if (file.size > limit) {
    showNotice(`That file is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${(limit / 1e6).toFixed(0)} MB.`, true);
    return;
  }
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const form = new FormData();
  form.append("file", file);
  const heading = [el("img", { src: state.previewUrl, alt: "" }), el("span", { textContent: "Similar to " }),
    el("strong", { textContent: file.name })];
  history.replaceState(null, "", location.pathname);
  await searchWith(`/api/search/image?${filterParams()}`, heading, { method: "POST", body: form });
  $("upload").value = "";
}

// -- duplicates view: each group side by side with the suggested keeper marked; a decision is sent
// with the write token (kept in this tab's sessionStorage only) and the group leaves the view --
const TOKEN_KEY = "vistag-write-token";
const DUP_PAGE = 40;  // groups rendered at a time (each shows every member's thumbnail)
const KIND_NAMES = { exact: "Exact copies", near: "Near copies", similar: "Similar shots" };

function showView(name) {
  const duplicates = name === "duplicates";
  $("dup-view").hidden = !duplicates;
  for (const id of ["filters", "heading", "grid"]) $(id).hidden = duplicates;
  for (const [id, on] of [["duplicates-link", duplicates], ["search-link", !duplicates]]) {
    $(id).classList.toggle("active", on);
    if (on) $(id).setAttribute("aria-current", "page");
    else $(id).removeAttribute("aria-current");
  }
}

function showDuplicates() {
  const params = new URLSearchParams({ view: "duplicates", kind: $("dup-kind").value });
  const threshold = $("dup-threshold").value.trim();
  if (threshold) params.set("threshold", threshold);
  setHash(params);
}

async function loadDuplicates(params) {
  showNotice("");
  const query = new URLSearchParams({ kind: params.get("kind") || "all" });
  $("dup-kind").value = query.get("kind");
  $("dup-threshold").value = params.get("threshold") || "";
  state.dupThreshold = params.get("threshold") ? Number(params.get("threshold")) : null;
  if (state.dupThreshold != null) query.set("threshold", String(state.dupThreshold));
  $("dup-groups").replaceChildren();
  $("dup-more").hidden = true;
  $("dup-summary").textContent = "Looking for duplicates… (the first listing of a large archive takes a while)";
  $("dup-groups").setAttribute("aria-busy", "true");
  try {
    const result = await api(`/api/duplicates?${query}`);
    state.dupPending = result.groups;
    state.dupTotal = result.groups.length;
    state.dupNote = thresholdNote(result);
    showMoreGroups();
  } catch (error) {
    $("dup-summary").textContent = "";
    showNotice(explain(error), true);
  } finally {
    $("dup-groups").removeAttribute("aria-busy");
  }
}

function thresholdNote(result) {
  const t = result.thresholds;
  const parts = [`near copies within ${t.near_bits} bits`];
  if (t.similar_cosine != null) parts.push(`similar shots from cosine ${t.similar_cosine} within ${Math.round(t.within_s / 60)} min`);
  if (result.unhashed) parts.push(`${result.unhashed} images not hashed yet (vistag index PATH --refresh-metadata)`);
  return parts.join(" · ");
}

function updateSummary() {
  const left = state.dupTotal;
  const read = state.writesEnabled ? "" : " · this server is read-only: start it with --write-token to record decisions";
  $("dup-summary").textContent = (left ? `${left} group${left === 1 ? "" : "s"} to review` : "No duplicates left to review.") +
    (state.dupNote ? ` · ${state.dupNote}` : "") + read;
  $("dup-more").hidden = !state.dupPending.length;
}

function showMoreGroups() {
  const batch = state.dupPending.slice(0, DUP_PAGE);
  state.dupPending = state.dupPending.slice(DUP_PAGE);
  $("dup-groups").append(...batch.map(groupCard));
  updateSummary();
}

function groupCard(group) {
  const head = [
    el("span", { className: `kind kind-${group.kind}`, textContent: KIND_NAMES[group.kind] || group.kind }),
    el("span", { className: "count", textContent: `${group.members.length} images` }),
    el("span", { className: "why", textContent: group.why }),
  ];
  if (group.kind !== "exact") {  // identical bytes are duplicates whatever anyone says
    head.push(el("button", { type: "button", className: "secondary", textContent: "Not duplicates",
      title: "These pictures are not duplicates: never pair them again", disabled: !state.writesEnabled,
      dataset: { action: "not-duplicates" } }));
  }
  return el("section", { className: "dup-group", dataset: { group: group.id, contents: group.contents.join(",") },
    "aria-label": `${KIND_NAMES[group.kind] || group.kind}, ${group.members.length} images` }, [
    el("div", { className: "dup-head" }, head),
    el("div", { className: "dup-members" }, keeperFirst(group).map((member) => memberCard(group, member))),
  ]);
}

function keeperFirst(group) {
  return [...group.members].sort((a, b) => (b.id === group.keep) - (a.id === group.keep));
}

function memberCard(group, member) {
  const keeper = member.id === group.keep;
  const children = [
    el("img", { src: `${member.thumbnail}?size=256`, alt: baseName(member.uri), loading: "lazy", width: 256, height: 256 }),
    el("figcaption", {}, [
      el("span", { className: "name", textContent: baseName(member.uri) }),
      el("span", { textContent: `${member.width ?? "?"} × ${member.height ?? "?"} px · ${bytesText(member.size)}` }),
      el("span", { textContent: dateText(member) }),
      el("span", { className: "uri", textContent: member.uri }),
    ]),
    el("button", { type: "button", textContent: "Keep this one", disabled: !state.writesEnabled,
      className: keeper ? "keep" : "keep secondary", dataset: { action: "keep" } }),
  ];
  if (keeper) children.unshift(el("span", { className: "badge", textContent: "Suggested keeper", title: group.why }));
  return el("figure", { className: keeper ? "dup-member keeper" : "dup-member", title: member.uri,
    dataset: { id: member.id } }, children);
}

function bytesText(size) {
  if (size == null) return "size unknown";
  if (size < 1024) return `${size} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = size / 1024, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function dateText(member) {
  if (member.taken) return `taken ${new Date(member.taken * 1000).toLocaleString()}`;
  return member.mtime ? `modified ${new Date(member.mtime * 1000).toLocaleString()}` : "date unknown";
}

function onDuplicateAction(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const section = button.closest(".dup-group");
  const body = button.dataset.action === "keep"
    ? { keep: Number(button.closest(".dup-member").dataset.id) } : { not_duplicates: true };
  resolveGroup(section, body);
}

async function resolveGroup(section, decision) {
  const token = $("token").value.trim();
  if (!token) {
    showNotice("Enter the server's write token (vistag serve --write-token) to record decisions.", true);
    $("token").focus();
    return;
  }
  const buttons = [...section.querySelectorAll("button")];
  for (const button of buttons) button.disabled = true;
  const body = { group: section.dataset.group, ...decision };
  if (state.dupThreshold != null) body.threshold = state.dupThreshold;
  try {
    await api("/api/duplicates/resolve", {
      method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    });
    sessionStorage.setItem(TOKEN_KEY, token);
    showNotice(decision.keep ? `Remembered: keep image ${decision.keep}.` : "Remembered: not duplicates.");
    dropGroups(section, decision.keep != null);
  } catch (error) {
    for (const button of buttons) button.disabled = false;
    showNotice(error.status === 401 ? "The server refused that write token." : explain(error), true);
  }
}

// a kept group leaves the view, and so do groups of its contents only (the server lists them no more)
function dropGroups(section, kept) {
  const contents = new Set(section.dataset.contents.split(","));
  const within = (shas) => kept && shas.every((sha) => contents.has(sha));
  const gone = [...$("dup-groups").querySelectorAll(".dup-group")]
    .filter((other) => other === section || within(other.dataset.contents.split(",")));
  for (const other of gone) other.remove();
  const before = state.dupPending.length;
  state.dupPending = state.dupPending.filter((group) => !within(group.contents));
  state.dupTotal -= gone.length + before - state.dupPending.length;
  updateSummary();
}

// -- start-up: status line and tag list --
async function loadStatus() {
  try {
    const status = await api("/api/status");
    state.limits = status.limits;
    state.writesEnabled = status.writes_enabled;
    const index = status.index ? `index ${status.index.version} (${status.index.count} vectors, ${status.index.type})`
      : "no index published yet";
    $("status").textContent = `${status.indexed} images indexed · ${index}` +
      (status.model ? ` · model ${status.model.model}` : "");
  } catch (error) {
    $("status").textContent = explain(error);
  }
}

function ensureTagOption(label) {
  const select = $("tag");
  if (![...select.options].some((option) => option.value === label)) {
    select.append(el("option", { value: label, textContent: label }));
  }
}

async function loadLabels() {
  try {
    const result = await api("/api/labels");
    for (const { label, count } of result.labels) {
      $("tag").append(el("option", { value: label, textContent: `${label} (${count})` }));
    }
    $("tag").disabled = !result.labels.length;
  } catch {
    $("tag").disabled = true;
  }
}

function submitSearch() {
  const params = filterParams();
  const q = $("q").value.trim();
  if (!q) {
    showNotice("Type some words to search for.", true);
    return;
  }
  params.set("q", q);
  setHash(params);
}

// a filter changed: run the current text or "more like this" search again
function refresh() {
  const similar = new URLSearchParams(location.hash.slice(1)).get("similar");
  if (similar) {
    const params = filterParams();
    params.set("similar", similar);
    setHash(params);
  } else if ($("q").value.trim()) {
    submitSearch();
  } else {
    setHash(filterParams());  // no search yet: the filters wait in the URL for the next one
  }
}

function keyActivates(handler) {
  return (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      handler(event);
    }
  };
}

document.addEventListener("DOMContentLoaded", async () => {
  $("search-form").addEventListener("submit", (event) => { event.preventDefault(); submitSearch(); });
  $("grid").addEventListener("click", onGridActivate);
  $("grid").addEventListener("keydown", keyActivates(onGridActivate));
  $("more-like-this").addEventListener("click", moreLikeThis);
  $("upload").addEventListener("change", searchByUpload);
  $("upload-label").addEventListener("keydown", keyActivates(() => $("upload").click()));
  for (const id of ["tag", "prefix", "since", "until", "k"]) $(id).addEventListener("change", refresh);
  setUpFacets();
  $("dup-form").addEventListener("submit", (event) => { event.preventDefault(); showDuplicates(); });
  $("dup-kind").addEventListener("change", showDuplicates);
  $("dup-threshold").addEventListener("change", showDuplicates);
  $("dup-groups").addEventListener("click", onDuplicateAction);
  $("dup-more").addEventListener("click", showMoreGroups);
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  setUpCorrections();
  window.addEventListener("hashchange", run);
  await Promise.all([loadStatus(), loadLabels(), loadFacets()]);
  await run();
});
