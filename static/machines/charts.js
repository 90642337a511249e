// Live charts of the operator pages. Each [data-metrics] block names its endpoint; its
// canvases name their series. Figures are fetched again every data-refresh-seconds and when
// the range buttons change. Time runs on a linear axis of epoch milliseconds (no date adapter).
(function () {
  "use strict";
  if (!window.Chart) { return; }

  var PALETTE = ["#0d6efd", "#20c997", "#fd7e14", "#6f42c1", "#dc3545", "#0dcaf0", "#ffc107",
    "#198754", "#d63384", "#6c757d"];
  var RANGE_SECONDS = { "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
  var GIB = 1024 * 1024 * 1024;
  var MINUTE = 60000;
  var DAY = 1440 * MINUTE;
  var TICK_STEP = { "1h": 10 * MINUTE, "6h": 60 * MINUTE, "24h": 240 * MINUTE, "7d": DAY };

  function pad(number) { return (number < 10 ? "0" : "") + number; }

  function formatTime(ms, withDate) {
    var date = new Date(ms);
    var time = pad(date.getHours()) + ":" + pad(date.getMinutes());
    return withDate ? formatDay(ms) + " " + time : time;
  }

  function formatDay(ms) {
    var date = new Date(ms);
    return pad(date.getMonth() + 1) + "-" + pad(date.getDate());
  }

  function formatValue(value, unit) {
    return (Math.round(value * 10) / 10) + (unit === "%" ? "%" : " " + unit);
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // {x: ms, y} points. A hole in the series leaves a gap instead of a line drawn across it:
  // a hole is a distance well above the series' usual spacing (a host whose heartbeats come
  // less often than the bucket width has empty buckets and no gaps). A null value is a figure
  // the GPU or its driver could not give: a gap too, never plotted as 0.
  function points(times, values, step, divisor) {
    var spacing = [];
    for (var j = 1; j < times.length; j++) { spacing.push(times[j] - times[j - 1]); }
    spacing.sort(function (a, b) { return a - b; });
    var usual = spacing.length ? spacing[Math.floor(spacing.length / 2)] : step;
    var hole = Math.max(2 * step, 3 * usual);
    var out = [];
    for (var i = 0; i < times.length; i++) {
      if (i > 0 && times[i] - times[i - 1] > hole) {
        out.push({ x: (times[i - 1] + step) * 1000, y: null });
      }
      var value = values[i];
      var unknown = value === null || value === undefined;
      out.push({ x: times[i] * 1000, y: unknown ? null : value / (divisor || 1) });
    }
    return out;
  }

  // Lines alone hide a sample with no neighbour (a new host, a point between two gaps): such
  // points, and every point of a short series, get a dot.
  var FEW_POINTS = 30;

  function pointRadius(context) {
    var data = context.dataset.data;
    var i = context.dataIndex;
    if (data.length <= FEW_POINTS) { return 2; }
    var before = data[i - 1];
    var after = data[i + 1];
    return (!before || before.y === null) && (!after || after.y === null) ? 2 : 0;
  }

  function dataset(label, data, colour) {
    return {
      label: label,
      data: data,
      borderColor: colour,
      backgroundColor: colour + "33",
      fill: false,
    };
  }

  // Ticks on round local times (every 10 min for an hour ... midnight for a week) rather than
  // wherever the window happens to start.
  function alignTicks(scale) {
    var step = scale.chart.$tickStep;
    if (!step) { return; }
    var offset = -new Date(scale.min).getTimezoneOffset() * MINUTE;
    var ticks = [];
    for (var value = Math.ceil((scale.min + offset) / step) * step - offset; value <= scale.max;
      value += step) {
      ticks.push({ value: value });
    }
    scale.ticks = ticks;
  }

  function makeChart(canvas) {
    var unit = canvas.getAttribute("data-unit") || "";
    var max = canvas.getAttribute("data-max");
    return new Chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false,
        parsing: false,
        normalized: true,
        spanGaps: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        elements: {
          point: { radius: pointRadius, hoverRadius: 3 },
          line: { borderWidth: 1.5, tension: 0.2 },
        },
        scales: {
          x: {
            type: "linear",
            afterBuildTicks: alignTicks,
            ticks: {
              // ``this`` is the scale; the chart is still being built on the first call.
              callback: function (value) {
                return this.chart.$tickStep >= DAY ? formatDay(value) : formatTime(value, false);
              },
            },
          },
          y: {
            beginAtZero: true,
            max: max ? Number(max) : undefined,
            ticks: { callback: function (value) { return formatValue(value, unit); } },
          },
        },
        plugins: {
          legend: { display: false, labels: { boxWidth: 10, boxHeight: 10 } },
          tooltip: {
            callbacks: {
              title: function (items) {
                return items.length ? formatTime(items[0].parsed.x, true) : "";
              },
              label: function (item) {
                return item.dataset.label + ": " + formatValue(item.parsed.y, unit);
              },
            },
          },
        },
      },
    });
  }

  function hostSeries(body, titles) {
    var step = body.step;
    var host = body.host;
    var gpus = body.gpus;
    function perGpu(key, divisor) {
      return gpus.map(function (gpu, index) {
        return dataset("GPU " + gpu.index,
          points(gpu.t, gpu[key], step, divisor), PALETTE[index % PALETTE.length]);
      });
    }
    var memoryTotal = gpus.reduce(function (most, gpu) {
      return Math.max(most, gpu.memory_total || 0);
    }, 0);
    return {
      "cpu": { datasets: [dataset(titles.cpu, points(host.t, host.cpu, step), PALETTE[0])] },
      "memory": {
        datasets: [dataset(titles.memory, points(host.t, host.memory, step), PALETTE[1])],
      },
      "gpu-utilization": { datasets: perGpu("utilization") },
      "gpu-memory": {
        datasets: perGpu("memory_used", GIB),
        suggestedMax: memoryTotal ? memoryTotal / GIB : undefined,
      },
      "gpu-temperature": { datasets: perGpu("temperature") },
      "gpu-power": { datasets: perGpu("power_draw") },
    };
  }

  function fleetSeries(body, titles) {
    return {
      "fleet-utilization": {
        datasets: [dataset(titles["fleet-utilization"], points(body.t, body.utilization, body.step),
          PALETTE[0])],
      },
    };
  }

  function setup(block) {
    var kind = block.getAttribute("data-metrics");
    var url = block.getAttribute("data-metrics-url");
    var refresh = Number(block.getAttribute("data-refresh-seconds") || 15) * 1000;
    var empty = block.querySelector("[data-metrics-empty]");
    var failed = block.querySelector("[data-metrics-error]");
    var buttons = block.querySelectorAll("[data-range]");
    var charts = {};
    var titles = {};
    block.querySelectorAll("canvas[data-series]").forEach(function (canvas) {
      var name = canvas.getAttribute("data-series");
      charts[name] = makeChart(canvas);
      titles[name] = canvas.getAttribute("aria-label") || name;
    });
    var range = buttons.length ? buttons[0].getAttribute("data-range") : "1h";
    var latest = 0;
    var shown = null;
    var draws = 0;

    function draw(body) {
      var series = (kind === "fleet" ? fleetSeries : hostSeries)(body, titles);
      var now = Date.now();
      var span = (RANGE_SECONDS[body.range] || 3600) * 1000;
      var text = cssVar("--bs-secondary-color");
      var grid = cssVar("--bs-border-color-translucent");
      var anything = false;
      Object.keys(charts).forEach(function (name) {
        var chart = charts[name];
        var wanted = series[name] || { datasets: [] };
        chart.data.datasets = wanted.datasets;
        wanted.datasets.forEach(function (set) { anything = anything || set.data.length > 0; });
        chart.options.plugins.legend.display = wanted.datasets.length > 1;
        chart.options.plugins.legend.labels.color = text;
        chart.options.scales.x.min = now - span;
        chart.options.scales.x.max = now;
        chart.$tickStep = TICK_STEP[body.range];
        chart.options.scales.y.suggestedMax = wanted.suggestedMax;
        ["x", "y"].forEach(function (axis) {
          chart.options.scales[axis].ticks.color = text;
          chart.options.scales[axis].grid.color = grid;
        });
        chart.update("none");
      });
      if (empty) { empty.classList.toggle("d-none", anything); }
    }

    function load() {
      var ticket = ++latest;
      fetch(url + "?range=" + encodeURIComponent(range), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (body) {
          if (ticket !== latest) { return; }  // a newer request (another range) won
          if (failed) { failed.classList.add("d-none"); }
          shown = body;
          draw(body);
          // How many times fresh figures were drawn: shows (a test, a curious operator) that
          // the page is live.
          block.setAttribute("data-draws", String(++draws));
        })
        .catch(function () {
          if (ticket === latest && failed) { failed.classList.remove("d-none"); }
        });
    }

    buttons.forEach(function (button) {
      button.addEventListener("click", function () {
        range = button.getAttribute("data-range");
        buttons.forEach(function (other) {
          other.classList.toggle("active", other === button);
          other.setAttribute("aria-pressed", other === button ? "true" : "false");
        });
        load();
      });
    });
    // The theme toggle changes the colours of text and grid: redraw at once.
    new MutationObserver(function () { if (shown) { draw(shown); } })
      .observe(document.documentElement, { attributes: true, attributeFilter: ["data-bs-theme"] });
    setInterval(function () { if (!document.hidden) { load(); } }, refresh);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { load(); }
    });
    load();
  }

  document.querySelectorAll("[data-metrics]").forEach(setup);
})();
