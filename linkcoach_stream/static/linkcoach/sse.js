// The chat over fetch: POST with an Authorization header (EventSource cannot send one),
// the body read as Server-Sent Events. A dropped connection is resumed from the last
// event id (GET /coaching/streams/{id} with Last-Event-ID); only the stop button cancels a
// generation.

import { authExpired, authHeaders, errorText, readJson, waitForToken } from "./api.js";
import { API, MAX_RECONNECTS, MAX_TOKEN_RETRIES } from "./config.js";
import { backoffMs, sleep } from "./resume.js";
import { startRequest } from "./turn-requests.js";

/** Read an SSE body, calling onEvent(id, event, data) per event; returns the event count. */
export async function readSse(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { id: null, type: "message", data: [] };
  let count = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return count;
      buffer += value;
      for (;;) {
        const i = buffer.search(/[\r\n]/);
        if (i < 0) break;
        if (buffer[i] === "\r" && i === buffer.length - 1) break; // maybe half of \r\n
        const line = buffer.slice(0, i);
        buffer = buffer.slice(i + (buffer.startsWith("\r\n", i) ? 2 : 1));
        if (line === "") {
          if (event.data.length) {
            count += 1;
            let data = null;
            try {
              data = JSON.parse(event.data.join("\n"));
            } catch {
              data = null;
            }
            if (data && typeof data === "object") {
              const id = event.id === null ? Number.NaN : Number(event.id);
              if (onEvent(id, event.type, data) === false) return count;
            }
          }
          event = { id: null, type: "message", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // comment / ping
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let fieldValue = colon < 0 ? "" : line.slice(colon + 1);
        if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
        if (field === "data") event.data.push(fieldValue);
        else if (field === "event") event.type = fieldValue;
        else if (field === "id") event.id = fieldValue;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

export async function runSse(turn) {
  turn.channel = "sse";
  let attempt = 0;
  while (!turn.finished) {
    const controller = new AbortController();
    turn.controller = controller;
    let retryable = true;
    try {
      let response;
      if (turn.messageId) {
        response = await fetch(`${API}/coaching/streams/${encodeURIComponent(turn.messageId)}`, {
          method: "GET",
          headers: authHeaders({ Accept: "text/event-stream", "Last-Event-ID": String(turn.lastEventId) }),
          cache: "no-store",
          signal: controller.signal,
        });
      } else {
        const start = startRequest(turn);
        response = await fetch(API + start.path, {
          method: "POST",
          headers: authHeaders({ Accept: "text/event-stream", "Content-Type": "application/json" }),
          body: JSON.stringify(start.body),
          cache: "no-store",
          signal: controller.signal,
        });
      }
      if (!response.ok) {
        const data = await readJson(response);
        // 409 on a question: this client_message_id is still being set up; 5xx: try again.
        // A regeneration's 409 (the answer is still being written) is final.
        retryable = (response.status === 409 && !turn.regenerateOf) || response.status >= 500;
        if (response.status === 401) {
          authExpired(data && data.error ? data.error.code : null);
          // The same request again with the parent's new token; nothing started yet.
          if (turn.tokenRetries++ < MAX_TOKEN_RETRIES && (await waitForToken())) continue;
        }
        if (!retryable) {
          turn.failLocally(errorText(response.status, data, response));
          return;
        }
      } else {
        turn.connected();
        const seen = await readSse(response.body, (id, type, data) => {
          turn.apply(id, type, data);
          return !turn.finished;
        });
        if (seen > 0) attempt = 0;
      }
    } catch (err) {
      if (turn.localStop.signal.aborted || turn.finished) return;
      if (err && err.name !== "TypeError" && err.name !== "AbortError") console.warn("linkcoach: stream", err);
    }
    if (turn.finished) return;
    attempt += 1;
    if (attempt > MAX_RECONNECTS) {
      turn.failLocally("연결이 끊어져 답변을 이어 받지 못했습니다. 다시 질문해 주세요.");
      return;
    }
    turn.reconnecting(attempt);
    const wait = turn.retryAfterMs || backoffMs(attempt);
    turn.retryAfterMs = 0;
    await sleep(wait, turn.localStop.signal);
  }
}
