// vistag web page, filter facets: the most common keywords, tags and cameras with their counts (a click
// toggles the filter), the range of dates taken on the date inputs, and the active filters, each
// removable. Loaded after app.js, whose $, el, ensureTagOption and refresh it uses; every value
// from the server is put in the page as text.
"use strict";

const FILTER_IDS = ["tag", "keyword", "camera", "prefix", "since", "until"];
const FILTER_NAMES = { tag: "tag", keyword: "keyword", camera: "camera", prefix: "folder", since: "taken from", until: "taken to" };
const FACET_LISTS = { keyword: "facet-keywords", tag: "facet-tags", camera: "facet-cameras" };
const EMPTY_FACET = { tag: "no tag run yet", keyword: "none", camera: "none recorded" };
const ANY_CASE = new Set(["keyword", "camera"]);  // filters the server matches in any case

async function loadFacets() {
  try {
    const facets = await api("/api/facets");
    renderFacetList("keyword", facets.keywords);
    renderFacetList("tag", facets.tags);
    renderFacetList("camera", facets.cameras);
    setDateBounds(facets.taken);
  } catch {
    for (const kind of Object.keys(FACET_LISTS)) renderFacetList(kind, []);
  }
  showActiveFilters();
}

function renderFacetList(kind, items) {
  const list = $(FACET_LISTS[kind]);
  if (!items.length) {
    list.replaceChildren(el("li", { className: "facet-empty", textContent: EMPTY_FACET[kind] }));
    return;
  }
  list.replaceChildren(...items.map(({ value, count }) => el("li", {}, [
    el("button", { type: "button", className: "facet-item", title: `${kind}: ${value} (${count} images)`,
      dataset: { kind, value } }, [value, el("span", { className: "count", textContent: String(count) })]),
  ])));
}

// dates as the server reads the inputs: UTC days
function utcDay(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 10);
}

function setDateBounds(taken) {
  if (taken.min == null || taken.max == null) return;
  const [low, high] = [utcDay(taken.min), utcDay(taken.max)];
  for (const id of ["since", "until"]) {
    $(id).min = low;
    $(id).max = high;
    $(id).title = `dates taken in this archive: ${low} to ${high}`;
  }
}

function onFacetClick(event) {
  const item = event.target.closest(".facet-item");
  if (!item) return;
  const { kind, value } = item.dataset;
  if (kind === "tag") ensureTagOption(value);
  $(kind).value = facetChosen(kind, value) ? "" : value;
  refresh();
}

// whether the facet (kind, value) is the filter in force: keywords and cameras match in any case,
// as the server's filters do (a typed "beach" is the "Beach" facet)
function facetChosen(kind, value) {
  const current = $(kind).value.trim();
  return ANY_CASE.has(kind) ? current.toLowerCase() === value.toLowerCase() : current === value;
}

// the filters in force (from the inputs, which follow the URL), each with a button removing it
function showActiveFilters() {
  const active = FILTER_IDS.filter((id) => $(id).value.trim());
  const chips = active.map((id) => el("span", { className: "active-filter", dataset: { filter: id } }, [
    el("span", { textContent: `${FILTER_NAMES[id]}: ${$(id).value.trim()}` }),
    el("button", { type: "button", className: "remove", textContent: "×", title: `Remove this filter`,
      "aria-label": `Remove the ${FILTER_NAMES[id]} filter`, dataset: { remove: id } }),
  ]));
  if (active.length) {
    chips.push(el("button", { type: "button", className: "secondary clear-filters", textContent: "Clear filters",
      dataset: { remove: active.join(",") } }));
  }
  $("active-filters").replaceChildren(...chips);
  $("active-filters").hidden = !active.length;
  for (const item of document.querySelectorAll(".facet-item")) {
    item.setAttribute("aria-pressed", String(facetChosen(item.dataset.kind, item.dataset.value)));
  }
}

function onRemoveFilter(event) {
  const button = event.target.closest("button[data-remove]");
  if (!button) return;
  for (const id of button.dataset.remove.split(",")) $(id).value = "";
  refresh();
}

function setUpFacets() {
  $("facets").addEventListener("click", onFacetClick);
  $("active-filters").addEventListener("click", onRemoveFilter);
}
