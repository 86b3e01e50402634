// The life of one chat turn as a state machine: pure data and one function, no DOM.
//
//   phase \ event   connected    lost           cancel       finish
//   connecting      streaming    reconnecting   cancelling   finished
//   streaming       streaming    reconnecting   cancelling   finished
//   reconnecting    streaming    reconnecting   cancelling   finished
//   cancelling      cancelling   cancelling     ·            finished
//   finished        ·            ·              ·            ·
//
// The outcome of a finished turn (complete, interrupted, error) is its status, not a
// phase. Reconnects keep a cancelling turn cancelling: a stop the server has not had yet
// is sent once the stream is back. An event a phase has no arrow for (·) leaves it where
// it is, so a late or repeated event can never revive a finished turn or take back a stop.

export const INITIAL_PHASE = "connecting";
export const FINISHED = "finished";

const TRANSITIONS = Object.freeze({
  connecting: { connected: "streaming", lost: "reconnecting", cancel: "cancelling", finish: FINISHED },
  streaming: { connected: "streaming", lost: "reconnecting", cancel: "cancelling", finish: FINISHED },
  reconnecting: { connected: "streaming", lost: "reconnecting", cancel: "cancelling", finish: FINISHED },
  cancelling: { connected: "cancelling", lost: "cancelling", finish: FINISHED },
  finished: {},
});

export const PHASES = Object.freeze(Object.keys(TRANSITIONS));

/** The phase after `event` ("connected", "lost", "cancel" or "finish"). */
export function nextPhase(phase, event) {
  const arrows = TRANSITIONS[phase];
  if (!arrows) throw new Error(`unknown chat phase: ${phase}`);
  return arrows[event] || phase;
}
