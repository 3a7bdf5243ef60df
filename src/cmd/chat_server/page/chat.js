// The chat page: one WebSocket to /ws on the server that served it.
//
// Every WebSocket text message is one chat message, "[TIMESTAMP] NAME:\n\tTEXT",
// in both directions, exactly what a framed TCP client sends and receives.
// Text from the room is only ever put on the page with textContent, never
// parsed as HTML: a message that says <script> is shown, not run.
// When the connection drops, the page reconnects with a growing, jittered
// delay (up to 30 s) and says so.
"use strict";

(function () {
  const LEAVE_TEXT = "<LEAVES THE CHAT>";
  const MAX_NAME_CHARS = 32;
  const MAX_LOG_ENTRIES = 1000;
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const maxBytes = Number(document.body.dataset.maxBytes) || 65535;
  const encoder = new TextEncoder();

  const $ = (id) => document.getElementById(id);
  const joinSection = $("join"), roomSection = $("room");
  const nameInput = $("name"), joinError = $("join-error");
  const textInput = $("text"), sendButton = $("send-button"), sayError = $("say-error");
  const log = $("log"), status = $("status"), me = $("me");

  let name = null;
  let socket = null;
  let attempt = 0;
  let retryTimer = null;

  // ----- Names and messages ---------------------------------------------------

  // The server's rules for a name: 1 to 32 characters, no control characters,
  // no ':' (a message reads "NAME:" and a colon would make it ambiguous).
  function nameProblem(candidate) {
    const chars = Array.from(candidate);
    if (chars.length === 0) return "Please type a name.";
    if (chars.length > MAX_NAME_CHARS) return "A name can have at most " + MAX_NAME_CHARS + " characters.";
    if (candidate.includes(":")) return "A name cannot contain ':'.";
    if (/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/.test(candidate)) {
      return "A name cannot contain control characters.";
    }
    return null;
  }

  const pad = (n, width) => String(n).padStart(width, "0");

  // Local time as Python's datetime.isoformat() writes it (what the room uses).
  function isoformat(date) {
    const base = date.getFullYear() + "-" + pad(date.getMonth() + 1, 2) + "-" + pad(date.getDate(), 2) +
      "T" + pad(date.getHours(), 2) + ":" + pad(date.getMinutes(), 2) + ":" + pad(date.getSeconds(), 2);
    const ms = date.getMilliseconds();
    return ms === 0 ? base : base + "." + pad(ms, 3) + "000";
  }

  function format(sender, text) {
    return "[" + isoformat(new Date()) + "] " + sender + ":\n\t" + text;
  }

  // "[TIMESTAMP] NAME:\n\tTEXT" taken apart; null when it is not in that form.
  function parse(message) {
    if (!message.startsWith("[")) return null;
    const close = message.indexOf("] ");
    if (close < 0) return null;
    const rest = message.slice(close + 2);
    const split = rest.indexOf(":\n\t");
    if (split < 0) return null;
    return { time: message.slice(1, close), sender: rest.slice(0, split), text: rest.slice(split + 3) };
  }

  // What the server says when someone comes or goes.
  const PRESENCE = /^(.+) (joined the chat|left the chat( \(.*\))?|was disconnected: .*)$/;

  // ----- The log --------------------------------------------------------------

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  function append(item) {
    const follow = atBottom();
    log.appendChild(item);
    while (log.childElementCount > MAX_LOG_ENTRIES) log.removeChild(log.firstElementChild);
    if (follow) log.scrollTop = log.scrollHeight;
  }

  function span(className, text) {
    const element = document.createElement("span");
    element.className = className;
    element.textContent = text;
    return element;
  }

  function shortTime(stamp) {
    const match = /T(\d\d:\d\d:\d\d)/.exec(stamp);
    return match ? match[1] : stamp;
  }

  // A line of the page's own (connected, reconnecting...).
  function localNotice(text) {
    const item = document.createElement("li");
    item.className = "local";
    item.textContent = text;
    append(item);
  }

  // One message from the room, or one of ours.
  function show(message, mine) {
    const parsed = parse(message);
    const item = document.createElement("li");
    if (parsed && !mine && (PRESENCE.test(parsed.text) || parsed.text === LEAVE_TEXT)) {
      item.className = "notice";
      const what = parsed.text === LEAVE_TEXT ? parsed.sender + " left the chat" : parsed.text;
      item.textContent = shortTime(parsed.time) + " · " + what;
      item.title = parsed.time;
      append(item);
      return;
    }
    if (mine) item.className = "mine";
    const meta = document.createElement("div");
    meta.className = "meta";
    if (parsed) {
      meta.appendChild(span("sender", parsed.sender));
      const time = span("time", shortTime(parsed.time));
      time.title = parsed.time;
      meta.appendChild(time);
    } else {
      meta.appendChild(span("sender", "(unsigned)"));
    }
    item.appendChild(meta);
    item.appendChild(span("text", parsed ? parsed.text : message));
    append(item);
  }

  // ----- The connection -------------------------------------------------------

  function setStatus(text, kind) {
    status.textContent = text;
    status.className = "status " + kind;
  }

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + location.host + "/ws";
  }

  function connect() {
    retryTimer = null;
    setStatus("connecting…", "connecting");
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (error) {
      scheduleReconnect("cannot open the connection");
      return;
    }
    socket = ws;
    ws.onopen = () => {
      attempt = 0;
      setStatus("connected", "online");
      sendButton.disabled = false;
      localNotice("connected as " + name);
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") show(event.data, false);
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      sendButton.disabled = true;
      const why = event.reason ? ": " + event.reason : "";
      scheduleReconnect("disconnected" + why);
    };
  }

  function scheduleReconnect(why) {
    if (retryTimer !== null) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, attempt));
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    attempt += 1;
    const seconds = Math.max(1, Math.round(delay / 1000));
    setStatus("offline — retrying in " + seconds + " s", "offline");
    localNotice(why + "; reconnecting in " + seconds + " s");
    retryTimer = setTimeout(connect, delay);
  }

  // ----- Forms ----------------------------------------------------------------

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const candidate = nameInput.value.trim();
    const problem = nameProblem(candidate);
    joinError.textContent = problem || "";
    if (problem) return;
    name = candidate;
    try { localStorage.setItem("sockloop-name", name); } catch (_) { /* private mode */ }
    me.textContent = "you are " + name;
    me.hidden = false;
    joinSection.hidden = true;
    roomSection.hidden = false;
    sendButton.disabled = true;
    textInput.focus();
    connect();
  });

  $("say-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = textInput.value;
    if (text.trim() === "") return;
    if (text.trim() === LEAVE_TEXT) {
      sayError.textContent = "To leave the chat, close this page.";
      return;
    }
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      sayError.textContent = "Not connected yet: your message is kept, send it again in a moment.";
      return;
    }
    const message = format(name, text);
    const size = encoder.encode(message).length;
    if (size > maxBytes) {
      sayError.textContent = "Too long: " + size + " bytes with your name and the time; the room takes at most " + maxBytes + ".";
      return;
    }
    sayError.textContent = "";
    socket.send(message);
    show(message, true);
    textInput.value = "";
  });

  window.addEventListener("pagehide", () => {
    if (socket) socket.close(1000, "page closed");
  });

  try {
    const saved = localStorage.getItem("sockloop-name");
    if (saved) nameInput.value = saved;
  } catch (_) { /* private mode */ }
})();
