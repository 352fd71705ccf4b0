// Kernex dashboard: refresh the page's live values by polling a small JSON endpoint.
// Values are set as text (never as HTML). No other script runs on these pages.
"use strict";

(function () {
  const POLL_MS = 3000;
  const main = document.querySelector("main[data-poll]");
  if (!main) return;
  const url = main.getAttribute("data-poll");

  function lookup(data, path) {
    return path.split(".").reduce((v, k) => (v == null ? v : v[k]), data);
  }

  function show(value) {
    if (value === null || value === undefined || value === "") return "-";
    if (value === true) return "yes";
    if (value === false) return "no";
    return String(value);
  }

  function apply(data) {
    document.querySelectorAll("[data-live]").forEach((el) => {
      const value = lookup(data, el.getAttribute("data-live"));
      if (value !== undefined) el.textContent = show(value);
    });
    if (!Array.isArray(data.devices)) return;
    const byId = new Map(data.devices.map((d) => [d.id, d]));
    document.querySelectorAll("tr[data-device]").forEach((row) => {
      const d = byId.get(row.getAttribute("data-device"));
      if (!d) return;
      const status = d.status || {};
      const values = { online: d.online, phase: status.phase, error: status.error || "" };
      row.querySelectorAll("[data-key]").forEach((cell) => {
        const key = cell.getAttribute("data-key");
        cell.textContent = key === "error" ? values.error : show(values[key]);
      });
    });
  }

  async function poll() {
    try {
      const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401) {
        window.location.assign("/ui/login");
        return;
      }
      if (answer.ok) {
        apply(await answer.json());
        main.setAttribute("data-polled", String(Date.now()));
      }
    } catch (e) {
      // the server is away for a moment: try again at the next tick
    }
    window.setTimeout(poll, POLL_MS);
  }

  window.setTimeout(poll, POLL_MS);
})();
