// Waiting between reconnects: jittered exponential backoff, cut short by coming back online.

export function sleep(ms, signal) {
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

export function backoffMs(attempt) {
  const base = Math.min(8000, 250 * 2 ** Math.max(0, attempt - 1));
  return base / 2 + Math.random() * (base / 2);
}
