// Soniq dashboard: live refresh and in-page actions. Every page works without
// this file (links and forms); with it, the main area refreshes every few
// seconds without a full reload and action buttons call the JSON API.
(function () {
  "use strict";
  var REFRESH_MS = 5000;
  var main = document.getElementById("main");
  var live = document.getElementById("live");
  var base = document.body.getAttribute("data-base") || "";
  var token = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  if (!main) return;
  if (live) live.parentElement.hidden = false;

  function busy() {
    // Never swap the page under someone's hands: typing, a ticked box, a focused control.
    var active = document.activeElement;
    if (active && main.contains(active) && /INPUT|SELECT|TEXTAREA/.test(active.tagName)) return true;
    return main.querySelector('input[type="checkbox"]:checked') !== null;
  }

  function refresh(force) {
    if (!force && (document.hidden || (live && !live.checked) || busy())) return Promise.resolve();
    return fetch(location.href, { headers: { "X-Soniq-Fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { main.innerHTML = html; main.setAttribute("data-refreshed", String(Date.now())); } })
      .catch(function () { /* offline for a moment: try again next tick */ });
  }

  function show(text, bad) {
    var p = document.createElement("p");
    p.className = bad ? "notice bad" : "notice";
    p.setAttribute("role", bad ? "alert" : "status");
    p.textContent = text;
    main.insertBefore(p, main.firstChild);
  }

  function call(url, method) {
    return fetch(url, {
      method: method, credentials: "same-origin", body: method === "DELETE" ? null : "{}",
      headers: { "Content-Type": "application/json", "X-Soniq-CSRF": token },
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) throw new Error(body.detail || ("HTTP " + r.status));
        return body;
      });
    });
  }

  function after(kind, body, done) {
    if (kind === "job" && body.job_id) { location.href = base + "/jobs/" + body.job_id; return null; }
    if (kind === "jobs") { location.href = base + "/jobs"; return null; }
    if (kind === "dead") { location.href = base + "/dead-letter"; return null; }
    return refresh(true).then(function () { show(done || "Done."); });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var url = form.getAttribute("data-api");
    if (!url) return;
    event.preventDefault();
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) return;
    call(url, form.getAttribute("data-method") || "POST")
      .then(function (body) {
        return after(form.getAttribute("data-after"), body, form.getAttribute("data-done"));
      })
      .catch(function (err) { show(err.message, true); });
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-api]") : null;
    if (!button) return;
    event.preventDefault();
    call(button.getAttribute("data-api"), "POST")
      .then(function () { return refresh(true).then(function () { show("Replayed."); }); })
      .catch(function (err) { show(err.message, true); });
  });

  setInterval(refresh, REFRESH_MS);
})();
