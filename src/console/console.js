// phi-conduit console: live updates. The pages read correctly without this script; with
// it, a page marked data-live follows /events (Server-Sent Events, same origin): progress
// bars move, and after a queue change the page's content is read again (at most once a
// second). Those reads carry X-Conduit-Live: they do not keep an idle session open. A
// hidden tab closes its stream (browsers allow few connections to one host) and reads the
// page again when shown; a stream the console refuses (the session ended) reloads the
// page, which then says so.
(function () {
  "use strict";
  if (!document.body || !document.body.dataset.live || !window.EventSource) {
    return;
  }
  var source = null;
  var waiting = false;
  var last = 0;

  function refresh() {
    waiting = false;
    last = Date.now();
    fetch(location.href, { headers: { "X-Conduit-Live": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) {
          // The session ended: show the page that says so.
          stop();
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

  function changed() {
    if (!waiting) {
      waiting = true;
      setTimeout(refresh, Math.max(0, 1000 - (Date.now() - last)));
    }
  }

  function progress(e) {
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
  }

  function start() {
    source = new EventSource("/events");
    source.addEventListener("changed", changed);
    source.addEventListener("progress", progress);
    source.onerror = function () {
      // Closed for good (refused, not a passing break, which the browser retries):
      // read the page once; a 401 reloads it.
      if (source && source.readyState === EventSource.CLOSED) {
        stop();
        refresh();
      }
    };
  }

  function stop() {
    if (source) {
      source.close();
      source = null;
    }
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      stop();
    } else if (!source) {
      start();
      changed();
    }
  });

  if (!document.hidden) {
    start();
  }
})();
