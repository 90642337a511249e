// Applied before the page paints so a dark-theme user never sees a light flash.
(function () {
  var stored = localStorage.getItem("remotegpu-theme");
  var theme = stored || (window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  document.documentElement.setAttribute("data-bs-theme", theme);
})();
