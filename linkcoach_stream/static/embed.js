// Link-Coach embed script, served at /embed.js: the product's `LinkCoach` API (its
// widget/public/embed.js) in front of this server's streaming widget. An integrator swaps
// the script URL and keeps every call:
//
//   <script src="https://coach.example.com/embed.js"></script>
//   <script>LinkCoach.init({ token, userId, leadershipType, assessmentData });</script>
//
// or, with no code, <script src=".../embed.js" data-auto-init="true" data-token="…"
// data-user-id="…" data-leadership-type="…"></script>.
//
// Decisions worth keeping:
// - `widgetUrl` defaults to `/widget/` on the server that served this script. Messages are
//   accepted only from that iframe's window and only when `event.origin` equals the
//   widget URL's *origin* (the product compared the whole URL, which fails for any URL
//   with a path); messages to the widget are posted to that origin, never "*".
// - Messages carry their fields under `data`, as the product's do (`INIT_WIDGET {data}`).
// - Token refresh: `setToken(token)` (or `updateUser({token})`) pushes a new token at any
//   time; when a call of the widget gets 401 it posts `WIDGET_TOKEN_EXPIRED` and this
//   script asks `options.onTokenExpired()` for a new one (a token or a promise of one).
// - No inline styles are needed on the parent beyond the iframe's own style properties.

(function (window, document) {
  "use strict";

  if (window.LinkCoach) {
    console.warn("Link-Coach widget is already loaded.");
    return;
  }

  const script = document.currentScript || document.querySelector('script[src*="embed.js"]');
  const scriptOrigin = originOf(script && script.src ? script.src : window.location.href);

  const DEFAULT_CONFIG = {
    widgetUrl: `${scriptOrigin}/widget/`,
    container: null, // a selector; none: fixed position on <body>
    width: "400px",
    height: "600px",
    position: "bottom-right", // bottom-right, bottom-left, custom
    zIndex: 9999,
    theme: "light",
  };
  const MOBILE_MAX_WIDTH = 768;

  function originOf(url) {
    try {
      return new URL(url, window.location.href).origin;
    } catch {
      return null;
    }
  }

  function payloadOf(message) {
    if (message.data && typeof message.data === "object") return message.data;
    return message.payload && typeof message.payload === "object" ? message.payload : {};
  }

  const LinkCoach = {
    config: {},
    iframe: null,
    isInitialized: false,
    widgetOrigin: null,
    listening: false,

    /**
     * Create the widget iframe.
     * @param {Object} options - token, userId, leadershipType (required); assessmentData,
     *   container, widgetUrl, width, height, position, zIndex, theme, onTokenExpired,
     *   onError, onReady (optional)
     */
    init(options) {
      if (this.isInitialized) {
        console.warn("Link-Coach widget is already initialized.");
        return;
      }
      options = options || {};
      for (const name of ["token", "userId", "leadershipType"]) {
        if (!options[name]) {
          console.error(`Link-Coach: ${name} is required`);
          return;
        }
      }
      const config = Object.assign({}, DEFAULT_CONFIG, options);
      const widgetUrl = new URL(config.widgetUrl, window.location.href);
      config.widgetUrl = widgetUrl.href;
      this.widgetOrigin = widgetUrl.origin;
      this.config = config;
      if (!this.createIframe()) return;
      this.setupMessageListener();
      this.isInitialized = true;
    },

    createIframe() {
      const config = this.config;
      let container = document.body;
      if (config.container) {
        container = document.querySelector(config.container);
        if (!container) {
          console.error(`Link-Coach: Container "${config.container}" not found`);
          return false;
        }
      }
      const iframe = document.createElement("iframe");
      iframe.id = "link-coach-widget-iframe";
      iframe.title = "Link-Coach 리더십 코치";
      iframe.src = config.widgetUrl;
      iframe.allow = "clipboard-read; clipboard-write";
      iframe.dataset.theme = String(config.theme || "light");
      const style = iframe.style;
      style.border = "none";
      style.width = config.width;
      style.height = config.height;
      style.zIndex = String(config.zIndex);
      const fixed = !config.container && config.position !== "custom";
      style.position = fixed ? "fixed" : "relative";
      if (fixed) {
        style.bottom = "20px";
        if (config.position === "bottom-left") style.left = "20px";
        else style.right = "20px";
        if (window.innerWidth < MOBILE_MAX_WIDTH) {
          Object.assign(style, { width: "100%", height: "100%", top: "0", right: "0", bottom: "0", left: "0" });
        }
      }
      container.appendChild(iframe);
      this.iframe = iframe;
      return true;
    },

    setupMessageListener() {
      if (this.listening) return;
      this.listening = true;
      window.addEventListener("message", (event) => this.onMessage(event));
    },

    onMessage(event) {
      if (!this.iframe || event.source !== this.iframe.contentWindow) return;
      if (event.origin !== this.widgetOrigin) return;
      const message = event.data;
      if (!message || typeof message !== "object" || typeof message.type !== "string") return;
      const data = payloadOf(message);
      switch (message.type) {
        case "WIDGET_READY":
          this.sendInitData();
          if (typeof this.config.onReady === "function") this.config.onReady();
          break;
        case "WIDGET_RESIZE": {
          const height = Number(data.height);
          if (Number.isFinite(height) && height > 0) this.iframe.style.height = `${Math.round(height)}px`;
          break;
        }
        case "WIDGET_CLOSE":
          this.close();
          break;
        case "WIDGET_ERROR":
          console.error("Link-Coach widget error:", data);
          if (typeof this.config.onError === "function") this.config.onError(data);
          break;
        case "WIDGET_TOKEN_EXPIRED":
          this.refreshToken(data);
          break;
        default:
          break;
      }
    },

    post(type, data) {
      if (!this.iframe || !this.iframe.contentWindow) {
        console.error("Link-Coach: iframe not found");
        return;
      }
      this.iframe.contentWindow.postMessage({ type, data }, this.widgetOrigin);
    },

    sendInitData() {
      const config = this.config;
      this.post("INIT_WIDGET", {
        token: config.token,
        userId: config.userId,
        leadershipType: config.leadershipType,
        assessmentData: config.assessmentData || null,
      });
    },

    async refreshToken(data) {
      const ask = this.config.onTokenExpired;
      if (typeof ask !== "function") {
        console.error("Link-Coach: the token expired; pass onTokenExpired or call LinkCoach.setToken()");
        return;
      }
      let token;
      try {
        token = await ask(data);
      } catch (err) {
        console.error("Link-Coach: onTokenExpired failed", err);
        return;
      }
      if (typeof token === "string" && token) this.setToken(token);
    },

    /** Hand the widget a new token for the same user (refresh). */
    setToken(token) {
      this.config.token = token;
      this.sendInitData();
    },

    show() {
      if (this.iframe) this.iframe.style.display = "block";
    },

    hide() {
      if (this.iframe) this.iframe.style.display = "none";
    },

    toggle() {
      if (this.iframe) this.iframe.style.display = this.iframe.style.display === "none" ? "block" : "none";
    },

    close() {
      if (this.iframe) {
        this.iframe.remove();
        this.iframe = null;
        this.isInitialized = false;
      }
    },

    updateUser(userData) {
      const data = userData && typeof userData === "object" ? userData : {};
      for (const name of ["token", "userId", "leadershipType", "assessmentData"]) {
        if (data[name] !== undefined) this.config[name] = data[name];
      }
      this.post("UPDATE_USER", data);
    },
  };

  window.LinkCoach = LinkCoach;

  function autoInit() {
    if (!script || script.getAttribute("data-auto-init") !== "true") return;
    const config = {
      token: script.getAttribute("data-token"),
      userId: script.getAttribute("data-user-id"),
      leadershipType: script.getAttribute("data-leadership-type"),
      container: script.getAttribute("data-container"),
      position: script.getAttribute("data-position") || "bottom-right",
    };
    const widgetUrl = script.getAttribute("data-widget-url");
    if (widgetUrl) config.widgetUrl = widgetUrl;
    if (config.token && config.userId && config.leadershipType) LinkCoach.init(config);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", autoInit);
  else autoInit();
})(window, document);
