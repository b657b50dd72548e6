// hull-web's console page: xterm.js on a WebSocket that hull-web bridges to the guest's
// console through vmmd (GET /v1/vms/{uuid}/console). Keys go to the guest as typed, Ctrl-]
// included (it does not detach here): the Disconnect button does. Binary messages carry the
// console's bytes both ways; a text message {"resize": [cols, rows]} sets a zone's window.
import { Terminal } from "./xterm.mjs";

const box = document.getElementById("console");
const status = document.getElementById("console-status");
const say = (text) => {
  status.textContent = text;
  status.dataset.state = text.split(":")[0];
};
const term = new Terminal({ cols: 100, rows: 30, scrollback: 5000, cursorBlink: true });
term.open(box);

const url = new URL(box.dataset.socket, window.location.href);
url.protocol = "wss:";
const ws = new WebSocket(url);
ws.binaryType = "arraybuffer";
const encoder = new TextEncoder();

ws.addEventListener("open", () => {
  say("connected");
  ws.send(JSON.stringify({ resize: [term.cols, term.rows] }));
  term.focus();
});
ws.addEventListener("message", (e) => {
  if (e.data instanceof ArrayBuffer) {
    term.write(new Uint8Array(e.data));
  }
});
ws.addEventListener("close", (e) => {
  say(e.reason ? `disconnected: ${e.reason}` : "disconnected");
});
term.onData((data) => {
  if (ws.readyState === WebSocket.OPEN) {
    ws.send(encoder.encode(data));
  }
});
term.onBinary((data) => {
  if (ws.readyState === WebSocket.OPEN) {
    ws.send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff));
  }
});
term.onResize(({ cols, rows }) => {
  if (ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ resize: [cols, rows] }));
  }
});
document.getElementById("console-detach").addEventListener("click", () => {
  ws.close(1000, "detached");
});
