// Corrections on an image's details: a ✓ (confirm) and ✗ (reject) beside each tag, a field that
// confirms another label, and the corrections recorded for the picture's content, each with a
// button that withdraws it. Writes carry the write token as the duplicates view sends it (kept in
// this tab's sessionStorage only); after each write the details are loaded again from the server.
"use strict";

function correctionToken() {
  return $("correction-token").value.trim() || $("token").value.trim();
}

function showCorrectionNote(message, isError = false) {
  const note = $("correction-note");
  note.textContent = message;
  note.classList.toggle("error", isError);
  note.hidden = !message;
}

// called by openDetail once the tags are listed (each <li data-label>)
function showCorrections(image) {
  const byLabel = new Map(image.corrections.map((c) => [c.label.toLowerCase(), c]));
  for (const item of $("detail-tags").querySelectorAll("li[data-label]")) {
    const current = byLabel.get(item.dataset.label.toLowerCase());
    item.append(el("span", { className: "verdicts" }, ["yes", "no"].map((verdict) =>
      verdictButton(item.dataset.label, verdict, current))));
  }
  $("detail-corrections").replaceChildren(...(image.corrections.length ? image.corrections.map(correctionItem)
    : [el("li", { className: "none", textContent: "None yet." })]));
  $("correction-label").disabled = $("correction-add").disabled = !state.writesEnabled;
  if (!state.writesEnabled) showCorrectionNote("This server is read-only: start it with --write-token to record corrections.");
}

function verdictButton(label, verdict, current) {
  const yes = verdict === "yes";
  const chosen = Boolean(current && current.verdict === verdict);
  return el("button", {
    type: "button", className: chosen ? `verdict ${verdict} chosen` : `verdict ${verdict}`,
    textContent: yes ? "✓" : "✗", title: `${yes ? "Confirm" : "Reject"} “${label}” for this picture`,
    "aria-label": `${yes ? "Confirm" : "Reject"} ${label}`, "aria-pressed": String(chosen),
    disabled: !state.writesEnabled, dataset: { label, verdict },
  });
}

function correctionItem(correction) {
  const yes = correction.verdict === "yes";
  const when = new Date(correction.created * 1000).toLocaleString();
  return el("li", { dataset: { correction: correction.id }, title: `${correction.source}, ${when}` }, [
    el("span", { className: `mark ${correction.verdict}`, textContent: yes ? "✓" : "✗" }),
    el("span", { textContent: `${correction.label}${correction.source === "keywords" ? " (from keywords)" : ""}` }),
    el("button", { type: "button", className: "secondary withdraw", textContent: "Withdraw",
      disabled: !state.writesEnabled, dataset: { withdraw: correction.id } }),
  ]);
}

async function writeCorrection(path, options, done) {
  const token = correctionToken();
  if (!token) {
    showCorrectionNote("Enter the server's write token (vistag serve --write-token) to record corrections.", true);
    $("correction-token").focus();
    return;
  }
  try {
    await api(path, { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` } });
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = $("correction-token").value = token;
    showCorrectionNote(done);
    await openDetail(state.detailId);
  } catch (error) {
    showCorrectionNote(error.status === 401 ? "The server refused that write token." : explain(error), true);
  }
}

function sendVerdict(label, verdict) {
  const body = JSON.stringify({ label, verdict });
  return writeCorrection(`/api/images/${encodeURIComponent(state.detailId)}/corrections`,
    { method: "POST", body, headers: { "Content-Type": "application/json" } },
    `${verdict === "yes" ? "Confirmed" : "Rejected"}: ${label}.`);
}

function onCorrectionClick(event) {
  const verdict = event.target.closest("button[data-verdict]");
  if (verdict) sendVerdict(verdict.dataset.label, verdict.dataset.verdict);
  const withdraw = event.target.closest("button[data-withdraw]");
  if (withdraw) {
    writeCorrection(`/api/corrections/${encodeURIComponent(withdraw.dataset.withdraw)}`, { method: "DELETE" },
      "Correction withdrawn.");
  }
}

function setUpCorrections() {
  $("correction-token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("detail-tags").addEventListener("click", onCorrectionClick);
  $("detail-corrections").addEventListener("click", onCorrectionClick);
  $("correction-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const label = $("correction-label").value.trim();
    if (!label) return;
    await sendVerdict(label, "yes");
    $("correction-label").value = "";
  });
  $("detail").addEventListener("close", () => showCorrectionNote(""));
}
