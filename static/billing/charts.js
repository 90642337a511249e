// Stacked bar charts of money per day (usage, revenue). Each canvas[data-billing-chart] names
// the json_script element that holds {days: ["YYYY-MM-DD", ...], series: [{label, values}]}.
(function () {
  "use strict";
  if (!window.Chart) { return; }

  var PALETTE = ["#0d6efd", "#20c997", "#fd7e14", "#6f42c1", "#dc3545", "#0dcaf0", "#ffc107",
    "#198754", "#d63384", "#6c757d"];

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function money(value, currency) {
    return value.toFixed(2) + (currency ? " " + currency : "");
  }

  function setup(canvas) {
    var source = document.getElementById(canvas.getAttribute("data-billing-chart"));
    if (!source) { return; }
    var data = JSON.parse(source.textContent);
    var currency = canvas.getAttribute("data-currency") || "";
    var chart = new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.days.map(function (day) { return day.slice(5); }),
        datasets: data.series.map(function (series, index) {
          var colour = PALETTE[index % PALETTE.length];
          return { label: series.label, data: series.values, backgroundColor: colour };
        }),
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true },
          y: {
            stacked: true,
            beginAtZero: true,
            ticks: { callback: function (value) { return money(Number(value), ""); } },
          },
        },
        plugins: {
          legend: { display: data.series.length > 1, labels: { boxWidth: 10, boxHeight: 10 } },
          tooltip: {
            filter: function (item) { return item.parsed.y !== 0; },
            callbacks: {
              title: function (items) { return items.length ? data.days[items[0].dataIndex] : ""; },
              label: function (item) {
                return item.dataset.label + ": " + money(item.parsed.y, currency);
              },
            },
          },
        },
      },
    });

    function colour() {
      var text = cssVar("--bs-secondary-color");
      var grid = cssVar("--bs-border-color-translucent");
      chart.options.plugins.legend.labels.color = text;
      ["x", "y"].forEach(function (axis) {
        chart.options.scales[axis].ticks.color = text;
        chart.options.scales[axis].grid.color = grid;
      });
      chart.update("none");
    }

    colour();
    // The theme toggle changes the colours of text and grid.
    new MutationObserver(colour)
      .observe(document.documentElement, { attributes: true, attributeFilter: ["data-bs-theme"] });
  }

  document.querySelectorAll("canvas[data-billing-chart]").forEach(setup);
})();
