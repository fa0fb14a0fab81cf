// phi-conduit console: live updates. The pages read correctly without this script; with
// it, a page marked data-live follows /events (Server-Sent Events, same origin): progress
// bars move, and after a queue change the page's content is read again (at most once a
// second). Those reads carry X-Conduit-Live: they do not keep an idle session open.
(function () {
  "use strict";
  if (!document.body || !document.body.dataset.live || !window.EventSource) {
    return;
  }
  var source = new EventSource("/events");
  var waiting = false;
  var last = 0;

  function refresh() {
    waiting = false;
    last = Date.now();
    fetch(location.href, { headers: { "X-Conduit-Live": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) {
          // The session ended: show the page that says so.
          source.close();
          location.reload();
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) {
          return;
        }
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        var old = document.querySelector("main");
        if (fresh && old) {
          old.replaceWith(document.adoptNode(fresh));
        }
      })
      .catch(function () {});
  }

  source.addEventListener("changed", function () {
    if (!waiting) {
      waiting = true;
      setTimeout(refresh, Math.max(0, 1000 - (Date.now() - last)));
    }
  });

  source.addEventListener("progress", function (e) {
    var p;
    try {
      p = JSON.parse(e.data);
    } catch (_) {
      return;
    }
    var bar = document.getElementById("progress-" + p.item);
    if (bar) {
      bar.max = Math.max(1, p.total);
      bar.value = p.bytes;
    }
    var text = document.getElementById("percent-" + p.item);
    if (text) {
      text.textContent = (p.total > 0 ? Math.floor((p.bytes * 100) / p.total) : 100) + " %";
    }
  });
})();
