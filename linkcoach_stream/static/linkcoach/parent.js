// The postMessage contract with the page that embeds the widget.
//
// In: INIT_WIDGET and UPDATE_USER, accepted only from the parent (or opener) window and
// only from an allow-listed origin (the server renders CORS_ORIGINS into a <meta>) or this
// origin. Their fields may come under `data` (the product's embed.js, /embed.js) or
// `payload`.
// Out: WIDGET_READY, WIDGET_REPORT_LOADED, WIDGET_TOKEN_EXPIRED and WIDGET_ERROR, carrying
// their fields under both keys.

import { originAllowed } from "./config.js";
import { state } from "./state.js";

export function embeddingWindow() {
  if (window.parent !== window) return window.parent;
  return window.opener || null;
}

export function embeddingOrigin() {
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

export function notifyParent(type, payload) {
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

/** Call `handlers.init(fields)` / `handlers.updateUser(fields)` for the parent's messages. */
export function listenToParent(handlers) {
  window.addEventListener("message", (event) => {
    if (!originAllowed(event.origin)) return;
    const source = event.source;
    if (!source || source === window || (source !== window.parent && source !== window.opener)) return;
    const message = event.data;
    if (!message || typeof message !== "object") return;
    if (message.type !== "INIT_WIDGET" && message.type !== "UPDATE_USER") return;
    state.parent = { window: source, origin: event.origin };
    const fields = message.data !== undefined && message.data !== null ? message.data : message.payload;
    if (message.type === "INIT_WIDGET") handlers.init(fields);
    else handlers.updateUser(fields);
  });
}
