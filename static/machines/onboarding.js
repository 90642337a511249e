// Live progress of an onboarding job: the job's WebSocket pushes the rendered steps on every
// change. While the socket is down, htmx polls the same partial every 2 s instead (the
// hx-trigger filter reads window.remotegpuOnboardingLive). A new status reloads the page,
// which then shows the forms that status needs.
(function () {
  var live = document.getElementById("onboarding-live");
  if (!live || !live.getAttribute("data-ws") || !window.WebSocket) { return; }
  var shown = live.getAttribute("data-status");
  var delay = 1000;
  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + window.location.host + live.getAttribute("data-ws"));
    socket.onopen = function () {
      window.remotegpuOnboardingLive = true;
      delay = 1000;
    };
    socket.onmessage = function (event) {
      var message = JSON.parse(event.data);
      if (message.type !== "onboarding") { return; }
      if (message.status !== shown) {
        window.location.reload();
        return;
      }
      live.innerHTML = message.html;
    };
    socket.onclose = function (event) {
      window.remotegpuOnboardingLive = false;
      if (event.code === 4401 || event.code === 4404) { return; }
      setTimeout(connect, delay + Math.random() * delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
