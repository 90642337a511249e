// Environments, live: the list's status badges and one environment's status, pull progress,
// system log and container output arrive over WebSockets (rendered by the server in the
// reader's language). A status change on an environment's page reloads it, so that it shows
// the actions that status allows. Sockets reconnect with backoff.
(function () {
  function follow(path, onMessage) {
    var delay = 1000;
    function connect() {
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      var socket = new WebSocket(scheme + window.location.host + path);
      socket.onopen = function () { delay = 1000; };
      socket.onmessage = function (event) { onMessage(JSON.parse(event.data)); };
      socket.onclose = function (event) {
        if (event.code === 4401 || event.code === 4404) { return; }
        setTimeout(connect, delay + Math.random() * delay);
        delay = Math.min(delay * 2, 30000);
      };
    }
    if (window.WebSocket) { connect(); }
  }

  var list = document.getElementById("environment-list");
  if (list && list.getAttribute("data-ws")) {
    follow(list.getAttribute("data-ws"), function (message) {
      if (message.type !== "environment") { return; }
      var cell = list.querySelector('[data-live-status="' + message.id + '"]');
      if (cell) { cell.innerHTML = message.html; }
    });
  }

  // A form being submitted (an action) navigates away: a push must not reload over it.
  var leaving = false;
  document.addEventListener("submit", function () { leaving = true; });

  var live = document.getElementById("environment-live");
  var logs = document.getElementById("environment-logs");
  if (live && live.getAttribute("data-ws")) {
    var shown = live.getAttribute("data-status");
    var cleared = false;
    follow(live.getAttribute("data-ws"), function (message) {
      if (message.type === "environment") {
        live.innerHTML = message.html;
        if (message.status !== shown && !leaving) { window.location.reload(); }
      } else if (message.type === "logs" && logs) {
        if (!cleared) { logs.textContent = ""; cleared = true; }
        var atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.textContent += message.lines.join("\n") + "\n";
        if (atBottom) { logs.scrollTop = logs.scrollHeight; }
      }
    });
  }
})();
