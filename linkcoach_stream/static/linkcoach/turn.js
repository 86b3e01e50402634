// One chat turn on the page: the question, the answer's bubble, and the stream events
// (SSE events or WebSocket frames, the same values) applied to it. Its phase follows the
// state machine in chat-state.js; SSE or WebSocket only carry the events to apply().

import { api } from "./api.js";
import { answerActions } from "./answer-actions.js";
import { FINISHED, INITIAL_PHASE, nextPhase } from "./chat-state.js";
import { CANCEL_GRACE_MS } from "./config.js";
import { updateControls } from "./controls.js";
import { announce, el, scrollLog, ui } from "./dom.js";
import { setConversation, state } from "./state.js";
import { wsChannel } from "./ws-channel.js";

function randomId() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
  // randomUUID needs a secure context; getRandomValues does not.
  const bytes = window.crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class Turn {
  /** `options.regenerateOf`: the answer's message id when this turn regenerates it, and
   * `options.replaces`: that answer's bubble; `options.onRegenerate(turn)`: what the
   * answer's 다시 답변 받기 button does. */
  constructor(question, options = {}) {
    this.question = question;
    this.regenerateOf = options.regenerateOf || null;
    this.replaces = options.replaces || null;
    this.onRegenerate = options.onRegenerate || (() => {});
    this.phase = INITIAL_PHASE;
    this.clientMessageId = randomId();
    this.messageId = null;
    this.lastEventId = 0;
    this.text = "";
    this.sources = [];
    this.status = "streaming";
    this.finishReason = null;
    this.error = null;
    this.cancelRequested = false;
    this.cancelSent = false;
    this.reconnects = 0;
    this.tokenRetries = 0;
    this.controller = null;
    this.localStop = new AbortController();
    this.buildUi();
  }

  get finished() {
    return this.phase === FINISHED;
  }

  /** Move along the chat state machine; the bubble shows the phase as data-phase. */
  move(event) {
    this.phase = nextPhase(this.phase, event);
    if (this.bubble) this.bubble.dataset.phase = this.phase;
  }

  buildUi() {
    const empty = ui.log.querySelector(".lc-log-empty");
    if (empty) empty.remove();
    if (!this.replaces) {
      ui.log.append(
        el("div", { className: "lc-msg lc-msg-user" }, [
          el("p", { className: "lc-who", text: "나" }),
          el("p", { className: "lc-msg-text", text: this.question }),
        ]),
      );
    }
    this.textNode = document.createTextNode("");
    this.textEl = el("p", { className: "lc-msg-text" }, [this.textNode]);
    this.typing = el("span", { className: "lc-typing", attrs: { "aria-hidden": "true" } }, [
      el("span"),
      el("span"),
      el("span"),
    ]);
    this.metaEl = el("p", { className: "lc-msg-meta" });
    this.bubble = el(
      "div",
      {
        className: "lc-msg lc-msg-assistant",
        attrs: { "aria-busy": "true", "data-status": "streaming", "data-phase": this.phase },
      },
      [el("p", { className: "lc-who", text: "그라운더" }), this.textEl, this.typing, this.metaEl],
    );
    if (this.replaces) this.replaces.after(this.bubble);
    else ui.log.append(this.bubble);
    scrollLog();
  }

  /** Apply one stream event (SSE or WebSocket frame). Events already seen are skipped. */
  apply(id, type, data) {
    if (this.finished) return;
    if (Number.isFinite(id)) {
      if (id <= this.lastEventId) return;
      this.lastEventId = id;
      this.bubble.dataset.lastEventId = String(id);
    }
    if (type === "meta") {
      this.messageId = data.message_id || this.messageId;
      this.bubble.dataset.messageId = this.messageId || "";
      if (data.conversation_id) setConversation(data.conversation_id);
      if (Array.isArray(data.sources)) this.sources = data.sources;
      if (data.replay) this.setText("");
      if (data.version) this.bubble.dataset.version = String(data.version);
      if (this.replaces) {
        this.replaces.remove();
        this.replaces = null;
      }
      if (this.cancelRequested) this.sendCancel();
    } else if (type === "delta") {
      if (typeof data.text === "string" && data.text) this.appendText(data.text);
    } else if (type === "done") {
      this.finish(data.status || (data.finish_reason === "cancelled" ? "interrupted" : "complete"), data);
    } else if (type === "error") {
      if (data.code === "server_shutdown") {
        // The stream ends here; the answer goes on elsewhere. Resume after retry_after.
        this.retryAfterMs = Math.max(250, Number(data.retry_after || 1) * 1000);
        return;
      }
      this.error = data.code || "error";
      this.finish("error", data);
    }
  }

  appendText(text) {
    this.text += text;
    this.textNode.appendData(text);
    this.bubble.dataset.chars = String(this.text.length);
    scrollLog();
  }

  setText(text) {
    this.text = text;
    this.textNode.data = text;
    this.bubble.dataset.chars = String(text.length);
  }

  finish(status, data = {}) {
    if (this.finished) return;
    this.move("finish");
    this.status = status;
    this.finishReason = data.finish_reason || null;
    this.bubble.dataset.status = status;
    this.bubble.setAttribute("aria-busy", "false");
    this.typing.remove();
    clearTimeout(this.cancelTimer);
    if (status === "interrupted") {
      this.metaEl.textContent = "답변이 중지되었습니다.";
      announce("답변을 중지했습니다.");
    } else if (status === "error") {
      this.metaEl.textContent = this.errorMessage(data);
      this.metaEl.classList.add("lc-error");
      announce(this.metaEl.textContent);
    } else {
      const titles = [...new Set(this.sources.map((s) => s && s.title).filter(Boolean))];
      this.metaEl.textContent = titles.length ? `참고 자료: ${titles.join(", ")}` : "";
      announce("답변이 완료되었습니다.");
    }
    if (this.messageId && !this.localStop.signal.aborted) this.bubble.append(answerActions(this, this.onRegenerate));
    if (this.controller) this.controller.abort();
    if (state.turn === this) {
      state.turn = null;
      updateControls();
    }
  }

  errorMessage(data) {
    if (data.message_ko) return data.message_ko;
    switch (data.code) {
      case "llm_timeout":
        return "코치의 응답이 너무 늦어 답변을 끝내지 못했습니다. 다시 질문해 주세요.";
      case "llm_error":
        return "답변을 만드는 중 문제가 생겼습니다. 다시 질문해 주세요.";
      case "stream_lost":
        return "답변을 만들던 서버와의 연결이 끊어졌습니다. 다시 질문해 주세요.";
      default:
        return data.text || "답변을 받지 못했습니다. 다시 시도해 주세요.";
    }
  }

  failLocally(message) {
    this.finish("error", { message_ko: message });
  }

  /** Stop reading without cancelling the generation (used when the widget is reset). */
  stopLocally() {
    this.localStop.abort();
    if (this.controller) this.controller.abort();
    this.finish("interrupted");
  }

  async requestCancel() {
    if (this.finished || this.cancelRequested) return;
    this.move("cancel");
    this.cancelRequested = true;
    this.bubble.dataset.cancelRequested = "true";
    announce("답변을 멈추는 중입니다…");
    updateControls();
    if (this.messageId) await this.sendCancel();
    // The stream normally ends with done/cancelled; do not wait forever for it.
    this.cancelTimer = setTimeout(() => this.stopLocally(), CANCEL_GRACE_MS);
  }

  async sendCancel() {
    if (this.cancelSent || !this.messageId) return;
    this.cancelSent = true;
    if (this.channel === "ws" && wsChannel.isOpen()) {
      wsChannel.send({ type: "cancel", message_id: this.messageId });
      return;
    }
    try {
      await api("POST", `/coaching/streams/${encodeURIComponent(this.messageId)}/cancel`);
    } catch {
      this.cancelSent = false; // retried when the stream reconnects and sees meta again
    }
  }

  reconnecting(attempt) {
    this.move("lost");
    this.reconnects = attempt;
    this.bubble.dataset.reconnects = String((Number(this.bubble.dataset.reconnects) || 0) + 1);
    this.metaEl.textContent = "연결이 끊어져 이어 받는 중입니다…";
    announce("연결이 끊어져 다시 연결하고 있습니다.");
  }

  connected() {
    this.move("connected");
    if (this.metaEl.textContent) this.metaEl.textContent = "";
  }
}
