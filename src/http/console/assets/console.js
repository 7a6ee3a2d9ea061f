// understudy console: live updates. The pages are complete without this script; with it,
// the event stream (/console/events) says when something changed and the regions marked
// data-live are fetched again and swapped in place (never one the admin is typing in).
(function () {
  "use strict";
  var state = document.getElementById("live-state");
  if (!state || !window.EventSource || !window.fetch || !window.DOMParser) return;
  var timer = null;

  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var fresh = el.id && doc.getElementById(el.id);
      if (!fresh) return;
      var active = document.activeElement;
      if (active && active !== document.body && el.contains(active) &&
          (active.tagName === "INPUT" || active.tagName === "SELECT" || active.tagName === "TEXTAREA")) return;
      el.replaceWith(document.importNode(fresh, true));
    });
  }

  function refresh() {
    timer = null;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected && r.url.indexOf("/console/login") >= 0) { location.href = r.url; return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (t) { if (t) swap(t); })
      .catch(function () {});
  }

  function soon() { if (!timer) timer = setTimeout(refresh, 200); }

  var es = null;
  function open() {
    es = new EventSource("/console/events");
    es.addEventListener("ready", function () {
      state.textContent = "Live updates: on";
      state.className = "live-state on";
    });
    es.addEventListener("change", soon);
    es.addEventListener("failover", function () {
      if (document.getElementById("failover") || document.getElementById("overview") ||
          document.getElementById("wizard")) soon();
    });
    es.onerror = function () {
      state.textContent = "Live updates: reconnecting…";
      state.className = "live-state";
    };
  }
  open();
  // A page kept in the back/forward cache must not keep its stream (and a connection)
  // open: browsers allow only a few per server.
  window.addEventListener("pagehide", function () { if (es) { es.close(); es = null; } });
  window.addEventListener("pageshow", function () { if (!es) { open(); soon(); } });
  // Running jobs and deployment progress are not events: their tables ask to be polled.
  setInterval(function () { if (document.querySelector("[data-poll='2']")) soon(); }, 2000);
})();
