// The chat over the WebSocket: a turn starts with its start frame or resumes from its
// last event id; a refused handshake falls back to SSE for good, repeated drops fall back
// to SSE for this turn (which resumes where the socket stopped).

import { waitForToken } from "./api.js";
import { MAX_TOKEN_RETRIES } from "./config.js";
import { selectTransport } from "./controls.js";
import { notice } from "./dom.js";
import { backoffMs, sleep } from "./resume.js";
import { runSse } from "./sse.js";
import { state } from "./state.js";
import { startFrame } from "./turn-requests.js";
import { wsChannel } from "./ws-channel.js";

export async function runWs(turn) {
  turn.channel = "ws";
  let attempt = 0;
  while (!turn.finished) {
    try {
      await wsChannel.open();
    } catch (err) {
      if (state.authFailed) {
        if (turn.tokenRetries++ < MAX_TOKEN_RETRIES && (await waitForToken())) continue;
        turn.failLocally("인증이 만료되었습니다.");
        return;
      }
      if (!wsChannel.everReady) {
        // The handshake is refused here (proxy, origin rules): SSE carries the same stream.
        state.wsUnavailable = true;
        selectTransport("sse");
        notice("웹소켓 연결을 사용할 수 없어 스트리밍(SSE)으로 전환했습니다.");
        return runSse(turn);
      }
      attempt += 1;
      if (attempt > 2) return runSse(turn); // resumes from turn.lastEventId
      turn.reconnecting(attempt);
      await sleep(backoffMs(attempt), turn.localStop.signal);
      continue;
    }
    turn.connected();
    const frame = turn.messageId
      ? { type: "resume", message_id: turn.messageId, last_event_id: turn.lastEventId }
      : startFrame(turn);
    const outcome = await wsChannel.run(turn, frame);
    if (turn.cancelRequested && turn.messageId && !turn.cancelSent) turn.sendCancel();
    if (outcome !== "closed" || turn.finished) return;
    attempt += 1;
    turn.reconnecting(attempt);
    await sleep(backoffMs(attempt), turn.localStop.signal);
  }
}
