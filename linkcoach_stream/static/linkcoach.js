// Link-Coach widget: the leader's report and a streaming chat with the coach "그라운더".
//
// No framework, no build step; served by the app at /widget/linkcoach.js.
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
// - Every question has its own client_message_id and the conversation exists before the
//   first question, so a retried request can never start a second answer.
// - A finished answer (complete, or stopped with text) gets 👍/👎; a second click
//   replaces the rating on the server, which keeps one per user per answer.
// - 다시 답변 받기 regenerates an answer: a turn without a new question, with its own
//   client_message_id, streamed and resumed like any turn. The new answer takes the old
//   one's place once the server has started it (its `meta`); until then the old one stays.

const API = "/api/v1";
const OWN_ORIGIN = window.location.origin;
const MAX_RECONNECTS = 12;
const CANCEL_GRACE_MS = 8000;
const WS_PING_MS = 20000;
const TOKEN_WAIT_MS = 15000;
const MAX_TOKEN_RETRIES = 2;
const DIMENSIONS = [
  ["공유", "목표 공유와 참여"],
  ["상호작용", "관계와 소통"],
  ["성장", "구성원 개개인의 성장 지원"],
];
const DIMENSION_ALIASES = { sharing: "공유", share: "공유", interaction: "상호작용", growth: "성장" };
const HIGH_THRESHOLD = 4.5;
const RATINGS = [
  ["up", "👍", "도움이 됐어요"],
  ["down", "👎", "도움이 되지 않았어요"],
];

// -- configuration rendered by the server -------------------------------------------------

function readMeta(name) {
  const node = document.querySelector(`meta[name="${name}"]`);
  return node ? node.getAttribute("content") : null;
}

function readParentOrigins() {
  try {
    const value = JSON.parse(readMeta("linkcoach-parent-origins") || "[]");
    return Array.isArray(value) ? value.filter((o) => typeof o === "string") : [];
  } catch {
    return [];
  }
}

const config = {
  parentOrigins: readParentOrigins(),
  maxQuestionChars: Number.parseInt(readMeta("linkcoach-max-question-chars") || "2000", 10) || 2000,
};

function originAllowed(origin) {
  return (
    origin === OWN_ORIGIN || config.parentOrigins.includes("*") || config.parentOrigins.includes(origin)
  );
}

// -- DOM helpers ----------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("lc-app"),
  notice: $("lc-notice"),
  report: $("lc-report"),
  reportBody: $("lc-report-body"),
  log: $("lc-log"),
  chatStatus: $("lc-chat-status"),
  form: $("lc-form"),
  question: $("lc-question"),
  send: $("lc-send"),
  stop: $("lc-stop"),
};

/** An element whose text (never markup) comes from `text`. */
function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.className) node.className = options.className;
  if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
  for (const [name, value] of Object.entries(options.attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) if (child) node.append(child);
  return node;
}

function notice(text, kind = "info") {
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
}

function announce(text) {
  ui.chatStatus.textContent = text;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      window.removeEventListener("online", done);
      resolve();
    }
    // Coming back online retries at once instead of waiting out the backoff.
    window.addEventListener("online", done, { once: true });
    if (signal) signal.addEventListener("abort", done, { once: true });
  });
}

function backoffMs(attempt) {
  const base = Math.min(8000, 250 * 2 ** Math.max(0, attempt - 1));
  return base / 2 + Math.random() * (base / 2);
}

function randomId() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
  // randomUUID needs a secure context; getRandomValues does not.
  const bytes = window.crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// -- state ----------------------------------------------------------------------------------

const state = {
  token: null,
  userId: null,
  leadershipType: null,
  assessment: null,
  report: null,
  conversationId: null,
  turn: null,
  parent: null, // {window, origin} once a valid INIT_WIDGET arrived
  wsUnavailable: false,
  authFailed: false,
};

function setAppState(value) {
  ui.app.dataset.state = value;
}

// -- talking to the parent page -------------------------------------------------------------

function embeddingWindow() {
  if (window.parent !== window) return window.parent;
  return window.opener || null;
}

function embeddingOrigin() {
  if (window.parent !== window && window.location.ancestorOrigins && window.location.ancestorOrigins.length) {
    return window.location.ancestorOrigins[0];
  }
  if (document.referrer) {
    try {
      return new URL(document.referrer).origin;
    } catch {
      return null;
    }
  }
  return null;
}

function notifyParent(type, payload) {
  const message = payload === undefined ? { type } : { type, data: payload, payload };
  if (state.parent) {
    state.parent.window.postMessage(message, state.parent.origin);
    return;
  }
  const target = embeddingWindow();
  const origin = embeddingOrigin();
  if (!target || (origin && !originAllowed(origin))) return;
  // WIDGET_READY carries nothing secret; "*" only when the parent's origin is unknown.
  target.postMessage(message, origin || "*");
}

function onMessage(event) {
  if (!originAllowed(event.origin)) return;
  const source = event.source;
  if (!source || source === window || (source !== window.parent && source !== window.opener)) return;
  const message = event.data;
  if (!message || typeof message !== "object") return;
  if (message.type !== "INIT_WIDGET" && message.type !== "UPDATE_USER") return;
  state.parent = { window: source, origin: event.origin };
  const fields = message.data !== undefined && message.data !== null ? message.data : message.payload;
  if (message.type === "INIT_WIDGET") init(fields);
  else updateUser(fields);
}

// -- initialisation -------------------------------------------------------------------------

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
  const source = value.scores && typeof value.scores === "object" ? value.scores : value;
  const scores = {};
  for (const [key, raw] of Object.entries(source)) {
    const name = DIMENSION_ALIASES[key.toLowerCase()] || key;
    if (DIMENSIONS.some(([d]) => d === name)) scores[name] = Number(raw);
  }
  const complete = DIMENSIONS.every(([d]) => Number.isFinite(scores[d]));
  return complete ? scores : null;
}

function fail(message, code) {
  setAppState("error");
  notice(message, "error");
  ui.report.setAttribute("aria-busy", "false");
  ui.reportBody.replaceChildren(el("p", { className: "lc-error", text: message }));
  notifyParent("WIDGET_ERROR", { code });
}

function init(payload) {
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
  const waiting = tokenWaiters.splice(0);
  for (const resolve of waiting) resolve(true);
}

/** UPDATE_USER: a new token, type or assessment for the same user; another user starts over. */
function updateUser(data) {
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

function initFromFragment() {
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

// -- HTTP -----------------------------------------------------------------------------------

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${state.token}`, ...extra };
}

async function readJson(response) {
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

function errorText(status, data, response) {
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

async function api(method, path, body, retried = false) {
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

function authExpired(code) {
  if (state.authFailed) return;
  state.authFailed = true;
  notice("인증이 만료되었습니다. 새 인증 정보를 기다리고 있습니다…", "error");
  notifyParent("WIDGET_TOKEN_EXPIRED", { code: code || "unauthorized", status: 401 });
  notifyParent("WIDGET_ERROR", { code: code || "unauthorized", status: 401 });
  updateControls();
}

/** After a 401: true once the parent sent a new token, false after TOKEN_WAIT_MS. */
function waitForToken() {
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

// -- the report -----------------------------------------------------------------------------

async function loadReport() {
  setAppState("loading");
  ui.report.setAttribute("aria-busy", "true");
  ui.reportBody.replaceChildren(el("p", { className: "lc-placeholder", text: "리포트를 불러오는 중입니다…" }));
  const body = {};
  if (state.leadershipType) body.leadership_type = state.leadershipType;
  if (state.assessment) body.assessment = state.assessment;
  let result;
  try {
    result = await api("POST", "/coaching/interpretation", body);
  } catch {
    reportFailed("네트워크 연결을 확인한 뒤 다시 시도해 주세요.");
    return;
  }
  if (!result.ok) {
    reportFailed(errorText(result.status, result.data, result.response));
    return;
  }
  state.report = result.data;
  renderReport(result.data);
  ui.report.setAttribute("aria-busy", "false");
  setAppState("ready");
  updateControls();
  notifyParent("WIDGET_REPORT_LOADED", {
    report_id: result.data.report_id,
    leadership_type: result.data.leadership_type,
    leadership_code: result.data.leadership_code,
  });
}

function reportFailed(message) {
  ui.report.setAttribute("aria-busy", "false");
  setAppState("ready");
  const retry = el("button", { className: "lc-btn", text: "리포트 다시 불러오기", attrs: { type: "button" } });
  retry.addEventListener("click", () => loadReport());
  ui.reportBody.replaceChildren(el("p", { className: "lc-error", text: message }), retry);
  updateControls();
}

function section(title, ...children) {
  return el("section", { className: "lc-section" }, [el("h2", { text: title }), ...children]);
}

function bar(fraction, label) {
  const fill = el("span", { className: "lc-bar-fill" });
  // CSSOM writes are allowed under style-src 'self'; inline style attributes are not.
  fill.style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  return el("span", { className: "lc-bar", attrs: { "aria-hidden": "true", title: label } }, [fill]);
}

function renderDimensions(report) {
  const code = String(report.leadership_code || "");
  const scores = report.scores && typeof report.scores === "object" ? report.scores : null;
  const items = DIMENSIONS.map(([name, description], i) => {
    const score = scores ? Number(scores[name]) : Number.NaN;
    const high = Number.isFinite(score) ? score >= HIGH_THRESHOLD : code[i] === "H";
    const level = high ? "높음" : "낮음";
    const value = Number.isFinite(score) ? `${score.toFixed(1)} / 6 · ${level}` : level;
    return el("li", { className: "lc-dim", attrs: { "data-dimension": name } }, [
      el("span", { className: "lc-dim-name", text: name }),
      el("span", { className: "lc-dim-desc", text: description }),
      Number.isFinite(score) ? bar((score - 1) / 5, value) : null,
      el("span", { className: `lc-dim-score ${high ? "is-high" : "is-low"}`, text: value }),
    ]);
  });
  return el("ul", { className: "lc-dims" }, items);
}

function list(items) {
  return Array.isArray(items) ? items.filter((item) => item && typeof item === "object") : [];
}

function renderReport(report) {
  const r = report.report && typeof report.report === "object" ? report.report : {};
  const badges = [];
  if (report.provider === "offline") badges.push("오프라인 생성");
  if (report.cached) badges.push("저장된 리포트");
  const header = el("div", { className: "lc-type" }, [
    el("p", { className: "lc-type-name" }, [
      el("span", { text: report.leadership_type || "리더십 유형" }),
      report.leadership_code ? el("span", { className: "lc-code", text: report.leadership_code }) : null,
    ]),
    badges.length ? el("p", { className: "lc-badges", text: badges.join(" · ") }) : null,
  ]);

  const strengths = el(
    "ol",
    { className: "lc-cards" },
    list(r.strengths).map((s) =>
      el("li", { className: "lc-card" }, [el("h3", { text: s.title }), el("p", { text: s.description })]),
    ),
  );
  const improvements = el(
    "ol",
    { className: "lc-cards" },
    list(r.improvements).map((s) =>
      el("li", { className: "lc-card" }, [
        el("h3", { text: s.title }),
        el("p", { text: s.description }),
        s.action ? el("p", { className: "lc-action" }, [el("strong", { text: "실천: " }), s.action]) : null,
      ]),
    ),
  );
  const plan = r.action_plan && typeof r.action_plan === "object" ? r.action_plan : {};
  const planList = el("dl", { className: "lc-plan" }, [
    el("dt", { text: "지금 바로" }),
    el("dd", { text: plan.immediate || "-" }),
    el("dt", { text: "단기 (1~3개월)" }),
    el("dd", { text: plan.short_term || "-" }),
    el("dt", { text: "장기 (6개월 이상)" }),
    el("dd", { text: plan.long_term || "-" }),
  ]);
  const followers = el(
    "ul",
    { className: "lc-followers" },
    list(r.followership).map((f) => {
      const score = Number(f.score);
      const scoreText = Number.isFinite(score) ? `궁합 ${Math.round(score)}점` : "";
      return el("li", { className: "lc-follower", attrs: { "data-type": f.type || "" } }, [
        el("details", {}, [
          el("summary", {}, [
            el("span", { className: "lc-follower-name", text: f.name || f.type }),
            Number.isFinite(score) ? bar(score / 100, scoreText) : null,
            el("span", { className: "lc-follower-score", text: scoreText }),
          ]),
          el("dl", {}, [
            el("dt", { text: "시너지" }),
            el("dd", { text: f.synergy || "-" }),
            el("dt", { text: "주의할 점" }),
            el("dd", { text: f.caution || "-" }),
            el("dt", { text: "함께 일하는 법" }),
            el("dd", { text: f.how_to_work_together || "-" }),
          ]),
        ]),
      ]);
    }),
  );
  const risks = list(r.risk_signals);
  ui.reportBody.replaceChildren(
    header,
    section("요약", el("p", { className: "lc-summary", text: r.summary || "" })),
    section("세 가지 차원", renderDimensions(report)),
    section("강점", strengths),
    section("개선점", improvements),
    section("실행 계획", planList),
    section("팔로워십 궁합", followers),
    risks.length
      ? section(
          "위험 신호",
          el(
            "ul",
            { className: "lc-risks" },
            risks.map((s) =>
              el("li", {}, [el("strong", { text: s.signal }), el("span", { text: ` → ${s.action || ""}` })]),
            ),
          ),
        )
      : null,
  );
}

// -- the chat: one turn ---------------------------------------------------------------------

function selectedTransport() {
  const checked = ui.form.querySelector('input[name="transport"]:checked');
  return checked ? checked.value : "sse";
}

function selectTransport(value) {
  const input = ui.form.querySelector(`input[name="transport"][value="${value}"]`);
  if (input) input.checked = true;
}

function updateControls() {
  const ready = Boolean(state.token) && !state.authFailed;
  const busy = Boolean(state.turn);
  const focused = document.activeElement;
  ui.question.disabled = !ready;
  ui.send.disabled = !ready || busy;
  ui.stop.disabled = !busy || Boolean(state.turn && state.turn.cancelRequested);
  for (const button of ui.log.querySelectorAll(".lc-regen-btn")) button.disabled = !ready || busy;
  // A button that just got disabled would drop keyboard focus to <body>.
  if ((focused === ui.send || focused === ui.stop) && focused.disabled && !ui.question.disabled) {
    ui.question.focus();
  }
}

function resetChat() {
  wsChannel.close();
  if (state.turn) state.turn.stopLocally();
  state.conversationId = null;
  delete ui.log.dataset.conversationId;
  ui.log.replaceChildren();
}

function scrollLog() {
  const nearBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 80;
  if (nearBottom) ui.log.scrollTop = ui.log.scrollHeight;
}

class Turn {
  /** `options.regenerateOf`: the answer's message id when this turn regenerates it, and
   * `options.replaces`: that answer's bubble. */
  constructor(question, options = {}) {
    this.question = question;
    this.regenerateOf = options.regenerateOf || null;
    this.replaces = options.replaces || null;
    this.clientMessageId = randomId();
    this.messageId = null;
    this.lastEventId = 0;
    this.text = "";
    this.sources = [];
    this.finished = false;
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
      { className: "lc-msg lc-msg-assistant", attrs: { "aria-busy": "true", "data-status": "streaming" } },
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
    this.finished = true;
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
    if (this.messageId && !this.localStop.signal.aborted) this.bubble.append(answerActions(this));
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
    this.reconnects = attempt;
    this.bubble.dataset.reconnects = String((Number(this.bubble.dataset.reconnects) || 0) + 1);
    this.metaEl.textContent = "연결이 끊어져 이어 받는 중입니다…";
    announce("연결이 끊어져 다시 연결하고 있습니다.");
  }

  connected() {
    if (this.metaEl.textContent) this.metaEl.textContent = "";
  }
}

// -- acting on an answer: feedback, regenerate ----------------------------------------------

function answerActions(turn) {
  const rateable = turn.status === "complete" || (turn.status === "interrupted" && turn.text);
  const regen = el("button", {
    className: "lc-btn lc-regen-btn",
    text: "다시 답변 받기",
    attrs: { type: "button", title: "같은 질문에 새 답변을 받습니다" },
  });
  regen.addEventListener("click", () => regenerateAnswer(turn));
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

function setConversation(id) {
  state.conversationId = id;
  ui.log.dataset.conversationId = id;
}

async function ensureConversation(question) {
  if (state.conversationId) return true;
  const body = { title: question.slice(0, 40) };
  if (state.report && state.report.report_id) body.report_id = state.report.report_id;
  const result = await api("POST", "/conversations", body);
  if (!result.ok) throw new Error(errorText(result.status, result.data, result.response));
  setConversation(result.data.id);
  return true;
}

/** The request that starts `turn`: a question, or a regeneration of an answer. */
function startRequest(turn) {
  if (turn.regenerateOf) {
    return {
      path: `/messages/${encodeURIComponent(turn.regenerateOf)}/regenerate`,
      body: { client_message_id: turn.clientMessageId },
    };
  }
  return { path: "/coaching/query/stream", body: turnBody(turn) };
}

function startFrame(turn) {
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

async function ask(question) {
  if (state.turn || !state.token || state.authFailed) return;
  const turn = new Turn(question);
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

function regenerateAnswer(previous) {
  if (state.turn || !state.token || state.authFailed || !previous.messageId) return;
  const turn = new Turn(previous.question, { regenerateOf: previous.messageId, replaces: previous.bubble });
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

// -- SSE over fetch -------------------------------------------------------------------------

/** Read an SSE body, calling onEvent(id, event, data) per event; returns the event count. */
async function readSse(body, onEvent) {
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

async function runSse(turn) {
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

// -- WebSocket ------------------------------------------------------------------------------

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

const wsChannel = new WsChannel();

async function runWs(turn) {
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

// -- wiring ---------------------------------------------------------------------------------

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
window.addEventListener("message", onMessage);

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
