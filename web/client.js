/**
 * client.js: the browser client for signaling-server. A dependency-free ES module, no build
 * step; the server serves it at /client.js. Full reference with examples: web/CLIENT.md.
 * The wire protocol itself: docs/PROTOCOL.md.
 *
 *   import { SignalingClient, loopbackOnly } from '/client.js';
 *   const client = new SignalingClient({ iceServers: [{ urls: 'stun:stun.example.org' }] });
 *   await client.connect();            // ws(s)://<page host>/
 *   await client.register('alice');    // -> 'alice' (the id as the server normalised it)
 *   const call = await client.call('bob', { stream, dataChannel: true });
 *
 * new SignalingClient(options)
 *   options.rtcConfig        RTCConfiguration passed to every RTCPeerConnection.
 *   options.iceServers       shorthand for rtcConfig.iceServers (wins over rtcConfig).
 *   options.token            appended to the connect URL as ?token=... (servers started
 *                            with --auth-secret require it).
 *   options.candidateFilter  (RTCIceCandidate) => boolean; local candidates for which it
 *                            returns false are not sent. End-of-candidates (null) is always sent.
 *   options.resume           default true: register with "resume":true and, when the
 *                            connection is lost without a close frame (or the server shuts
 *                            down), reconnect and resume. false: the base protocol only.
 *   options.resumeGrace      seconds, default 15: the server's --resume-grace.
 *   options.serverPingInterval  seconds, default 3: the server's --ping-interval. Reconnect
 *                            attempts go on for resumeGrace + 2 * serverPingInterval.
 *   options.reconnectMinDelay, options.reconnectMaxDelay   ms, default 250 and 5000: the
 *                            backoff between attempts (doubling, with jitter).
 *   options.reconnectTimeout ms, default 5000: one attempt (open + the server's reply).
 *   options.WebSocket, options.RTCPeerConnection   implementations to use instead of the
 *                            globals (tests, non-browser hosts).
 *
 * Methods (all failures are SignalingError unless a WebRTC call itself threw)
 *   connect(url?)            Promise<this>; url defaults to ws:// or wss:// (matching the page)
 *                            + location.host + '/'. Rejects with name 'connectFailed'.
 *   register(sId)            Promise<string>: the registered sId. Rejects e.g. 9102 sIdInUse.
 *   call(opponentId, opts)   Promise<Call> once the session exists and the offer is sent.
 *                            opts: stream (MediaStream; its tracks are added), dataChannel
 *                            (true = label 'chat', or a label string), receiveVideo /
 *                            receiveAudio (add a recvonly transceiver when the stream has no
 *                            track of that kind), rtcConfig, iceServers (per-call overrides).
 *                            Rejects with 9200-9203 (some checked locally) or a WebRTC error.
 *   stop()                   Promise: hang up the current call (client.currentCall.stop()).
 *   notify(opponentId, type, data?)   send a notify; throws on local checks. The server sends
 *                            no acknowledgement; 9301 arrives later as an 'error' event.
 *   close()                  close the WebSocket (the server runs `leave` for a session);
 *                            stops reconnecting too.
 * Getters: sId (null until registered), clients (latest list: [{sId, state, stateName}],
 *   yourself included; frozen while you are CALLING because the server sends no list then),
 *   currentCall (the current Call or null), connected (boolean; false while reconnecting),
 *   reconnecting (boolean), socket (the WebSocket or null).
 *
 * Call (one session; from call() or an 'incomingcall' event)
 *   sessionId, opponentId (null for a callee until the offer arrives), role ('caller' |
 *   'callee'), state (1-4) and stateName (NEW PENDING ACTIVE CLOSED), pc (RTCPeerConnection
 *   or null), localStream, remoteStream (MediaStream or null), dataChannel (RTCDataChannel or
 *   null), offer (callee: the caller's offer, {type, sdp}, once it arrived), ended,
 *   endReason, done (Promise<endReason>).
 *   accept(opts)  callee: Promise; answers the offer. opts as for call(); a data channel
 *                 normally comes from the caller (see the 'datachannel' event).
 *   reject()      callee: Promise; declines.     stop()   Promise; hangs up.
 *   renegotiate({iceRestart})  Promise, resolved once the opponent's answer is applied: a
 *                 new offer (after adding tracks, or an ICE restart).
 *
 * Events (client.addEventListener(type, e => ... e.detail ...))
 *   clients                {clients}      the latest client list (a `clu`)
 *   registered             {sId}
 *   incomingcall           {call, opponentId, accept(opts), reject()}
 *   sessionstate           {sessionId, state, stateName, call}   every `ssu`
 *   peerconnection         {call, pc}     a new RTCPeerConnection, before any offer/answer
 *   icecandidate           {call, candidate, direction: 'local'|'remote', sent}
 *                          candidate is the JSON form (null = end of candidates); for local
 *                          ones sent is false when candidateFilter dropped it
 *   track                  {call, track, stream}
 *   datachannel            {call, channel}  created (caller) or received (callee)
 *   open                   {call, channel}  the data channel opened
 *   connectionstatechange  {call, pc, state}
 *   iceconnectionstatechange  {call, pc, state}
 *   callend                {call, reason}  reason: 'local' (you stopped/rejected), 'rejected',
 *                          'stopped' (by the opponent), 'left' (opponent's connection ended),
 *                          'opponentGone' (9401), 'closed', 'disconnected' (your connection
 *                          ended), 'sessionLost' (a resume was refused), 'error' (WebRTC
 *                          setup failed; a stop was sent)
 *   leave                  {sessionId, opponentId, call}
 *   reconnecting           {code, name, reason, until}  the connection was lost; the client
 *                          keeps its sId and call and tries to resume until `until` (ms epoch)
 *   reconnected            {sId, resumed, attempts, downtime}  resumed: true = nothing was
 *                          lost; false = the resume was refused and the client registered afresh
 *   sessionlost            {sessionId, opponentId, call}  a refused resume lost this call (a
 *                          callend 'sessionLost' follows)
 *   notify                 {from, type, data, hasData}
 *   error                  {error, call}  server errors not answered through a promise, and
 *                          WebRTC failures; error.code / error.name
 *   close                  {code, name, reason, gaveUp}  the connection is over for good
 *                          (gaveUp: reconnecting found no server within its time)
 *   message                {message}  every server message, before it is handled
 *
 * Incoming messages and the app's accept/reject/stop are handled strictly in order, one at
 * a time (a promise chain), so remote ICE candidates that arrive before the remote
 * description is set are buffered and applied right after it.
 */

/** Client states in `clu` lists. */
export const ClientState = Object.freeze({ WAIT: 1, CALLING: 2 });
/** Session states in `ssu`. */
export const SessionState = Object.freeze({ NEW: 1, PENDING: 2, ACTIVE: 3, CLOSED: 4 });
export const CLIENT_STATE_NAMES = Object.freeze({ 1: 'WAIT', 2: 'CALLING' });
export const SESSION_STATE_NAMES = Object.freeze({ 1: 'NEW', 2: 'PENDING', 3: 'ACTIVE', 4: 'CLOSED' });

/** Server error codes -> names. */
export const ERROR_NAMES = Object.freeze({
  9000: 'invalidJson',
  9001: 'invalidMessage',
  9002: 'unknownCommand',
  9003: 'invalidField',
  9100: 'notRegistered',
  9101: 'alreadyRegistered',
  9102: 'sIdInUse',
  9103: 'sIdNotAllowed',
  9104: 'resumeRefused',
  9200: 'sessionWithSelf',
  9201: 'opponentNotFound',
  9202: 'alreadyInSession',
  9203: 'opponentBusy',
  9204: 'sessionNotFound',
  9300: 'notifySelf',
  9301: 'notifyTargetNotFound',
  9401: 'opponentGone',
  9500: 'rateLimited',
});
/** Names -> server error codes (the inverse of ERROR_NAMES). */
export const ERROR_CODES = Object.freeze(
  Object.fromEntries(Object.entries(ERROR_NAMES).map(([code, name]) => [name, Number(code)])),
);
/** WebSocket close codes the server uses (docs/PROTOCOL.md 8.2, 11) -> names. */
export const CLOSE_NAMES = Object.freeze({
  1000: 'normalClosure',
  1001: 'serverShutdown',
  1002: 'protocolError',
  1006: 'connectionLost',
  1007: 'invalidUtf8',
  1008: 'outputOverflow',
  1009: 'messageTooBig',
  4001: 'replaced',
});

/**
 * A failure with a numeric `code` and a `name`: a server error (9000-9500, named by
 * ERROR_NAMES), a WebSocket close code (named by CLOSE_NAMES, e.g. 1006 connectionLost)
 * for requests cut off by a close, or 0 for local misuse ('notConnected', 'invalidState',
 * 'invalidArgument', 'connectFailed', 'webrtcUnavailable'). Server errors found by a
 * local check before sending (e.g. calling yourself) carry the server's code and name.
 */
export class SignalingError extends Error {
  constructor(code, name, message) {
    const resolved = name || ERROR_NAMES[code] || CLOSE_NAMES[code] || 'unknown';
    super(message || resolved);
    this.code = code;
    this.name = resolved;
  }
}

/** The address field of an ICE candidate (an RTCIceCandidate, its JSON, or the string). */
export function candidateAddress(candidate) {
  const text = typeof candidate === 'string' ? candidate : candidate && candidate.candidate;
  if (!text) return null;
  // "candidate:<foundation> <component> <transport> <priority> <address> <port> typ ..."
  const parts = text.trim().split(/\s+/);
  return parts.length > 5 ? parts[4] : null;
}

/** A candidateFilter that keeps only 127.0.0.1 and ::1 (headless tests on one machine). */
export function loopbackOnly(candidate) {
  const address = candidateAddress(candidate);
  return address === '127.0.0.1' || address === '::1';
}

const REGISTER_ERRORS = [9003, 9101, 9102, 9103, 9500];
const SESSION_ERRORS = [9003, 9100, 9200, 9201, 9202, 9203, 9500];

function normId(value) {
  return String(value).trim();
}

function checkId(value, field) {
  const ok = typeof value === 'string' || (typeof value === 'number' && Number.isFinite(value));
  const text = ok ? normId(value) : '';
  if (!text || new TextEncoder().encode(text).length > 64) {
    throw new SignalingError(9003, 'invalidField', `${field} must be a non-empty string of at most 64 bytes`);
  }
  return text;
}

function descriptionJson(desc) {
  return { type: desc.type, sdp: desc.sdp };
}

function candidateJson(c) {
  if (typeof c.toJSON === 'function') return c.toJSON();
  return { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex, usernameFragment: c.usernameFragment };
}

/** A numeric option, or its default when it is missing or not a finite number >= 0. */
function option(value, fallback) {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? value : fallback;
}

function iceInTrouble(state) {
  return state === 'disconnected' || state === 'failed';
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc || !loc.host) {
    throw new SignalingError(0, 'invalidArgument', 'connect(url): no page location, pass a ws:// URL');
  }
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/`;
}

/** One session with one opponent. Created by the client; see the header for its API. */
export class Call {
  constructor(client, sessionId, opponentId, role, options) {
    this._client = client;
    this.sessionId = sessionId;
    this.opponentId = opponentId;
    this.role = role;
    this.state = SessionState.NEW;
    this.pc = null;
    this.localStream = options.stream || null;
    this.remoteStream = null;
    this.dataChannel = null;
    this.ended = false;
    this.endReason = null;
    this._options = options;
    this.offer = undefined; // callee: the offer waiting for accept()
    this._signalled = false; // our offer/answer is sent: local candidates may follow
    this._localCandidates = []; // gathered before that
    this._remoteCandidates = []; // arrived before the remote description was set
    this._answerWaiters = []; // renegotiate() promises waiting for the opponent's answer
    this._iceTrouble = false; // ICE went disconnected/failed while reconnecting
    this.done = new Promise((resolve) => {
      this._resolveDone = resolve;
    });
  }

  get stateName() {
    return SESSION_STATE_NAMES[this.state];
  }

  /** Callee: answer the offer. opts: stream, dataChannel, receiveVideo, receiveAudio, rtcConfig, iceServers. */
  accept(options = {}) {
    return this._client._enqueue(() => this._client._accept(this, options));
  }

  /** Callee: decline the call. */
  reject() {
    return this._client._enqueue(() => this._client._hangUp(this, 'reject'));
  }

  /** Hang up. */
  stop() {
    return this._client._enqueue(() => this._client._hangUp(this, 'stop'));
  }

  /**
   * Send a new offer (tracks added since, or {iceRestart: true}); resolves once the
   * opponent's answer is applied, rejects if the call ends first.
   */
  renegotiate(options = {}) {
    return new Promise((resolve, reject) => {
      this._client
        ._enqueue(() => this._client._renegotiate(this, options, { resolve, reject }))
        .catch(reject);
    });
  }
}

export class SignalingClient extends EventTarget {
  constructor(options = {}) {
    super();
    this.options = { ...options };
    this._ws = null;
    this._url = null;
    this._live = false; // from connect() until the 'close' event
    this._sId = null;
    this._clients = [];
    this._call = null;
    this._ended = new Map(); // sessionId -> Call ended locally, until its ssu 4
    this._orphans = new Set(); // sessions opened for a call() that a lost connection cut off
    this._pending = []; // requests waiting for a reply: {kind, codes, resolve, reject, data}
    this._queue = Promise.resolve();
    // Resume (docs/PROTOCOL.md section 11): the last token, and the messages received since
    // the reply that carried it.
    this._token = null;
    this._received = 0;
    this._counting = false; // this socket has had its token reply: what follows is counted
    this._closing = false; // the app called close(): never reconnect
    this._outage = null; // while reconnecting: {since, deadline, attempts, timer, attemptTimer, code, reason}
    this._outbox = []; // what was sent while reconnecting, for after the resume
  }

  get sId() {
    return this._sId;
  }
  get clients() {
    return this._clients;
  }
  get currentCall() {
    return this._call;
  }
  get socket() {
    return this._ws;
  }
  get connected() {
    return !this._outage && !!this._ws && this._ws.readyState === 1;
  }
  get reconnecting() {
    return !!this._outage;
  }

  /** Open the WebSocket. Resolves with the client. */
  connect(url) {
    if (this._ws || this._outage) return Promise.reject(new SignalingError(0, 'invalidState', 'already connected'));
    let target;
    try {
      target = url || defaultUrl();
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.options.token) {
      target += `${target.includes('?') ? '&' : '?'}token=${encodeURIComponent(this.options.token)}`;
    }
    this._url = target;
    this._closing = false;
    this._live = true;
    return this._open(target).then(() => this);
  }

  /** Close the connection. The server tells a session opponent with `leave`. */
  close(code = 1000, reason = '') {
    this._closing = true;
    const ws = this._ws;
    if (this._outage) {
      // Between attempts or within one: over now, without waiting for the attempt.
      this._ws = null;
      if (ws) ws.close(code, reason);
      this._enqueue(() => this._final({ code, reason }));
      return;
    }
    if (ws) ws.close(code, reason);
  }

  /** Register. Resolves with the sId as the server normalised it. */
  register(sId) {
    try {
      checkId(sId, 'sId');
      if (this._sId !== null) throw new SignalingError(9101);
      if (this._pending.some((p) => p.kind === 'sId')) {
        throw new SignalingError(0, 'invalidState', 'a registration is already under way');
      }
    } catch (err) {
      return Promise.reject(err);
    }
    const message = { cmd: 'sId', sId };
    if (this.options.resume !== false) message.resume = true;
    return this._request('sId', REGISTER_ERRORS, message);
  }

  /** Open a session with opponentId, set up an RTCPeerConnection and send the offer. */
  call(opponentId, options = {}) {
    let id;
    try {
      id = checkId(opponentId, 'opponentId');
      if (this._sId === null) throw new SignalingError(9100);
      if (id === this._sId) throw new SignalingError(9200);
      if (this._call || this._pending.some((p) => p.kind === 'session')) throw new SignalingError(9202);
    } catch (err) {
      return Promise.reject(err);
    }
    return this._request('session', SESSION_ERRORS, { cmd: 'session', opponentId: id }, { opponentId: id, options });
  }

  /** Hang up the current call, if any. */
  stop() {
    return this._call ? this._call.stop() : Promise.resolve();
  }

  /** Send a notify. No acknowledgement; a missing target comes back as an 'error' event (9301). */
  notify(opponentId, type, data) {
    const id = checkId(opponentId, 'opponentId');
    const typeOk = (typeof type === 'string' || (typeof type === 'number' && Number.isFinite(type))) && normId(type) !== '';
    if (!typeOk) throw new SignalingError(9003, 'invalidField', 'type must be a non-empty string');
    if (this._sId === null) throw new SignalingError(9100);
    if (id === this._sId) throw new SignalingError(9300);
    const message = { cmd: 'notify', opponentId: id, type };
    if (data !== undefined) message.data = data;
    this._send(message);
  }

  // ---- internals -------------------------------------------------------------------------

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _emitError(error, call = null) {
    this._emit('error', { error, call });
  }

  /** Run fn after everything queued before it; the queue never stalls on a failure. */
  _enqueue(fn) {
    const run = this._queue.then(fn);
    this._queue = run.catch(() => {});
    return run;
  }

  _send(message) {
    if (this._outage) {
      this._outbox.push(message);
      return;
    }
    if (!this.connected) throw new SignalingError(0, 'notConnected', 'not connected');
    this._ws.send(JSON.stringify(message));
  }

  _request(kind, codes, message, data) {
    return new Promise((resolve, reject) => {
      // A request cannot wait in the outbox: its reply would be lost with a refused resume.
      if (this._outage) {
        reject(new SignalingError(0, 'notConnected', 'reconnecting'));
        return;
      }
      const pending = { kind, codes, resolve, reject, data };
      this._pending.push(pending);
      try {
        this._send(message);
      } catch (err) {
        this._pending.splice(this._pending.indexOf(pending), 1);
        reject(err);
      }
    });
  }

  _take(kind) {
    const i = this._pending.findIndex((p) => p.kind === kind);
    return i < 0 ? null : this._pending.splice(i, 1)[0];
  }

  /** A new WebSocket as this._ws; resolves once it is open. */
  _open(target) {
    const WS = this.options.WebSocket || globalThis.WebSocket;
    return new Promise((resolve, reject) => {
      const ws = new WS(target); // no subprotocol: the server never selects one
      this._ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        resolve(ws);
      };
      // A socket given up on (a timed-out attempt, close() while reconnecting) is no longer
      // this._ws: whatever it still delivers is not ours to count or handle.
      ws.onmessage = (event) => {
        if (this._ws === ws) this._onMessage(event.data);
      };
      let closed = false;
      const onClose = (event) => {
        if (closed) return;
        closed = true;
        if (!opened) reject(new SignalingError(0, 'connectFailed', `could not connect to ${target} (close ${event.code})`));
        if (this._ws !== ws) return;
        this._ws = null;
        this._enqueue(() => this._onClose(event));
      };
      ws.onclose = onClose;
      // A failed opening handshake is an error and then a close, but some implementations
      // (Node 20's WebSocket) stop at the error and stay CONNECTING.
      ws.onerror = () => {
        if (!opened) onClose({ code: 1006, reason: '' });
      };
    });
  }

  _onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      if (this._counting) this._received += 1;
      this._emitError(new SignalingError(0, 'invalidArgument', 'the server sent something that is not JSON'));
      return;
    }
    // The count is of every message after the reply that carried the token, whatever it
    // holds, counted on arrival: everything counted is handled, in order, on the queue.
    // Before that reply on a new connection (an error to a resume, say) nothing counts.
    const isObject = !!message && typeof message === 'object';
    if (isObject && (message.cmd === 'sId' || message.cmd === 'resume') && typeof message.resumeToken === 'string') {
      this._token = message.resumeToken;
      this._received = 0;
      this._counting = true;
    } else if (this._counting) {
      this._received += 1;
    }
    if (!isObject) return;
    this._enqueue(() => this._handle(message)).catch((err) => this._emitError(err, this._call));
  }

  _onClose(event) {
    if (this._outage && !this._closing) return this._attemptFailed(event);
    if (!this._closing && this._canResume(event.code)) return this._lose(event);
    return this._final(event);
  }

  /**
   * Whether a close leaves us resumable. 1006 is a loss without a close frame: the server
   * keeps us away for its grace. 1001 is a server shutting down: the one that comes up
   * refuses the resume and we register again. Every other close frame from the server
   * means gone (a broken limit), and 4001 that another connection took us over.
   */
  _canResume(code) {
    return this.options.resume !== false && this._token !== null && this._sId !== null && (code === 1006 || code === 1001);
  }

  /** How long to keep trying: until the server's grace has surely run out. */
  _reconnectWindow() {
    // The server starts the grace when it notices the loss, which for a silent network is
    // up to two of its ping intervals after we did.
    return 1000 * (option(this.options.resumeGrace, 15) + 2 * option(this.options.serverPingInterval, 3));
  }

  _lose(event) {
    this._counting = false;
    const now = Date.now();
    const o = {
      since: now,
      deadline: now + this._reconnectWindow(),
      attempts: 0,
      timer: null,
      attemptTimer: null,
      code: event.code,
      reason: event.reason,
    };
    this._outage = o;
    // Their replies, if any, are lost with the connection (or come with the replay, where
    // an orphaned `session` is stopped).
    const error = new SignalingError(event.code, CLOSE_NAMES[event.code], `connection lost (${event.code})`);
    for (const p of this._pending.splice(0)) p.reject(error);
    const call = this._call;
    if (call && call.pc && iceInTrouble(call.pc.iceConnectionState)) call._iceTrouble = true;
    this._emit('reconnecting', { code: event.code, name: CLOSE_NAMES[event.code] || 'unknown', reason: event.reason, until: o.deadline });
    this._scheduleAttempt(o);
  }

  _scheduleAttempt(o) {
    const left = o.deadline - Date.now();
    if (left <= 0) {
      this._final({ code: o.code, reason: o.reason }, true);
      return;
    }
    const min = option(this.options.reconnectMinDelay, 250);
    const max = option(this.options.reconnectMaxDelay, 5000);
    const base = Math.min(max, min * 2 ** o.attempts);
    // Jitter, so that the clients of a server that went down do not all come back at once.
    const delay = Math.min(left, base / 2 + (Math.random() * base) / 2);
    o.attempts += 1;
    o.timer = setTimeout(() => {
      o.timer = null;
      if (this._outage === o) this._attempt(o);
    }, delay);
  }

  _attempt(o) {
    const opening = this._open(this._url);
    const ws = this._ws;
    o.attemptTimer = setTimeout(() => {
      o.attemptTimer = null;
      // The close event that follows schedules the next attempt. On an open socket this
      // sends a close frame: harmless while the server has not taken the resume, which is
      // what a missing reply almost always means.
      if (this._ws === ws) ws.close();
    }, option(this.options.reconnectTimeout, 5000));
    opening.then(
      () => {
        if (this._outage !== o || this._ws !== ws) return;
        if (this._token !== null) this._sendResume(o, ws);
        else this._registerAgain(o, ws);
      },
      () => {}, // the close event reports it
    );
  }

  _attemptFailed(event) {
    const o = this._outage;
    clearTimeout(o.attemptTimer);
    o.attemptTimer = null;
    // Only the attempt's own handshake can be pending while reconnecting.
    this._pending.length = 0;
    o.code = event.code;
    o.reason = event.reason;
    this._scheduleAttempt(o);
  }

  _sendResume(o, ws) {
    this._pending.push({
      kind: 'resume',
      codes: [9003, 9104, 9500],
      resolve: () => this._resumed(o),
      reject: (err) => {
        if (this._outage !== o) return;
        if (err.code !== 9104) {
          ws.close(); // next attempt
          return;
        }
        // The session is gone on the server (the grace ran out, or the server restarted).
        // The old sId may stay held for up to a grace if the server still has it away.
        this._token = null;
        o.deadline = Math.max(o.deadline, Date.now() + this._reconnectWindow());
        this._sessionLost();
        this._registerAgain(o, ws);
      },
    });
    ws.send(JSON.stringify({ cmd: 'resume', sId: this._sId, resumeToken: this._token, received: this._received }));
  }

  _registerAgain(o, ws) {
    this._pending.push({
      kind: 'sId',
      codes: REGISTER_ERRORS,
      resolve: () => {
        if (this._outage !== o) return;
        this._endOutage(o);
        this._flushOutbox();
        this._emit('reconnected', { sId: this._sId, resumed: false, attempts: o.attempts, downtime: Date.now() - o.since });
      },
      reject: (err) => {
        if (this._outage !== o) return;
        // 9102: an away copy of us still holds the sId; 9500: too fast. Both pass.
        if (err.code === 9102 || err.code === 9500) {
          ws.close();
          return;
        }
        this._emitError(err);
        this.close();
      },
    });
    ws.send(JSON.stringify({ cmd: 'sId', sId: this._sId, resume: true }));
  }

  _resumed(o) {
    if (this._outage !== o) return;
    this._endOutage(o);
    this._flushOutbox();
    this._emit('reconnected', { sId: this._sId, resumed: true, attempts: o.attempts, downtime: Date.now() - o.since });
    const call = this._call;
    if (call && call.pc && !call.ended && (call._iceTrouble || iceInTrouble(call.pc.iceConnectionState))) {
      call._iceTrouble = false;
      // Queued behind the replay that has arrived so far.
      this._enqueue(() => this._renegotiate(call, { iceRestart: true })).catch((err) => this._emitError(err, call));
    }
  }

  _endOutage(o) {
    clearTimeout(o.timer);
    clearTimeout(o.attemptTimer);
    if (this._outage === o) this._outage = null;
  }

  _flushOutbox() {
    for (const message of this._outbox.splice(0)) this._send(message);
  }

  /** A refused resume: the call it had is over on the server; end it here too. */
  _sessionLost() {
    this._ended.clear();
    this._orphans.clear();
    this._outbox = this._outbox.filter((message) => message.sessionId === undefined);
    const call = this._call;
    if (!call) return;
    this._emit('sessionlost', { sessionId: call.sessionId, opponentId: call.opponentId, call });
    this._endCall(call, 'sessionLost');
    this._ended.delete(call.sessionId); // no ssu 4 will come for it
  }

  /** The end: the app closed, the server ended us, or reconnecting gave up. */
  _final(event, gaveUp = false) {
    if (!this._live) return;
    this._live = false;
    if (this._outage) this._endOutage(this._outage);
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close();
    this._sId = null;
    this._token = null;
    this._received = 0;
    this._counting = false;
    this._outbox = [];
    this._orphans.clear();
    const error = new SignalingError(event.code, CLOSE_NAMES[event.code], `connection closed (${event.code})`);
    for (const p of this._pending.splice(0)) p.reject(error);
    if (this._call) this._endCall(this._call, 'disconnected');
    this._ended.clear();
    this._emit('close', { code: event.code, name: CLOSE_NAMES[event.code] || 'unknown', reason: event.reason, gaveUp });
  }

  _current(sessionId) {
    return this._call && this._call.sessionId === sessionId ? this._call : null;
  }

  async _handle(message) {
    this._emit('message', { message });
    const sessionId = message.sessionId;
    switch (message.cmd) {
      case 'sId': {
        const p = this._take('sId');
        this._sId = message.sId;
        this._emit('registered', { sId: message.sId });
        if (p) p.resolve(message.sId);
        return;
      }
      case 'clu': {
        const list = Array.isArray(message.list) ? message.list : [];
        this._clients = list.map((c) => ({ sId: c.sId, state: c.state, stateName: CLIENT_STATE_NAMES[c.state] }));
        this._emit('clients', { clients: this._clients });
        return;
      }
      case 'resume': {
        const p = this._take('resume');
        if (p) p.resolve(message);
        return;
      }
      case 'session': {
        const p = this._take('session');
        if (!p) {
          // The reply to a call() that a lost connection cut off (it rejected then): the server
          // opened the session after all. Stop it, so that neither side stays CALLING.
          if (sessionId !== undefined && !this._current(sessionId)) {
            this._orphans.add(sessionId);
            this._send({ cmd: 'stop', sessionId });
          }
          return;
        }
        // Set the call synchronously, before the `ssu` 1 that follows is handled.
        const call = new Call(this, sessionId, p.data.opponentId, 'caller', p.data.options);
        this._call = call;
        try {
          await this._startCaller(call);
        } catch (err) {
          this._fail(call, err, false);
          p.reject(err);
          return;
        }
        p.resolve(call);
        return;
      }
      case 'ssu':
        return this._onStateUpdate(sessionId, message.state);
      case 'call':
        return this._onOffer(this._current(sessionId), message);
      case 'accept': {
        const call = this._current(sessionId);
        if (!call || !call.pc) return;
        if (call.opponentId === null) call.opponentId = message.opponentId;
        try {
          await call.pc.setRemoteDescription(message.answer);
          await this._flushRemoteCandidates(call);
          for (const waiter of call._answerWaiters.splice(0)) waiter.resolve();
        } catch (err) {
          this._fail(call, err);
        }
        return;
      }
      case 'icecandidate': {
        const call = this._current(sessionId);
        if (!call) return;
        this._emit('icecandidate', { call, candidate: message.icecandidate, direction: 'remote', sent: false });
        if (!call.pc || !call.pc.remoteDescription) call._remoteCandidates.push(message.icecandidate);
        else await this._addRemoteCandidate(call, message.icecandidate);
        return;
      }
      case 'reject':
      case 'stop': {
        const call = this._current(sessionId);
        if (call) this._endCall(call, message.cmd === 'reject' ? 'rejected' : 'stopped');
        return;
      }
      case 'leave': {
        const call = this._current(sessionId) || this._ended.get(sessionId) || null;
        this._emit('leave', { sessionId, opponentId: message.opponentId, call });
        if (call) this._endCall(call, 'left');
        return;
      }
      case 'notify':
        this._emit('notify', {
          from: message.opponentId,
          type: message.type,
          data: message.data,
          hasData: Object.prototype.hasOwnProperty.call(message, 'data'),
        });
        return;
      case 'error':
        return this._onError(message);
      default:
        return; // unknown server messages are ignored
    }
  }

  _onStateUpdate(sessionId, state) {
    if (this._orphans.has(sessionId)) {
      if (state === SessionState.CLOSED) this._orphans.delete(sessionId);
      return;
    }
    let call = this._current(sessionId) || this._ended.get(sessionId) || null;
    if (!call && state === SessionState.NEW && !this._call) {
      // Someone opened a session with us; who it is arrives with the offer (`call`).
      call = new Call(this, sessionId, null, 'callee', {});
      this._call = call;
    }
    if (call) call.state = state;
    this._emit('sessionstate', { sessionId, state, stateName: SESSION_STATE_NAMES[state], call });
    if (state === SessionState.CLOSED) {
      this._ended.delete(sessionId);
      if (call) this._endCall(call, 'closed');
    }
  }

  async _onOffer(call, message) {
    if (!call) return;
    if (call.opponentId === null) call.opponentId = message.opponentId;
    if (!call.pc) {
      if (call.role !== 'callee') return;
      const first = call.offer === undefined;
      call.offer = message.offer; // a repeated offer before accept replaces the first
      if (first) {
        this._emit('incomingcall', {
          call,
          opponentId: call.opponentId,
          accept: (options) => call.accept(options),
          reject: () => call.reject(),
        });
      }
      return;
    }
    // Renegotiation by the opponent: answer it.
    const pc = call.pc;
    try {
      if (pc.signalingState === 'have-local-offer') {
        // Both sides offered at once (both resumed and restart ICE, say): the caller's offer
        // wins; the callee drops its own and answers.
        if (call.role === 'caller') return;
        await pc.setLocalDescription({ type: 'rollback' });
        const crossed = new SignalingError(0, 'invalidState', "the opponent's offer crossed this one");
        for (const waiter of call._answerWaiters.splice(0)) waiter.reject(crossed);
      }
      await pc.setRemoteDescription(message.offer);
      await this._flushRemoteCandidates(call);
      call._signalled = false; // candidates of the new answer go after it
      try {
        await pc.setLocalDescription(await pc.createAnswer());
        this._send({ cmd: 'accept', sessionId: call.sessionId, answer: descriptionJson(pc.localDescription) });
      } finally {
        this._signalled(call);
      }
    } catch (err) {
      this._fail(call, err);
    }
  }

  /** A new offer in an established call; `waiter` hears when its answer is applied. */
  async _renegotiate(call, { iceRestart = false } = {}, waiter = null) {
    const pc = call.pc;
    if (call.ended || !pc) throw new SignalingError(0, 'invalidState', 'no peer connection to renegotiate');
    if (waiter) call._answerWaiters.push(waiter);
    // The new offer's candidates must not reach the opponent before it: after an ICE
    // restart they belong to credentials it does not know yet.
    call._signalled = false;
    try {
      await pc.setLocalDescription(await pc.createOffer(iceRestart ? { iceRestart: true } : undefined));
      this._send({ cmd: 'call', sessionId: call.sessionId, offer: descriptionJson(pc.localDescription) });
    } catch (err) {
      const i = waiter ? call._answerWaiters.indexOf(waiter) : -1;
      if (i >= 0) call._answerWaiters.splice(i, 1);
      throw err;
    } finally {
      this._signalled(call);
    }
  }

  _onError(message) {
    const error = new SignalingError(message.code, ERROR_NAMES[message.code], message.message);
    // Only registration and session requests get a reply, so an error with one of their
    // codes answers the oldest such request (the server handles commands in order).
    const i = this._pending.findIndex((p) => p.codes.includes(message.code));
    if (i >= 0) {
      this._pending.splice(i, 1)[0].reject(error);
      return;
    }
    const call = this._call;
    this._emitError(error, call);
    if (message.code === 9401 && call) this._endCall(call, 'opponentGone');
  }

  _createPeerConnection(call) {
    const PC = this.options.RTCPeerConnection || globalThis.RTCPeerConnection;
    if (!PC) throw new SignalingError(0, 'webrtcUnavailable', 'RTCPeerConnection is not available');
    const o = this.options;
    const co = call._options;
    const config = { ...(o.rtcConfig || {}) };
    if (o.iceServers) config.iceServers = o.iceServers;
    Object.assign(config, co.rtcConfig || {});
    if (co.iceServers) config.iceServers = co.iceServers;
    const pc = new PC(config);
    call.pc = pc;
    pc.onicecandidate = (event) => this._onLocalCandidate(call, event.candidate);
    pc.ontrack = (event) => {
      let stream = event.streams && event.streams[0];
      if (!stream) {
        if (!call.remoteStream && globalThis.MediaStream) call.remoteStream = new MediaStream();
        stream = call.remoteStream;
        if (stream) stream.addTrack(event.track);
      }
      call.remoteStream = stream || null;
      this._emit('track', { call, track: event.track, stream: call.remoteStream });
    };
    pc.ondatachannel = (event) => this._attachChannel(call, event.channel);
    pc.onconnectionstatechange = () => {
      if (call.pc === pc) this._emit('connectionstatechange', { call, pc, state: pc.connectionState });
    };
    pc.oniceconnectionstatechange = () => {
      if (call.pc !== pc || call.ended) return;
      const state = pc.iceConnectionState;
      if (state === 'connected' || state === 'completed') call._iceTrouble = false;
      else if (this._outage && iceInTrouble(state)) call._iceTrouble = true;
      this._emit('iceconnectionstatechange', { call, pc, state });
    };
    this._emit('peerconnection', { call, pc });
    return pc;
  }

  _addLocalMedia(call, options) {
    const pc = call.pc;
    const stream = options.stream;
    const kinds = new Set();
    if (stream) {
      for (const track of stream.getTracks()) {
        pc.addTrack(track, stream);
        kinds.add(track.kind);
      }
    }
    if (options.receiveVideo && !kinds.has('video')) pc.addTransceiver('video', { direction: 'recvonly' });
    if (options.receiveAudio && !kinds.has('audio')) pc.addTransceiver('audio', { direction: 'recvonly' });
    if (options.dataChannel) {
      const label = options.dataChannel === true ? 'chat' : String(options.dataChannel);
      this._attachChannel(call, pc.createDataChannel(label));
    }
  }

  _attachChannel(call, channel) {
    call.dataChannel = channel;
    channel.addEventListener('open', () => this._emit('open', { call, channel }));
    this._emit('datachannel', { call, channel });
  }

  async _startCaller(call) {
    const pc = this._createPeerConnection(call);
    this._addLocalMedia(call, call._options);
    await pc.setLocalDescription(await pc.createOffer());
    this._send({ cmd: 'call', sessionId: call.sessionId, offer: descriptionJson(pc.localDescription) });
    this._signalled(call);
  }

  async _accept(call, options) {
    if (call.ended || call.role !== 'callee' || call.pc || call.offer === undefined) {
      throw new SignalingError(0, 'invalidState', 'no incoming call to accept');
    }
    call._options = options;
    call.localStream = options.stream || null;
    try {
      const pc = this._createPeerConnection(call);
      // Remote description first, so addTrack reuses the offer's transceivers.
      await pc.setRemoteDescription(call.offer);
      await this._flushRemoteCandidates(call);
      this._addLocalMedia(call, options);
      await pc.setLocalDescription(await pc.createAnswer());
      this._send({ cmd: 'accept', sessionId: call.sessionId, answer: descriptionJson(pc.localDescription) });
      this._signalled(call);
    } catch (err) {
      this._fail(call, err, false);
      throw err;
    }
  }

  _hangUp(call, cmd) {
    if (call.ended) return;
    try {
      this._send({ cmd, sessionId: call.sessionId });
    } catch {
      // not connected: the server has ended the session already
    }
    this._endCall(call, 'local');
  }

  /** A WebRTC step failed: report it (unless the caller rethrows it), stop the session. */
  _fail(call, err, report = true) {
    if (report) this._emitError(err, call);
    if (call.ended) return;
    try {
      this._send({ cmd: 'stop', sessionId: call.sessionId });
    } catch {
      // not connected
    }
    this._endCall(call, 'error');
  }

  _endCall(call, reason) {
    if (call.ended) return;
    call.ended = true;
    call.endReason = reason;
    if (this._call === call) this._call = null;
    if (call.state !== SessionState.CLOSED) this._ended.set(call.sessionId, call);
    if (call.pc) {
      try {
        call.pc.close();
      } catch {
        // already closed
      }
    }
    const ended = new SignalingError(0, 'invalidState', `the call ended (${reason})`);
    for (const waiter of call._answerWaiters.splice(0)) waiter.reject(ended);
    call._resolveDone(reason);
    this._emit('callend', { call, reason });
  }

  _onLocalCandidate(call, candidate) {
    if (call.ended) return;
    let payload = null; // null (or undefined): end of candidates, always relayed as null
    if (candidate) {
      payload = candidateJson(candidate);
      const filter = this.options.candidateFilter;
      if (filter && !filter(candidate)) {
        this._emit('icecandidate', { call, candidate: payload, direction: 'local', sent: false });
        return;
      }
    }
    if (call._signalled) this._sendCandidate(call, payload);
    else call._localCandidates.push(payload);
  }

  _sendCandidate(call, payload) {
    try {
      this._send({ cmd: 'icecandidate', sessionId: call.sessionId, icecandidate: payload });
      this._emit('icecandidate', { call, candidate: payload, direction: 'local', sent: true });
    } catch (err) {
      this._emitError(err, call);
    }
  }

  _signalled(call) {
    call._signalled = true;
    for (const payload of call._localCandidates.splice(0)) this._sendCandidate(call, payload);
  }

  async _flushRemoteCandidates(call) {
    for (const candidate of call._remoteCandidates.splice(0)) await this._addRemoteCandidate(call, candidate);
  }

  async _addRemoteCandidate(call, candidate) {
    try {
      // null is end-of-candidates; addIceCandidate() without an argument says the same.
      await (candidate === null ? call.pc.addIceCandidate() : call.pc.addIceCandidate(candidate));
    } catch (err) {
      // Older browsers refuse the end-of-candidates form; that is harmless.
      if (candidate !== null && !call.ended) this._emitError(err, call);
    }
  }
}

/** Shorthand: create a client with options and connect it. Resolves with the client. */
export function connect(url, options = {}) {
  return new SignalingClient(options).connect(url);
}
