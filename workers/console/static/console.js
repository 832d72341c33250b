// The console's only script (served from the package; no third-party code): posts actions and
// answers with the CSRF token, and follows the run over SSE to add ledger rows without reload.
"use strict";
(function () {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const live = document.getElementById("live");
  const runId = live ? live.dataset.run : null;
  const result = document.getElementById("action-result");

  async function post(action, body) {
    const response = await fetch(`/runs/${encodeURIComponent(runId)}/${action}`, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = {error: `HTTP ${response.status}`}; }
    if (!response.ok && !data.error) data.error = `HTTP ${response.status}`;
    return data;
  }

  function say(text, bad) {
    if (!result) return;
    result.textContent = text;
    result.className = bad ? "result bad" : "result ok";
  }

  document.querySelectorAll("button[data-action]").forEach((button) => {
    button.addEventListener("click", async () => {
      const action = button.dataset.action;
      const body = {};
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      if (button.dataset.reason) {
        const reason = window.prompt(button.dataset.reason);
        if (!reason) return;
        body.reason = reason;
      }
      const data = await post(action, body);
      if (data.error) { say(data.error, true); return; }
      if (action === "verify") {
        document.querySelectorAll("tr.rec.bad").forEach((row) => row.classList.remove("bad"));
        if (data.ok) { say(`Chain OK: ${data.count} records verified.`, false); return; }
        const index = data.first_bad_index;
        const row = document.querySelector(`tr.rec[data-index="${index}"]`);
        if (row) { row.classList.add("bad"); row.scrollIntoView({block: "center"}); }
        say(`Chain broken at record ${index}: ${(data.errors[0] || {}).type || "mismatch"}.`, true);
        return;
      }
      say(`${action}: done.`, false);
      window.setTimeout(() => window.location.reload(), 300);
    });
  });

  function typed(value, type) {
    if (type === "number" || type === "integer") return value === "" ? value : Number(value);
    if (type === "boolean") return value === true || value === "true";
    if (type === "object" || type === "array") { try { return JSON.parse(value); } catch (e) { return value; } }
    return value;
  }

  document.querySelectorAll("form.answer").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      let answer;
      const fields = form.querySelectorAll('[name^="field:"]');
      if (fields.length) {
        answer = {};
        fields.forEach((el) => {
          const value = el.type === "checkbox" ? el.checked : el.value;
          if (value !== "") answer[el.name.slice(6)] = typed(value, el.dataset.type);
        });
      } else {
        const picked = form.querySelector('input[name="answer"]:checked') || form.querySelector('[name="answer"]');
        answer = picked ? typed(picked.value, picked.dataset.type) : null;
      }
      const data = await post("answer", {wait: form.dataset.wait || null, answer: answer});
      const error = form.querySelector(".error");
      if (data.error) { error.textContent = data.error; return; }
      error.textContent = "";
      window.location.reload();
    });
  });

  if (runId && window.EventSource) {
    let busy = false, again = false, forceNext = false, lastHead = 0, lastEvent = {};
    async function refresh(force) {
      if (busy) { again = true; return; }
      busy = true;
      try {
        const query = new URLSearchParams({after: live.dataset.last, from: live.dataset.nextIndex});
        // the header and the graph (their status shown in data-status): when the status
        // changed, else at most once a second
        if (force || lastEvent.status !== live.dataset.status || Date.now() - lastHead > 1000) {
          query.set("head", "1");
          lastHead = Date.now();
        }
        const response = await fetch(`/runs/${encodeURIComponent(runId)}/rows?${query}`, {credentials: "same-origin"});
        if (!response.ok) return;
        const data = await response.json();
        if (live.dataset.live === "yes" && data.count) {
          document.getElementById("rows").insertAdjacentHTML("beforeend", data.html);
          live.dataset.last = data.last_id;
          live.dataset.nextIndex = String(Number(live.dataset.nextIndex) + data.count);
        }
        document.getElementById("ledger-count").textContent = data.total;
        if (data.head !== undefined) {
          document.getElementById("head").innerHTML = data.head;
          document.getElementById("graph").innerHTML = data.graph;
          live.dataset.status = data.status || live.dataset.status;
        } else if (data.status && data.status !== live.dataset.status) {
          again = forceNext = true;  // the run moved on since: once more, with the header
        }
      } finally {
        busy = false;
        if (again) {
          const force = forceNext;
          again = forceNext = false;
          refresh(force);
        }
      }
    }
    const source = new EventSource(`/runs/${encodeURIComponent(runId)}/events`);
    source.onmessage = (message) => {
      try { lastEvent = JSON.parse(message.data || "{}"); } catch (e) { lastEvent = {}; }
      refresh();
    };
  }
})();
