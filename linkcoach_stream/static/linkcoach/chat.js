// The chat: asking a question, regenerating an answer, running a turn over the chosen
// transport, and starting over. A regeneration is a turn without a new question, with its
// own client_message_id, streamed and resumed like any turn; the new answer takes the old
// one's place once the server has started it (its `meta`), until then the old one stays.

import { api, errorText } from "./api.js";
import { selectedTransport, updateControls } from "./controls.js";
import { announce, ui } from "./dom.js";
import { runSse } from "./sse.js";
import { clearConversation, setConversation, state } from "./state.js";
import { Turn } from "./turn.js";
import { runWs } from "./ws.js";
import { wsChannel } from "./ws-channel.js";

async function ensureConversation(question) {
  if (state.conversationId) return true;
  const body = { title: question.slice(0, 40) };
  if (state.report && state.report.report_id) body.report_id = state.report.report_id;
  const result = await api("POST", "/conversations", body);
  if (!result.ok) throw new Error(errorText(result.status, result.data, result.response));
  setConversation(result.data.id);
  return true;
}

export async function ask(question) {
  if (state.turn || !state.token || state.authFailed) return;
  const turn = new Turn(question, { onRegenerate: regenerateAnswer });
  state.turn = turn;
  updateControls();
  announce("그라운더가 답변을 작성하고 있습니다.");
  try {
    await ensureConversation(question);
  } catch (err) {
    turn.failLocally(err instanceof TypeError ? "네트워크 연결을 확인해 주세요." : err.message);
    return;
  }
  await runTurn(turn);
}

export function regenerateAnswer(previous) {
  if (state.turn || !state.token || state.authFailed || !previous.messageId) return;
  const turn = new Turn(previous.question, {
    regenerateOf: previous.messageId,
    replaces: previous.bubble,
    onRegenerate: regenerateAnswer,
  });
  state.turn = turn;
  updateControls();
  announce("그라운더가 새 답변을 작성하고 있습니다.");
  runTurn(turn);
}

async function runTurn(turn) {
  try {
    if (selectedTransport() === "ws" && !state.wsUnavailable) await runWs(turn);
    else await runSse(turn);
  } catch (err) {
    console.error("linkcoach: turn failed", err);
    turn.failLocally("답변을 받지 못했습니다. 다시 시도해 주세요.");
  }
}

export function resetChat() {
  wsChannel.close();
  if (state.turn) state.turn.stopLocally();
  clearConversation();
  ui.log.replaceChildren();
}
