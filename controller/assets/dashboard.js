// Drover dashboard: draws the charts (uPlot) from each `.chart`'s data and
// refreshes the page's #live part when the server says something changed
// (Server-Sent Events). Pages work without this file.
(function () {
  "use strict";

  var palette = ["#c0392b", "#2471a3", "#1e8449", "#b9770e", "#6c3483"];

  function drawCharts(root) {
    if (typeof uPlot === "undefined") return;
    root.querySelectorAll(".chart[data-chart]").forEach(function (el) {
      if (el.dataset.drawn) return;
      var spec;
      try {
        spec = JSON.parse(el.dataset.chart);
      } catch (e) {
        console.warn("chart data unreadable", e);
        return;
      }
      if (!spec.x || spec.x.length === 0) {
        el.textContent = spec.title + ": no data yet";
        el.dataset.drawn = "1";
        return;
      }
      var data = [spec.x];
      var series = [{}];
      spec.series.forEach(function (s, i) {
        data.push(s.values);
        series.push({
          label: s.label,
          stroke: palette[i % palette.length],
          width: 2,
          dash: s.label === "threshold" ? [6, 4] : undefined,
          points: { show: spec.x.length < 40 }
        });
      });
      el.dataset.drawn = "1";
      new uPlot({
        title: spec.title,
        width: Math.max(320, Math.min(el.clientWidth || 560, 720)),
        height: 200,
        series: series,
        scales: { x: { time: true, range: function (u, min, max) {
          // A single point would get a range of years: show a minute around it.
          return min === max ? [min - 60, max + 60] : [min, max];
        } } }
      }, data, el);
    });
  }

  function liveUpdates() {
    var live = document.getElementById("live");
    if (!live || typeof EventSource === "undefined") return;
    var last = null;
    var source = new EventSource("/ui/events");
    source.addEventListener("changed", function (ev) {
      if (last !== null && ev.data !== last && typeof htmx !== "undefined") {
        // Do not replace a field the user is typing into.
        var focused = document.activeElement;
        var typing = focused && /^(INPUT|SELECT|TEXTAREA)$/.test(focused.tagName);
        if (!typing) {
          htmx.ajax("GET", window.location.pathname + window.location.search,
            { target: "#live", select: "#live", swap: "outerHTML" });
        }
      }
      last = ev.data;
    });
    // The browser reconnects on its own; a closed stream is not an error.
    source.onerror = function () {};
    window.addEventListener("beforeunload", function () { source.close(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts(document);
    liveUpdates();
  });
  document.addEventListener("htmx:afterSettle", function (ev) {
    drawCharts(ev.target || document);
  });
})();
