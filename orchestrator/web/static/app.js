// orch's web view: live parts of pages, the events tail, and a confirm before actions.
// Served as a file: the page's Content-Security-Policy allows no inline script.
"use strict";
(function () {
  var state = document.getElementById("live-state");

  function mark(ok) {
    if (!state) return;
    state.className = "live-state " + (ok ? "on" : "off");
    state.textContent = ok ? "live" : "offline";
  }

  // Each action form asks first. Without this script the server asks instead: it acts
  // only on a POST that says confirm=yes.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute("data-confirm");
    var answer = form.querySelector('input[name="confirm"]');
    if (!question || !answer || answer.value === "yes") return;
    if (window.confirm(question)) {
      answer.value = "yes";
    } else {
      ev.preventDefault();
    }
  });

  // A page's live part: the same URL fetched again, its live part swapped in.
  var live = document.getElementById("live");
  var every = live ? parseInt(live.getAttribute("data-refresh") || "0", 10) : 0;
  if (every > 0) {
    var last = null;
    var busy = false;
    mark(true);
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(window.location.href, {
        headers: { "X-Orch-Live": "1" }, credentials: "same-origin", cache: "no-store"
      }).then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      }).then(function (html) {
        if (html !== last) {
          live.innerHTML = html;  // rendered by the server, every value escaped there
          last = html;
        }
        mark(true);
      }).catch(function () {
        mark(false);
      }).then(function () {
        busy = false;
      });
    }, every);
  }

  // The events page follows the log from the JSON endpoint, newest on top.
  var tail = document.querySelector(".tail");
  if (tail) {
    var body = document.getElementById("events");
    var since = parseInt(tail.getAttribute("data-since"), 10) || 0;
    var item = tail.getAttribute("data-item");
    var KEEP = 500;
    var FULL = 1000;

    function pad(n, width) {
      var s = String(n);
      while (s.length < width) s = "0" + s;
      return s;
    }

    function localTime(ms) {
      var d = new Date(ms);
      return d.getFullYear() + "-" + pad(d.getMonth() + 1, 2) + "-" + pad(d.getDate(), 2) +
        " " + pad(d.getHours(), 2) + ":" + pad(d.getMinutes(), 2) + ":" +
        pad(d.getSeconds(), 2) + "." + pad(d.getMilliseconds(), 3);
    }

    function cell(row, content, cls) {
      var td = document.createElement("td");
      var inner = td;
      if (cls) {
        inner = document.createElement(cls === "json" ? "code" : "span");
        inner.className = cls;
        td.appendChild(inner);
      }
      if (content === null || content === undefined || content === "") {
        inner.textContent = "–";
        inner.classList.add("muted");
      } else if (content instanceof Node) {
        inner.appendChild(content);
      } else {
        inner.textContent = String(content);  // text, never markup
      }
      row.appendChild(td);
    }

    function row(e) {
      var tr = document.createElement("tr");
      tr.className = "new";
      cell(tr, e.seq);
      var when = document.createElement("time");
      when.textContent = localTime(e.at);
      when.title = new Date(e.at).toISOString();
      cell(tr, when);
      var link = null;
      if (e.item_id !== null) {
        link = document.createElement("a");
        link.href = "/items/" + Number(e.item_id);
        link.textContent = "#" + e.item_id;
      }
      cell(tr, link);
      cell(tr, e.type, "ev ev-" + String(e.type).replace(/[^a-z_]/g, ""));
      cell(tr, e.worker_id);
      cell(tr, e.fence);
      var detail = JSON.stringify(e.detail);
      cell(tr, detail.length > 120 ? detail.slice(0, 119) + "…" : detail, "json");
      return tr;
    }

    function poll() {
      if (document.hidden) {
        setTimeout(poll, 1000);
        return;
      }
      var q = "/api/events?since=" + since + (item ? "&item=" + encodeURIComponent(item) : "");
      fetch(q, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      }).then(function (events) {
        events.forEach(function (e) {
          body.insertBefore(row(e), body.firstChild);
          since = e.seq;
        });
        while (body.rows.length > KEEP) body.deleteRow(body.rows.length - 1);
        mark(true);
        setTimeout(poll, events.length >= FULL ? 0 : 1000);  // a full page: more waiting
      }).catch(function () {
        mark(false);
        setTimeout(poll, 2000);
      });
    }
    mark(true);
    setTimeout(poll, 1000);
  }
})();
