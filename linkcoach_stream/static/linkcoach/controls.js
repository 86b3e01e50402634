// The form's controls follow the session: enabled once signed in, busy while a turn runs.

import { ui } from "./dom.js";
import { state } from "./state.js";

export function selectedTransport() {
  const checked = ui.form.querySelector('input[name="transport"]:checked');
  return checked ? checked.value : "sse";
}

export function selectTransport(value) {
  const input = ui.form.querySelector(`input[name="transport"][value="${value}"]`);
  if (input) input.checked = true;
}

export function updateControls() {
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
