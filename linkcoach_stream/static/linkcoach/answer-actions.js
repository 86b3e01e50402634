// What a finished answer offers: 👍/👎 (a second click replaces the rating on the server,
// which keeps one per user per answer) and 다시 답변 받기 (regenerate).

import { api, errorText } from "./api.js";
import { el } from "./dom.js";

const RATINGS = [
  ["up", "👍", "도움이 됐어요"],
  ["down", "👎", "도움이 되지 않았어요"],
];

/** The actions under `turn`'s answer; `onRegenerate(turn)` asks for a new answer. */
export function answerActions(turn, onRegenerate) {
  const rateable = turn.status === "complete" || (turn.status === "interrupted" && turn.text);
  const regen = el("button", {
    className: "lc-btn lc-regen-btn",
    text: "다시 답변 받기",
    attrs: { type: "button", title: "같은 질문에 새 답변을 받습니다" },
  });
  regen.addEventListener("click", () => onRegenerate(turn));
  return el("div", { className: "lc-answer-actions" }, [
    rateable ? feedbackBar(turn.messageId, turn.bubble) : null,
    regen,
  ]);
}

function feedbackBar(messageId, bubble) {
  const status = el("span", { className: "lc-feedback-status", attrs: { role: "status" } });
  const buttons = RATINGS.map(([rating, emoji, label]) =>
    el("button", {
      className: "lc-feedback-btn",
      text: emoji,
      attrs: { type: "button", "aria-label": label, title: label, "aria-pressed": "false", "data-rating": rating },
    }),
  );
  for (const button of buttons) {
    button.addEventListener("click", () => sendFeedback(messageId, button.dataset.rating, bubble, buttons, status));
  }
  return el("div", { className: "lc-feedback", attrs: { role: "group", "aria-label": "이 답변 평가" } }, [
    ...buttons,
    status,
  ]);
}

async function sendFeedback(messageId, rating, bubble, buttons, status) {
  for (const button of buttons) button.disabled = true;
  status.textContent = "";
  status.classList.remove("lc-error");
  let result = null;
  try {
    result = await api("POST", `/messages/${encodeURIComponent(messageId)}/feedback`, { rating });
  } catch {
    result = null;
  }
  for (const button of buttons) button.disabled = false;
  if (!result || !result.ok) {
    status.textContent = result
      ? errorText(result.status, result.data, result.response)
      : "네트워크 연결을 확인해 주세요.";
    status.classList.add("lc-error");
    return;
  }
  const stored = result.data && result.data.rating;
  for (const button of buttons) button.setAttribute("aria-pressed", String(button.dataset.rating === stored));
  bubble.dataset.feedback = stored || "";
  status.textContent = "의견을 보내 주셔서 고맙습니다.";
}
