// The widget's session: who is signed in, their report, the conversation and the turn
// being answered. One object, shared by the modules that read and change it.

import { ui } from "./dom.js";

export const state = {
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

export function setConversation(id) {
  state.conversationId = id;
  ui.log.dataset.conversationId = id;
}

export function clearConversation() {
  state.conversationId = null;
  delete ui.log.dataset.conversationId;
}
