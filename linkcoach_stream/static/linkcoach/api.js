// HTTP calls to the API with the user's token, the Korean text of its errors, and what a
// 401 does: post WIDGET_TOKEN_EXPIRED and wait up to TOKEN_WAIT_MS for the parent to send
// a new token (INIT_WIDGET again or UPDATE_USER {token}), then retry once.

import { API, TOKEN_WAIT_MS, config } from "./config.js";
import { updateControls } from "./controls.js";
import { notice } from "./dom.js";
import { notifyParent } from "./parent.js";
import { state } from "./state.js";

export function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${state.token}`, ...extra };
}

export async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

function retryAfter(response, data) {
  const fromBody = data && data.error && Number(data.error.retry_after);
  const fromHeader = Number(response.headers.get("Retry-After"));
  return Math.ceil(fromBody || fromHeader || 1);
}

export function errorText(status, data, response) {
  const code = data && data.error ? data.error.code : null;
  if (status === 401) return "인증이 만료되었거나 올바르지 않습니다. 페이지를 새로고침해 주세요.";
  if (status === 429) {
    const seconds = response ? retryAfter(response, data) : 1;
    return `요청이 너무 많습니다. ${seconds}초 후에 다시 시도해 주세요.`;
  }
  if (status === 413) return "보낸 내용이 너무 깁니다.";
  if (code === "answer_in_progress") return "이 질문의 답변이 아직 작성 중입니다. 끝난 뒤 다시 시도해 주세요.";
  if (status === 422 && data && data.error && data.error.field === "question") {
    return `질문은 1자 이상 ${config.maxQuestionChars}자 이하로 입력해 주세요.`;
  }
  if (status === 422) return "입력 값을 확인해 주세요.";
  if (status === 404) return "요청한 내용을 찾을 수 없습니다.";
  if (status === 503) return "서버가 잠시 바쁩니다. 잠시 후 다시 시도해 주세요.";
  if (status >= 500) return "서버에서 오류가 발생했습니다. 잠시 후 다시 시도해 주세요.";
  return code ? `요청을 처리하지 못했습니다. (${code})` : "요청을 처리하지 못했습니다.";
}

export async function api(method, path, body, retried = false) {
  const response = await fetch(API + path, {
    method,
    headers: authHeaders(body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const data = await readJson(response);
  if (response.status === 401) {
    authExpired(data && data.error ? data.error.code : "unauthorized");
    if (!retried && (await waitForToken())) return api(method, path, body, true);
  }
  return { ok: response.ok, status: response.status, data, response };
}

const tokenWaiters = [];

export function authExpired(code) {
  if (state.authFailed) return;
  state.authFailed = true;
  notice("인증이 만료되었습니다. 새 인증 정보를 기다리고 있습니다…", "error");
  notifyParent("WIDGET_TOKEN_EXPIRED", { code: code || "unauthorized", status: 401 });
  notifyParent("WIDGET_ERROR", { code: code || "unauthorized", status: 401 });
  updateControls();
}

/** After a 401: true once the parent sent a new token, false after TOKEN_WAIT_MS. */
export function waitForToken() {
  if (!state.authFailed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      const i = tokenWaiters.indexOf(done);
      if (i >= 0) tokenWaiters.splice(i, 1);
      if (state.authFailed) {
        notice("인증이 만료되었습니다. 부모 페이지에서 새 토큰을 보내거나 새로고침해 주세요.", "error");
      }
      resolve(false);
    }, TOKEN_WAIT_MS);
    function done(value) {
      clearTimeout(timer);
      resolve(value);
    }
    tokenWaiters.push(done);
  });
}

/** A new token arrived: every call waiting in waitForToken() goes on. */
export function tokenRenewed() {
  const waiting = tokenWaiters.splice(0);
  for (const resolve of waiting) resolve(true);
}
