// The one WebSocket (subprotocol ["bearer", token]) the widget keeps open: it is ready
// after the server's `ready` frame, pings every WS_PING_MS, and hands a turn's frames to
// that turn until it finishes or the socket closes.

import { authExpired, errorText } from "./api.js";
import { API, WS_PING_MS } from "./config.js";
import { state } from "./state.js";

class WsChannel {
  constructor() {
    this.socket = null;
    this.opening = null;
    this.everReady = false;
    this.turn = null;
    this.turnEnded = null;
    this.pingTimer = null;
  }

  isOpen() {
    return Boolean(this.socket && this.socket.readyState === WebSocket.OPEN && this.ready);
  }

  open() {
    if (this.isOpen()) return Promise.resolve(this);
    if (this.opening) return this.opening;
    this.opening = new Promise((resolve, reject) => {
      const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
      const socket = new WebSocket(`${scheme}//${window.location.host}${API}/coaching/ws`, ["bearer", state.token]);
      this.socket = socket;
      this.ready = false;
      socket.addEventListener("message", (event) => {
        let frame = null;
        try {
          frame = JSON.parse(event.data);
        } catch {
          return;
        }
        if (!frame || typeof frame !== "object") return;
        if (frame.type === "ready") {
          this.ready = true;
          this.everReady = true;
          this.opening = null;
          this.startPings();
          resolve(this);
          return;
        }
        this.onFrame(frame);
      });
      socket.addEventListener("close", (event) => {
        const wasReady = this.ready;
        this.ready = false;
        this.opening = null;
        this.stopPings();
        if (this.socket === socket) this.socket = null;
        if (!wasReady) {
          reject(Object.assign(new Error("websocket closed before ready"), { code: event.code }));
        }
        if (event.code === 4401) authExpired("token_expired");
        if (this.turnEnded) this.turnEnded("closed");
      });
    });
    return this.opening;
  }

  startPings() {
    this.stopPings();
    this.pingTimer = setInterval(() => this.send({ type: "ping", t: Date.now() }), WS_PING_MS);
  }

  stopPings() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  send(frame) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  }

  onFrame(frame) {
    const turn = this.turn;
    if (!turn) return;
    if (frame.type === "pong" || frame.type === "cancel_ack") return;
    if (frame.type === "error" && frame.id === undefined) {
      // A refused command (rate limit, validation) rather than a stream event.
      if (!turn.messageId) {
        turn.failLocally(errorText(frame.code === "rate_limited" ? 429 : 400, { error: frame }));
        if (this.turnEnded) this.turnEnded("finished");
      }
      return;
    }
    if (frame.message_id && turn.messageId && frame.message_id !== turn.messageId) return;
    turn.apply(Number(frame.id), frame.type, frame);
    if (turn.finished && this.turnEnded) this.turnEnded("finished");
  }

  /** Send `frame` for `turn` and wait until the turn finishes or the socket closes. */
  run(turn, frame) {
    return new Promise((resolve) => {
      this.turn = turn;
      this.turnEnded = (outcome) => {
        this.turnEnded = null;
        resolve(outcome);
      };
      turn.localStop.signal.addEventListener("abort", () => this.turnEnded && this.turnEnded("stopped"), {
        once: true,
      });
      this.send(frame);
    });
  }

  close() {
    this.stopPings();
    if (this.socket) this.socket.close(1000, "widget reset");
    this.socket = null;
    this.opening = null;
    this.ready = false;
  }
}

export const wsChannel = new WsChannel();
