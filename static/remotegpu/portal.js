// Theme toggle, copy buttons and the live notification bell.
(function () {
  var toggle = document.getElementById("theme-toggle");
  if (toggle) {
    toggle.addEventListener("click", function () {
      var root = document.documentElement;
      var next = root.getAttribute("data-bs-theme") === "dark" ? "light" : "dark";
      root.setAttribute("data-bs-theme", next);
      localStorage.setItem("remotegpu-theme", next);
    });
  }

  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      var text = source.value !== undefined ? source.value : source.textContent;
      navigator.clipboard.writeText(text.trim()).then(function () {
        button.classList.add("btn-success");
        setTimeout(function () { button.classList.remove("btn-success"); }, 1200);
      });
    });
  });

  var badge = document.getElementById("unread-count");
  if (!badge || !window.WebSocket) { return; }
  var delay = 1000;
  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + window.location.host + badge.getAttribute("data-ws"));
    socket.onopen = function () { delay = 1000; };
    socket.onmessage = function (event) {
      var message = JSON.parse(event.data);
      if (message.type !== "notification") { return; }
      badge.textContent = message.unread;
      badge.classList.toggle("d-none", message.unread === 0);
      document.dispatchEvent(new CustomEvent("remotegpu:notification", { detail: message }));
    };
    socket.onclose = function (event) {
      if (event.code === 4401) { return; }
      setTimeout(connect, delay + Math.random() * delay);
      delay = Math.min(delay * 2, 60000);
    };
  }
  connect();
})();
