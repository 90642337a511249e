// The web terminal: xterm.js on a WebSocket. Binary frames carry the shell's bytes both ways;
// text frames carry JSON (resize, acknowledgements, opened/closed). Output is acknowledged
// once xterm.js has drawn it, which is what lets the agent send more (flow control).
(function () {
  "use strict";
  var element = document.getElementById("terminal");
  if (!element || !window.Terminal) { return; }
  var status = document.querySelector("[data-testid=terminal-status]");
  var term = new window.Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000, convertEol: false });
  var fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(element);
  fit.fit();
  window.remotegpuTerminal = term; // for the browser tests

  var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  var url = scheme + window.location.host + element.getAttribute("data-ws") +
    "?cols=" + term.cols + "&rows=" + term.rows;
  var socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  var encoder = new TextEncoder();
  var ackBytes = 0, ackFrames = 0, ackTimer = null;

  function setStatus(name, detail) {
    status.textContent = status.getAttribute("data-" + name) + (detail ? " · " + detail : "");
    status.setAttribute("data-state", name);
  }
  function send(value) {
    if (socket.readyState === WebSocket.OPEN) { socket.send(value); }
  }
  function flushAck() {
    ackTimer = null;
    if (ackFrames) {
      send(JSON.stringify({ type: "ack", bytes: ackBytes, frames: ackFrames }));
      ackBytes = 0; ackFrames = 0;
    }
  }
  socket.onmessage = function (event) {
    if (typeof event.data === "string") {
      var message = JSON.parse(event.data);
      if (message.type === "opened") { setStatus("opened"); term.focus(); }
      else if (message.type === "closed") { setStatus("closed", message.message); }
      else if (message.type === "error") { term.write("\r\n\x1b[31m" + message.message + "\x1b[0m\r\n"); }
      return;
    }
    var bytes = new Uint8Array(event.data);
    term.write(bytes, function () {
      ackBytes += bytes.length; ackFrames += 1;
      if (ackBytes >= 65536) { flushAck(); }
      else if (!ackTimer) { ackTimer = setTimeout(flushAck, 5); }
    });
  };
  socket.onclose = function () {
    if (status.getAttribute("data-state") !== "closed") { setStatus("closed"); }
  };
  term.onData(function (data) { send(encoder.encode(data)); });
  term.onBinary(function (data) {
    var bytes = new Uint8Array(data.length);
    for (var i = 0; i < data.length; i++) { bytes[i] = data.charCodeAt(i) & 255; }
    send(bytes);
  });
  term.onResize(function (size) {
    send(JSON.stringify({ type: "resize", cols: size.cols, rows: size.rows }));
  });
  window.addEventListener("resize", function () { fit.fit(); });
})();
