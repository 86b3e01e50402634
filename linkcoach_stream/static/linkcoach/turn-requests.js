// What starts a turn on the wire: the POST body (SSE) or the first frame (WebSocket) of a
// question or of a regeneration. Every question has its own client_message_id and the
// conversation exists before the first question, so a retried request can never start a
// second answer.

import { state } from "./state.js";

/** The request that starts `turn`: a question, or a regeneration of an answer. */
export function startRequest(turn) {
  if (turn.regenerateOf) {
    return {
      path: `/messages/${encodeURIComponent(turn.regenerateOf)}/regenerate`,
      body: { client_message_id: turn.clientMessageId },
    };
  }
  return { path: "/coaching/query/stream", body: turnBody(turn) };
}

export function startFrame(turn) {
  if (turn.regenerateOf) {
    return { type: "regenerate", message_id: turn.regenerateOf, client_message_id: turn.clientMessageId };
  }
  return { type: "question", ...turnBody(turn) };
}

function turnBody(turn) {
  const body = { question: turn.question, client_message_id: turn.clientMessageId };
  if (state.conversationId) body.conversation_id = state.conversationId;
  if (state.report && state.report.report_id) body.report_id = state.report.report_id;
  return body;
}
