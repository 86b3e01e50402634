// Who the widget is for: INIT_WIDGET (or the #token=… fragment) signs a user in, UPDATE_USER
// changes their token, type or assessment; another user starts over. The token is checked
// against the userId the parent names, and the assessment is reduced to what the API takes.

import { tokenRenewed } from "./api.js";
import { resetChat } from "./chat.js";
import { taxonomy } from "./config.js";
import { selectTransport, updateControls } from "./controls.js";
import { el, notice, setAppState, ui } from "./dom.js";
import { notifyParent } from "./parent.js";
import { loadReport } from "./report.js";
import { state } from "./state.js";
import { wsChannel } from "./ws-channel.js";

const TOKEN_PATTERN = /^[A-Za-z0-9._~+/=-]{10,8192}$/;

function tokenSubject(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(part + "=".repeat((4 - (part.length % 4)) % 4));
    const json = new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
    const sub = JSON.parse(json).sub;
    return typeof sub === "string" ? sub : null;
  } catch {
    return null;
  }
}

function normalizeAssessment(value) {
  if (value === undefined || value === null || value === "") return null;
  if (typeof value === "string") {
    try {
      return normalizeAssessment(JSON.parse(value));
    } catch {
      return null;
    }
  }
  if (typeof value !== "object" || Array.isArray(value)) return null;
  if (value.answers && typeof value.answers === "object") return { answers: value.answers };
  const { dimensions, aliases } = taxonomy;
  const source = value.scores && typeof value.scores === "object" ? value.scores : value;
  const scores = {};
  for (const [key, raw] of Object.entries(source)) {
    const name = aliases[key.toLowerCase()] || key;
    if (dimensions.some(([d]) => d === name)) scores[name] = Number(raw);
  }
  const complete = dimensions.every(([d]) => Number.isFinite(scores[d]));
  return complete ? scores : null;
}

function fail(message, code) {
  setAppState("error");
  notice(message, "error");
  ui.report.setAttribute("aria-busy", "false");
  ui.reportBody.replaceChildren(el("p", { className: "lc-error", text: message }));
  notifyParent("WIDGET_ERROR", { code });
}

export function init(payload) {
  if (!payload || typeof payload !== "object") {
    fail("위젯 초기화 정보가 올바르지 않습니다.", "invalid_init");
    return;
  }
  const token = typeof payload.token === "string" ? payload.token.trim() : "";
  if (!TOKEN_PATTERN.test(token)) {
    fail("인증 토큰이 없거나 올바르지 않습니다.", "invalid_token");
    return;
  }
  const userId = payload.userId === undefined || payload.userId === null ? null : String(payload.userId);
  const subject = tokenSubject(token);
  if (userId && subject && userId !== subject) {
    fail("사용자 정보가 인증 토큰과 일치하지 않습니다.", "user_mismatch");
    return;
  }
  const user = subject || userId;
  if (state.token && state.userId === user) {
    // The same user again: a fresh token from the parent (e.g. the old one expired).
    refreshToken(token);
    if (!state.report) loadReport();
    return;
  }
  if (state.token) resetChat();
  state.token = token;
  state.userId = user;
  state.authFailed = false;
  state.leadershipType = leadershipTypeOf(payload.leadershipType);
  state.assessment = normalizeAssessment(payload.assessmentData);
  state.report = null;
  notice("");
  updateControls();
  loadReport();
}

function leadershipTypeOf(value) {
  return typeof value === "string" && value.trim() ? value.trim().slice(0, 64) : null;
}

function refreshToken(token) {
  state.token = token;
  state.authFailed = false;
  wsChannel.close();
  notice("인증 정보를 갱신했습니다.");
  updateControls();
  tokenRenewed();
}

/** UPDATE_USER: a new token, type or assessment for the same user; another user starts over. */
export function updateUser(data) {
  if (!data || typeof data !== "object") return;
  const userId = data.userId === undefined || data.userId === null ? state.userId : String(data.userId);
  if (!state.token || userId !== state.userId) {
    init({ ...data, token: data.token || state.token, userId });
    return;
  }
  if (data.token !== undefined) {
    const token = typeof data.token === "string" ? data.token.trim() : "";
    const subject = TOKEN_PATTERN.test(token) ? tokenSubject(token) : null;
    if (!TOKEN_PATTERN.test(token) || (subject && subject !== state.userId)) {
      notifyParent("WIDGET_ERROR", { code: TOKEN_PATTERN.test(token) ? "user_mismatch" : "invalid_token" });
      return;
    }
    refreshToken(token);
  }
  let reload = !state.report;
  if (data.leadershipType !== undefined) {
    const type = leadershipTypeOf(data.leadershipType);
    reload = reload || type !== state.leadershipType;
    state.leadershipType = type;
  }
  if (data.assessmentData !== undefined) {
    state.assessment = normalizeAssessment(data.assessmentData);
    reload = true;
  }
  if (reload) loadReport();
}

export function initFromFragment() {
  const hash = window.location.hash.replace(/^#/, "");
  if (!hash) return false;
  const params = new URLSearchParams(hash);
  const token = params.get("token");
  if (!token) return false;
  // Keep the token out of the address bar, history and screenshots.
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
  if (params.get("transport") === "ws") selectTransport("ws");
  init({
    token,
    userId: params.get("userId"),
    leadershipType: params.get("leadershipType"),
    assessmentData: params.get("assessment"),
  });
  return true;
}
