// The live page: an EventSource on events?format=message, newest events first:
// the last BACKLOG events from the journal, then live ones.
// The DOM is built with textContent only: event data is never parsed as HTML.
"use strict";

(() => {
  const MAX_ROWS = 1000;      // rows kept in the table (the oldest are dropped)
  const MAX_PENDING = 10000;  // events held while paused
  const BACKLOG = 100;        // past events shown when the page (or a new token) starts
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    starts: 0,      // start() calls so far: an older one's answer is ignored
    retry: 0,       // the timer of the next start() after an error
    source: null,
    lastSeq: null,
    paused: false,
    pending: [],
    overflow: 0,
    incoming: [],
    frame: 0,
    received: 0,
    thisSecond: 0,
    selected: null,
    filter: "",
    matcher: () => true,
  };

  // -- the token: from the URL fragment (#token=…), this tab's storage, or the form
  function takeToken() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const token = fragment.get("token");
    if (token) {
      sessionStorage.setItem("saltbus-token", token);
      // Out of the address bar, the history and any copied link.
      history.replaceState(null, "", location.pathname + location.search);
      return token;
    }
    return sessionStorage.getItem("saltbus-token");
  }

  async function whoami(token) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const answer = await fetch("whoami", { headers, cache: "no-store" });
    if (answer.status === 401) return null;
    if (!answer.ok) throw new Error("whoami: HTTP " + answer.status);
    return answer.json();
  }

  async function start() {
    clearTimeout(state.retry);
    const token = takeToken();
    // Another token may read other events: what the old one showed goes, and
    // the new one starts with its own backlog.
    if (token !== state.token) resetView();
    state.token = token;
    const current = (state.starts += 1);
    let grant = null;
    try {
      grant = await whoami(token);
    } catch (err) {
      if (current !== state.starts) return;
      setStatus("error", "cannot reach the bridge");
      state.retry = setTimeout(start, 3000);
      return;
    }
    if (current !== state.starts) return;
    if (grant === null) {
      askForToken(token ? "that token is not valid (any more)" : "");
      return;
    }
    $("login").hidden = true;
    $("who").textContent = grant.auth ? "token " + grant.name : "no authentication";
    connect(true);
  }

  function askForToken(message) {
    sessionStorage.removeItem("saltbus-token");
    if (state.source) state.source.close();
    state.source = null;
    setStatus("error", "token needed");
    setEmpty("Give a token to see the events.");
    $("who").textContent = "";
    $("login").hidden = false;
    $("login-error").textContent = message;
    $("token-input").focus();
  }

  // A link with another #token= opened in this tab changes only the fragment:
  // no new page load, so the page takes the new token itself.
  window.addEventListener("hashchange", () => {
    if (new URLSearchParams(location.hash.slice(1)).get("token")) start();
  });

  $("login").addEventListener("submit", (submit) => {
    submit.preventDefault();
    sessionStorage.setItem("saltbus-token", $("token-input").value.trim());
    $("token-input").value = "";
    start();
  });

  // -- the stream
  function streamUrl(resume) {
    const params = new URLSearchParams({ format: "message" });
    // resume: go on from the last event shown, or, when none was, open with
    // the backlog (the server ignores it when EventSource resumes by itself).
    if (state.token) params.set("token", state.token);
    if (state.filter) {
      params.set("tag", state.filter);
      params.set("match_type", "fnmatch");
    }
    // EventSource resumes by itself (Last-Event-ID header) when a connection
    // drops; a stream opened again after it gave up (an HTTP error) resumes
    // here. Another filter starts live: resuming would replay, from the
    // journal, every event of the new filter since the last one shown.
    if (resume && state.lastSeq !== null) params.set("last_event_id", String(state.lastSeq));
    else if (resume) params.set("backlog", String(BACKLOG));
    return "events?" + params.toString();
  }

  function connect(resume) {
    if (state.source) state.source.close();
    setStatus("connecting", "connecting");
    setEmpty("Waiting for events…");
    const source = new EventSource(streamUrl(resume));
    state.source = source;
    source.onopen = () => {
      if (source === state.source) setStatus(state.paused ? "paused" : "live", state.paused ? "paused" : "live");
    };
    source.onerror = () => {
      if (source !== state.source) return; // a stream closed since
      if (source.readyState === EventSource.CLOSED) {
        setStatus("error", "disconnected");
        state.retry = setTimeout(start, 3000); // a refused stream is not retried by EventSource
      } else {
        setStatus("connecting", "reconnecting");
      }
    };
    source.onmessage = (message) => {
      if (source !== state.source) return;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (err) {
        return;
      }
      event.seq = message.lastEventId ? Number(message.lastEventId) : null;
      if (event.seq !== null) state.lastSeq = event.seq;
      receive(event);
    };
  }

  function receive(event) {
    state.received += 1;
    state.thisSecond += 1;
    if (state.paused) {
      state.pending.push(event);
      if (state.pending.length >= MAX_PENDING + 1000) {
        // The oldest go, a thousand at a time (shift() per event is O(n)).
        state.pending.splice(0, 1000);
        state.overflow += 1000;
      }
      showPending();
      return;
    }
    state.incoming.push(event);
    if (!state.frame) state.frame = requestAnimationFrame(render);
  }

  // -- the table: events arriving between two frames are added in one go
  function render() {
    state.frame = 0;
    // Only the newest MAX_ROWS of a large batch would stay in the table.
    const batch = state.incoming.splice(0).slice(-MAX_ROWS);
    const rows = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i -= 1) rows.appendChild(row(batch[i]));
    const body = $("events");
    body.insertBefore(rows, body.firstChild);
    while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
    $("empty").hidden = body.rows.length > 0;
    $("count").textContent = String(state.received);
  }

  function row(event) {
    const tr = document.createElement("tr");
    tr.className = "event fresh";
    if (!state.matcher(event.tag)) tr.classList.add("hidden");
    tr.dataset.tag = event.tag;
    if (event.seq !== null) tr.dataset.seq = String(event.seq);
    tr.event = event;
    tr.appendChild(cell("time", timeOf(event)));
    tr.appendChild(cell("seq", event.seq === null ? "" : String(event.seq)));
    tr.appendChild(cell("tag", event.tag));
    return tr;
  }

  function cell(kind, text) {
    const td = document.createElement("td");
    td.className = kind;
    td.textContent = text;
    td.title = text;
    return td;
  }

  function timeOf(event) {
    const stamp = event.data && typeof event.data._stamp === "string" ? event.data._stamp : "";
    const match = /T(\d\d:\d\d:\d\d(\.\d{1,3})?)/.exec(stamp);
    return match ? match[1] : new Date().toISOString().slice(11, 23);
  }

  $("events").addEventListener("click", (click) => {
    const tr = click.target.closest("tr.event");
    if (!tr) return;
    if (state.selected) state.selected.classList.remove("selected");
    tr.classList.add("selected");
    state.selected = tr;
    const event = tr.event;
    $("detail-tag").textContent = event.tag;
    $("detail-meta").textContent =
      (event.seq === null ? "" : "seq " + event.seq + " · ") + timeOf(event) + " UTC";
    $("detail").textContent = JSON.stringify(event.data, null, 2);
  });

  // -- filter: a glob as Python's fnmatch reads it; no wildcard means a prefix
  function globToRegExp(glob) {
    let out = "";
    for (let i = 0; i < glob.length; i += 1) {
      const c = glob[i];
      if (c === "*") out += ".*";
      else if (c === "?") out += ".";
      else if (c === "[") {
        const end = glob.indexOf("]", i + 2);
        if (end < 0) { out += "\\["; continue; }
        let body = glob.slice(i + 1, end).replace(/\\/g, "\\\\");
        if (body[0] === "!") body = "^" + body.slice(1);
        out += "[" + body + "]";
        i = end;
      } else out += c.replace(/[.+^${}()|\\\]]/g, "\\$&");
    }
    return new RegExp("^" + out + "$", "s");
  }

  function applyFilter(text) {
    const typed = text.trim();
    const glob = typed && !/[*?[]/.test(typed) ? typed + "*" : typed;
    if (glob === state.filter) return;
    state.filter = glob;
    const regex = glob ? globToRegExp(glob) : null;
    state.matcher = regex ? (tag) => regex.test(tag) : () => true;
    for (const tr of $("events").rows) tr.classList.toggle("hidden", !state.matcher(tr.dataset.tag));
    if (state.source) connect(false);
  }

  let filterTimer = 0;
  $("filter").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => applyFilter($("filter").value), 250);
  });

  // -- pause: the stream goes on; events wait, bounded, until resume
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(state.paused));
    if (state.paused) {
      setStatus("paused", "paused");
    } else {
      state.incoming.push(...state.pending.splice(0));
      state.overflow = 0;
      if (state.incoming.length && !state.frame) state.frame = requestAnimationFrame(render);
      setStatus("live", "live");
    }
    showPending();
  });

  function showPending() {
    const waiting = state.pending.length;
    const lost = state.overflow ? " (" + state.overflow + " older not kept)" : "";
    $("pending").textContent = state.paused && waiting ? waiting + " new" + lost : "";
  }

  $("clear").addEventListener("click", () => {
    $("events").replaceChildren();
    $("empty").hidden = false;
    state.selected = null;
  });

  function resetView() {
    if (state.source) state.source.close();
    state.source = null;
    state.lastSeq = null;
    state.pending = [];
    state.overflow = 0;
    state.incoming = [];
    state.received = 0;
    state.thisSecond = 0;
    state.selected = null;
    $("events").replaceChildren();
    $("empty").hidden = false;
    $("count").textContent = "0";
    $("detail-tag").textContent = "Click an event to see its data";
    $("detail-meta").textContent = "";
    $("detail").textContent = "";
    showPending();
  }

  function setEmpty(text) {
    $("empty").textContent = text;
  }

  function setStatus(kind, text) {
    const status = $("status");
    status.className = "status " + kind;
    status.textContent = text;
  }

  setInterval(() => {
    $("rate").textContent = String(state.thisSecond);
    $("count").textContent = String(state.received);
    state.thisSecond = 0;
  }, 1000);

  start();
})();
