// The page's elements and the only ways the widget writes to them: text, never markup.

const $ = (id) => document.getElementById(id);

export const ui = {
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
export function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.className) node.className = options.className;
  if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
  for (const [name, value] of Object.entries(options.attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) if (child) node.append(child);
  return node;
}

export function notice(text, kind = "info") {
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
}

export function announce(text) {
  ui.chatStatus.textContent = text;
}

/** waiting → loading → ready, or error: the whole widget's state, on #lc-app. */
export function setAppState(value) {
  ui.app.dataset.state = value;
}

export function scrollLog() {
  const nearBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 80;
  if (nearBottom) ui.log.scrollTop = ui.log.scrollHeight;
}
