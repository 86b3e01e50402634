// The demo parent page: mints a development token on the server and hands it to the
// widget iframe by postMessage, exactly as a real parent site would (README, "Embedding").
// Served only outside production.

const form = document.getElementById("demo-form");
const statusLine = document.getElementById("demo-status");
const slot = document.getElementById("demo-frame-slot");
const direct = document.getElementById("demo-direct");
const WIDGET_ORIGIN = window.location.origin;
let current = null;

function readScores() {
  const scores = {};
  for (const name of ["공유", "상호작용", "성장"]) {
    const raw = form.elements.namedItem(name).value.trim();
    if (!raw) return null;
    const value = Number(raw);
    if (!Number.isFinite(value) || value < 1 || value > 6) return null;
    scores[name] = value;
  }
  return scores;
}

async function mintToken(leadershipType) {
  const response = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ leadership_type: leadershipType }),
  });
  if (!response.ok) throw new Error(`토큰 발급 실패 (HTTP ${response.status})`);
  return response.json();
}

function onWidgetMessage(event) {
  if (!current || event.source !== current.frame.contentWindow || event.origin !== WIDGET_ORIGIN) return;
  const message = event.data || {};
  if (message.type === "WIDGET_READY") {
    current.frame.contentWindow.postMessage({ type: "INIT_WIDGET", payload: current.payload }, WIDGET_ORIGIN);
    statusLine.textContent = `위젯에 데모 사용자 ${current.payload.userId} 정보를 전달했습니다.`;
  } else if (message.type === "WIDGET_REPORT_LOADED") {
    statusLine.textContent = `리포트를 불러왔습니다: ${message.payload.leadership_type}`;
  } else if (message.type === "WIDGET_ERROR") {
    statusLine.textContent = `위젯 오류: ${message.payload && message.payload.code}`;
  }
}

async function start() {
  const leadershipType = form.elements.namedItem("leadership_type").value;
  const scores = readScores();
  statusLine.textContent = "데모 사용자 토큰을 발급받는 중입니다…";
  let minted;
  try {
    minted = await mintToken(leadershipType);
  } catch (err) {
    statusLine.textContent = err.message;
    return;
  }
  const payload = { token: minted.access_token, userId: minted.user_id, leadershipType };
  if (scores) payload.assessmentData = scores;
  const frame = document.createElement("iframe");
  frame.title = "Link-Coach 리더십 코치 위젯";
  frame.id = "linkcoach-widget";
  current = { frame, payload };
  slot.replaceChildren(frame);
  frame.src = "/widget/";
  const fragment = new URLSearchParams({ token: payload.token, userId: payload.userId, leadershipType });
  if (scores) fragment.set("assessment", JSON.stringify(scores));
  direct.href = `/widget/#${fragment}`;
  direct.hidden = false;
}

window.addEventListener("message", onWidgetMessage);
form.addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});
start();
