/* depman dashboard: theme, table filters, and self-refreshing fragments.
 *
 * An element with data-refresh="<url>" is re-fetched every data-interval ms and
 * its content swapped in place when it changed. No framework, no build step.
 */
(function () {
  "use strict";

  var THEME_KEY = "depman-theme";
  var stored = null;
  try { stored = window.localStorage.getItem(THEME_KEY); } catch (e) { /* private mode */ }
  if (stored === "dark" || stored === "light") {
    document.documentElement.setAttribute("data-theme", stored);
  }

  function currentTheme() {
    var set = document.documentElement.getAttribute("data-theme");
    if (set) { return set; }
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  function toggleTheme() {
    var next = currentTheme() === "dark" ? "light" : "dark";
    document.documentElement.setAttribute("data-theme", next);
    try { window.localStorage.setItem(THEME_KEY, next); } catch (e) { /* ignore */ }
  }

  function applyFilter(input) {
    var table = document.querySelector(input.getAttribute("data-filter"));
    if (!table) { return; }
    var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    table.querySelectorAll("tbody tr[data-search]").forEach(function (row) {
      var hay = row.getAttribute("data-search").toLowerCase();
      var show = words.every(function (w) { return hay.indexOf(w) !== -1; });
      row.hidden = !show;
    });
  }

  function applyAllFilters() {
    document.querySelectorAll("input[data-filter]").forEach(applyFilter);
  }

  function setIndicator(state, text) {
    var el = document.getElementById("refresh-state");
    if (!el) { return; }
    el.setAttribute("data-state", state);
    var label = el.querySelector(".refresh-text");
    if (label) { label.textContent = text; }
  }

  function clock() {
    var d = new Date();
    function pad(n) { return (n < 10 ? "0" : "") + n; }
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function loginUrl() {
    return "/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
  }

  function Refresher(el) {
    this.el = el;
    this.url = el.getAttribute("data-refresh");
    this.interval = parseInt(el.getAttribute("data-interval"), 10) || 2000;
    this.failures = 0;
    this.timer = null;
    this.busy = false;
    this.last = null;
  }

  Refresher.prototype.schedule = function () {
    var self = this;
    var delay = this.failures ? Math.min(this.interval * Math.pow(2, this.failures), 30000) : this.interval;
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(function () { self.tick(); }, delay);
  };

  Refresher.prototype.tick = function () {
    var self = this;
    if (document.hidden) { setIndicator("paused", "paused"); return; }
    if (this.busy) { return; }
    this.busy = true;
    window.fetch(this.url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Accept": "text/html", "X-Requested-With": "depman-dashboard" }
    }).then(function (resp) {
      if (resp.status === 401) { window.location.assign(loginUrl()); throw new Error("login"); }
      if (!resp.ok && resp.status !== 404) { throw new Error("HTTP " + resp.status); }
      return resp.text();
    }).then(function (html) {
      // Never swap a form away while the operator is typing in it (a cancel reason).
      var active = document.activeElement;
      var typing = active && self.el.contains(active) && active.tagName === "INPUT";
      if (html !== self.last && !typing) {
        self.el.innerHTML = html;
        self.last = html;
        applyAllFilters();
      }
      self.failures = 0;
      setIndicator("ok", "live · " + clock());
    }).catch(function (err) {
      if (err && err.message === "login") { return; }
      self.failures += 1;
      setIndicator("error", "offline · retrying");
    }).then(function () {
      self.busy = false;
      self.schedule();
    });
  };

  // A form with data-confirm asks first (cancelling a model a job waits for names the
  // job); once confirmed it says so, since the server refuses such a cancel otherwise.
  function confirmSubmit(event) {
    var form = event.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (!question) { return; }
    if (!window.confirm(question)) { event.preventDefault(); return; }
    var field = form.querySelector('input[name="confirmed"]');
    if (field) { field.value = "true"; }
  }

  function start() {
    document.addEventListener("submit", confirmSubmit);
    var refreshers = [];
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      var r = new Refresher(el);
      refreshers.push(r);
      r.schedule();
    });
    if (refreshers.length) { setIndicator("ok", "live · " + clock()); }
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { refreshers.forEach(function (r) { r.tick(); }); }
    });
    document.querySelectorAll("input[data-filter]").forEach(function (input) {
      input.addEventListener("input", function () { applyFilter(input); });
    });
    document.querySelectorAll("[data-theme-toggle]").forEach(function (btn) {
      btn.addEventListener("click", toggleTheme);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
