// What the server renders into the page (<meta> tags; the CSP forbids inline scripts) and
// the widget's fixed limits. The dimensions, their descriptions, the score range and the
// High threshold come from the server's taxonomy, so they are defined once, in Python.

export const API = "/api/v1";
export const OWN_ORIGIN = window.location.origin;
export const MAX_RECONNECTS = 12;
export const CANCEL_GRACE_MS = 8000;
export const WS_PING_MS = 20000;
export const TOKEN_WAIT_MS = 15000;
export const MAX_TOKEN_RETRIES = 2;

function readMeta(name) {
  const node = document.querySelector(`meta[name="${name}"]`);
  return node ? node.getAttribute("content") : null;
}

function readJsonMeta(name, fallback) {
  try {
    const value = JSON.parse(readMeta(name) || "null");
    return value === null ? fallback : value;
  } catch {
    return fallback;
  }
}

function readParentOrigins() {
  const value = readJsonMeta("linkcoach-parent-origins", []);
  return Array.isArray(value) ? value.filter((o) => typeof o === "string") : [];
}

/** {dimensions: [[name, description], ...], aliases, highThreshold, scoreMin, scoreMax}. */
function readTaxonomy() {
  const value = readJsonMeta("linkcoach-taxonomy", {});
  const dimensions = Array.isArray(value.dimensions)
    ? value.dimensions.filter((d) => Array.isArray(d) && d.length === 2 && d.every((s) => typeof s === "string"))
    : [];
  if (!dimensions.length) console.error("linkcoach: the page carries no dimensions");
  return {
    dimensions,
    aliases: value.aliases && typeof value.aliases === "object" ? value.aliases : {},
    highThreshold: Number(value.high_threshold),
    scoreMin: Number(value.score_min),
    scoreMax: Number(value.score_max),
  };
}

export const config = {
  parentOrigins: readParentOrigins(),
  maxQuestionChars: Number.parseInt(readMeta("linkcoach-max-question-chars") || "2000", 10) || 2000,
};

export const taxonomy = readTaxonomy();

export function originAllowed(origin) {
  return (
    origin === OWN_ORIGIN || config.parentOrigins.includes("*") || config.parentOrigins.includes(origin)
  );
}
