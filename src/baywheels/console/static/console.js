// The console's own script: the live indicator and the lease countdown. Everything else is htmx.
(function () {
  "use strict";

  // "live" while the page's event stream is open (htmx's SSE extension on <main sse-connect>).
  function live(state) {
    document.body.dataset.live = state;
    var badge = document.getElementById("live-state");
    if (badge) {
      badge.textContent = state === "open" ? "live" : "reconnecting…";
      badge.className = "live-" + state;
    }
  }
  document.addEventListener("htmx:sseOpen", function () { live("open"); });
  document.addEventListener("htmx:sseError", function () { live("closed"); });

  // A held task's lease, counted down each second from its end (data-expires, ISO 8601).
  function tick() {
    document.querySelectorAll(".lease[data-expires]").forEach(function (lease) {
      var left = Math.round((Date.parse(lease.dataset.expires) - Date.now()) / 1000);
      lease.textContent = left >= 0
        ? Math.floor(left / 60) + " min " + (left % 60) + " s left"
        : "ran out " + (-left) + " s ago";
      lease.classList.toggle("lease-short", left < 60);
    });
  }
  setInterval(tick, 1000);
})();
