// The leader's report: fetched from /coaching/interpretation and rendered as text nodes.
// The dimensions, their order and the High threshold come from the server (config.js).

import { api, errorText } from "./api.js";
import { taxonomy } from "./config.js";
import { updateControls } from "./controls.js";
import { el, setAppState, ui } from "./dom.js";
import { notifyParent } from "./parent.js";
import { state } from "./state.js";


export async function loadReport() {
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
  const { dimensions, highThreshold, scoreMin, scoreMax } = taxonomy;
  const items = dimensions.map(([name, description], i) => {
    const score = scores ? Number(scores[name]) : Number.NaN;
    const high = Number.isFinite(score) ? score >= highThreshold : code[i] === "H";
    const level = high ? "높음" : "낮음";
    const value = Number.isFinite(score) ? `${score.toFixed(1)} / ${scoreMax} · ${level}` : level;
    return el("li", { className: "lc-dim", attrs: { "data-dimension": name } }, [
      el("span", { className: "lc-dim-name", text: name }),
      el("span", { className: "lc-dim-desc", text: description }),
      Number.isFinite(score) ? bar((score - scoreMin) / (scoreMax - scoreMin), value) : null,
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
