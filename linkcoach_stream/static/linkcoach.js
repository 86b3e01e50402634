// Link-Coach widget: the leader's report and a streaming chat with the coach "그라운더".
//
// No framework, no build step: ES modules served by the app as they are, this one at
// /widget/linkcoach.js and the rest at /widget/linkcoach/*.js:
//   config.js       what the server renders into the page (origins, limits, the dimensions)
//   dom.js          the page's elements and text-only writes; state.js the session
//   parent.js       the postMessage contract; session.js INIT_WIDGET / UPDATE_USER
//   api.js          HTTP with the token, error texts, waiting for a new token after a 401
//   report.js       the report; chat.js asking and regenerating; turn.js one answer
//   chat-state.js   a turn's phases (the chat state machine); answer-actions.js 👍/👎
//   sse.js, ws.js, ws-channel.js, resume.js, turn-requests.js: the transports
// Decisions worth keeping:
// - Model output (and anything else from the network or the parent) is only ever written
//   with textContent / Text nodes, never innerHTML. The page's CSP also forbids inline code.
// - INIT_WIDGET / UPDATE_USER are accepted only from the parent (or opener) window and only
//   from an allow-listed origin (the server renders CORS_ORIGINS into a <meta>) or this
//   origin. Their fields may come under `data` (the product's embed.js, /embed.js) or
//   `payload`; messages to the parent carry both keys.
// - A call that gets 401 posts WIDGET_TOKEN_EXPIRED and waits up to TOKEN_WAIT_MS for the
//   parent to send a new token (INIT_WIDGET again or UPDATE_USER {token}), then retries.
// - The chat streams over fetch (POST with an Authorization header; EventSource cannot
//   send one) or a WebSocket (subprotocol ["bearer", token]). A dropped connection is
//   resumed from the last event id; only the stop button cancels a generation.
// - The dimensions, their descriptions and the High threshold are rendered by the server
//   from its taxonomy (a <meta>), never written here a second time.
// - Every question has its own client_message_id and the conversation exists before the
//   first question, so a retried request can never start a second answer.
// - A finished answer (complete, or stopped with text) gets 👍/👎; a second click
//   replaces the rating on the server, which keeps one per user per answer.
// - 다시 답변 받기 regenerates an answer: a turn without a new question, with its own
//   client_message_id, streamed and resumed like any turn. The new answer takes the old
//   one's place once the server has started it (its `meta`); until then the old one stays.

import { ask } from "./linkcoach/chat.js";
import { config, originAllowed } from "./linkcoach/config.js";
import { el, notice, setAppState, ui } from "./linkcoach/dom.js";
import { embeddingOrigin, embeddingWindow, listenToParent, notifyParent } from "./linkcoach/parent.js";
import { init, initFromFragment, updateUser } from "./linkcoach/session.js";
import { state } from "./linkcoach/state.js";

function submitQuestion() {
  const question = ui.question.value.trim();
  if (!question) {
    notice("질문을 입력해 주세요.", "error");
    ui.question.focus();
    return;
  }
  if (question.length > config.maxQuestionChars) {
    notice(`질문은 ${config.maxQuestionChars}자 이하로 입력해 주세요.`, "error");
    ui.question.focus();
    return;
  }
  if (state.turn) return;
  notice("");
  ui.question.value = "";
  ask(question);
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  submitQuestion();
});

ui.question.addEventListener("keydown", (event) => {
  // isComposing / 229: Enter that confirms a Korean IME syllable must not send.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    if (!state.turn) submitQuestion();
  }
});

ui.stop.addEventListener("click", () => {
  if (state.turn) state.turn.requestCancel();
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.turn && !state.turn.cancelRequested) {
    event.preventDefault();
    state.turn.requestCancel();
  }
});

ui.question.setAttribute("maxlength", String(config.maxQuestionChars));
listenToParent({ init, updateUser });

if (!initFromFragment()) {
  const parent = embeddingWindow();
  const origin = embeddingOrigin();
  if (parent && origin && !originAllowed(origin)) {
    setAppState("error");
    notice("이 사이트에서는 Link-Coach 위젯을 사용할 수 없습니다.", "error");
    ui.reportBody.replaceChildren(
      el("p", { className: "lc-error", text: "허용되지 않은 사이트에서 열린 위젯입니다." }),
    );
    ui.report.setAttribute("aria-busy", "false");
  } else if (parent) {
    ui.reportBody.replaceChildren(
      el("p", { className: "lc-placeholder", text: "리더십 진단 정보를 기다리고 있습니다…" }),
    );
    notifyParent("WIDGET_READY");
  } else {
    ui.report.setAttribute("aria-busy", "false");
    ui.reportBody.replaceChildren(
      el("p", {
        className: "lc-placeholder",
        text: "이 위젯은 Link-Coach를 쓰는 사이트에 삽입되어 동작합니다. 개발 환경에서는 /demo 페이지에서 체험할 수 있습니다.",
      }),
    );
  }
}
