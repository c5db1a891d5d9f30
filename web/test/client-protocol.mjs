// Protocol test for web/client.js against the real server, from Node (no browser).
//
//   cargo build && node --experimental-websocket web/test/client-protocol.mjs
//
// Starts target/debug/signaling-server on 127.0.0.1:0 (or $SIGNALING_SERVER_BIN; or uses a
// running server at $SIGNALING_URL), drives client.js with a fake RTCPeerConnection that
// returns fake SDP and emits candidates, and checks every step; for resume, a TCP proxy in
// front of the server takes a client's network away (resets, no close frame). Prints each failure and
// exits non-zero if any check failed. Node 22+ has WebSocket built in; on Node 20 the
// script re-runs itself with --experimental-websocket when the flag is missing.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

if (typeof globalThis.WebSocket !== 'function') {
  const child = spawn(process.execPath, ['--experimental-websocket', fileURLToPath(import.meta.url)], {
    stdio: 'inherit',
  });
  child.on('exit', (code, signal) => process.exit(signal ? 1 : code));
  await new Promise(() => {}); // the child reports
}

const {
  SignalingClient,
  SignalingError,
  ERROR_NAMES,
  ERROR_CODES,
  SESSION_STATE_NAMES,
  loopbackOnly,
  candidateAddress,
} = await import('../client.js');

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- a fake WebRTC stack ----------------------------------------------------------------

class FakeCandidate {
  // ufrag: the ICE credentials it belongs to; undefined for the first generation (its SDP
  // has no ufrag line), 'g1', 'g2', ... after each ICE restart.
  constructor(address, i, ufrag) {
    this.candidate = `candidate:${i} 1 udp 2122260223 ${address} ${50000 + i} typ host generation 0`;
    this.sdpMid = '0';
    this.sdpMLineIndex = 0;
    this.usernameFragment = ufrag;
  }
  toJSON() {
    const json = { candidate: this.candidate, sdpMid: this.sdpMid, sdpMLineIndex: this.sdpMLineIndex };
    if (this.usernameFragment !== undefined) json.usernameFragment = this.usernameFragment;
    return json;
  }
}

const ufragOf = (desc) => (/a=ice-ufrag:(\S+)/.exec((desc && desc.sdp) || '') || [])[1];

class FakeChannel extends EventTarget {
  constructor(label) {
    super();
    this.label = label;
    this.readyState = 'connecting';
  }
  _open() {
    this.readyState = 'open';
    this.dispatchEvent(new Event('open'));
  }
}

let pcCount = 0;
class FakePC {
  static all = [];
  constructor(config) {
    this.id = ++pcCount;
    this.config = config;
    this.localDescription = null;
    this.remoteDescription = null;
    this.connectionState = 'new';
    this.iceConnectionState = 'new';
    this.generation = 0; // of the ICE credentials; an ICE restart moves it on
    this.version = 0; // of the SDP, so that every description differs
    this.offerOptions = []; // what each createOffer() was given
    this.tracks = [];
    this.transceivers = [];
    this.channels = [];
    this.remoteCandidates = []; // what addIceCandidate received, null = end of candidates
    this.violations = []; // protocol-order mistakes the client made
    this.closed = false;
    this.onicecandidate = this.ontrack = this.ondatachannel = this.onconnectionstatechange = null;
    this.oniceconnectionstatechange = null;
    FakePC.all.push(this);
  }
  addTrack(track, stream) {
    this.tracks.push({ track, stream });
  }
  addTransceiver(kind, init) {
    this.transceivers.push({ kind, direction: init && init.direction });
  }
  createDataChannel(label) {
    const channel = new FakeChannel(label);
    this.channels.push(channel);
    return channel;
  }
  get ufrag() {
    return this.generation ? `g${this.generation}` : undefined;
  }
  _sdp(type) {
    let sdp = `v=0\r\no=fake-${type} ${this.id} ${++this.version} IN IP4 127.0.0.1\r\ns=-\r\n`;
    if (this.ufrag) sdp += `a=ice-ufrag:${this.ufrag}\r\n`;
    if (this.tracks.some((t) => t.track.kind === 'video')) sdp += 'm=video 9 UDP/TLS/RTP/SAVPF 96\r\n';
    if (this.channels.length) sdp += 'm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n';
    return sdp + 'a=note:"quotes" \\ unicode é\r\n';
  }
  async createOffer(options) {
    this.offerOptions.push(options);
    if (options && options.iceRestart) this.generation += 1;
    await sleep(2);
    return { type: 'offer', sdp: this._sdp('offer') };
  }
  async createAnswer() {
    if (!this.remoteDescription) this.violations.push('createAnswer before setRemoteDescription');
    await sleep(2);
    return { type: 'answer', sdp: this._sdp('answer') };
  }
  async setLocalDescription(desc) {
    await sleep(5);
    this.localDescription = desc;
    // One candidate before the promise resolves (before the client sent its SDP), the rest later.
    const ufrag = this.ufrag;
    this._candidate(new FakeCandidate('127.0.0.1', 1, ufrag));
    setTimeout(() => {
      this._candidate(new FakeCandidate('192.168.77.5', 2, ufrag));
      this._candidate(new FakeCandidate('::1', 3, ufrag));
      this._candidate(null);
    }, 10);
    this._maybeConnect();
  }
  async setRemoteDescription(desc) {
    // Slow on purpose: messages that arrive meanwhile must wait for it.
    await sleep(60);
    this.remoteDescription = desc;
    // An answer takes the credentials' generation of the offer it answers.
    if (desc.type === 'offer') this.generation = Number((ufragOf(desc) || 'g0').slice(1));
    if (desc.type === 'offer' && desc.sdp.includes('webrtc-datachannel')) {
      setTimeout(() => {
        const channel = new FakeChannel('chat');
        if (this.ondatachannel) this.ondatachannel({ channel });
        setTimeout(() => channel._open(), 5);
      }, 5);
    }
    if (desc.sdp.includes('m=video')) {
      setTimeout(() => this.ontrack && this.ontrack({ track: { kind: 'video' }, streams: [{ id: 'remote' }] }), 5);
    }
    this._maybeConnect();
  }
  async addIceCandidate(candidate) {
    if (!this.remoteDescription) this.violations.push('addIceCandidate before setRemoteDescription');
    if (this.closed) this.violations.push('addIceCandidate after close');
    if (candidate && candidate.usernameFragment !== ufragOf(this.remoteDescription)) {
      this.violations.push(`candidate of ufrag ${candidate.usernameFragment} on a description of ${ufragOf(this.remoteDescription)}`);
    }
    this.remoteCandidates.push(candidate === undefined ? null : candidate);
  }
  close() {
    this.closed = true;
    this.connectionState = 'closed';
    this.iceConnectionState = 'closed';
  }
  _setIce(state) {
    this.iceConnectionState = state;
    if (this.oniceconnectionstatechange) this.oniceconnectionstatechange();
  }
  _candidate(candidate) {
    if (!this.closed && this.onicecandidate) this.onicecandidate({ candidate });
  }
  _maybeConnect() {
    if (!this.localDescription || !this.remoteDescription || this.connectionState !== 'new') return;
    setTimeout(() => {
      if (this.closed) return;
      this.connectionState = 'connected';
      if (this.onconnectionstatechange) this.onconnectionstatechange();
      this._setIce('connected');
      for (const channel of this.channels) channel._open();
    }, 20);
  }
}
globalThis.RTCPeerConnection = FakePC;

// ---- harness ----------------------------------------------------------------------------

const failures = [];
let current = '';
function check(ok, what) {
  if (!ok) {
    failures.push(`${current}: ${what}`);
    console.log(`  FAIL ${what}`);
  }
  return ok;
}
function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  return check(a === e, `${what}: expected ${e}, got ${a}`);
}
async function until(cond, what, ms = 3000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(10);
  }
  return check(false, `timed out waiting for ${what}`);
}
async function rejects(promise, code, name, what) {
  try {
    await promise;
    return check(false, `${what}: resolved, expected ${code} ${name}`);
  } catch (err) {
    check(err instanceof SignalingError, `${what}: not a SignalingError: ${err}`);
    return eq([err.code, err.name], [code, name], what);
  }
}
function throws(fn, code, name, what) {
  try {
    fn();
    return check(false, `${what}: did not throw`);
  } catch (err) {
    check(err instanceof SignalingError, `${what}: not a SignalingError: ${err}`);
    return eq([err.code, err.name], [code, name], what);
  }
}

const EVENTS = [
  'clients', 'registered', 'incomingcall', 'sessionstate', 'peerconnection', 'icecandidate', 'track',
  'datachannel', 'open', 'connectionstatechange', 'callend', 'leave', 'notify', 'error', 'close',
  'reconnecting', 'reconnected', 'sessionlost', 'iceconnectionstatechange',
];
async function client(url, name, options = {}) {
  const c = new SignalingClient({ candidateFilter: loopbackOnly, iceServers: [{ urls: 'stun:192.0.2.1' }], ...options });
  c.events = [];
  for (const type of EVENTS) c.addEventListener(type, (e) => c.events.push({ ...e.detail, event: type }));
  c.of = (type) => c.events.filter((e) => e.event === type);
  c.label = name;
  await c.connect(url);
  return c;
}
const states = (c, sessionId) => c.of('sessionstate').filter((e) => e.sessionId === sessionId).map((e) => e.stateName);
const listOf = (c) => c.clients.map((x) => `${x.sId}:${x.stateName}`).join(',');

async function startServer(args = []) {
  if (process.env.SIGNALING_URL && args.length === 0) return { url: process.env.SIGNALING_URL, stop() {} };
  const bin = process.env.SIGNALING_SERVER_BIN || join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'debug', 'signaling-server');
  if (!existsSync(bin)) {
    console.error(`no server binary at ${bin}: run \`cargo build\` first (or set SIGNALING_SERVER_BIN / SIGNALING_URL)`);
    process.exit(2);
  }
  const child = spawn(bin, ['--listen', '127.0.0.1:0', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const addr = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('server did not print `listening on ADDR` within 10 s')), 10000);
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = /^listening on (\S+)/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  child.stdout.resume();
  return {
    url: `ws://${addr}/`,
    stop() {
      child.kill('SIGTERM');
    },
  };
}

/**
 * A TCP proxy between a client and the server, so that a test can take the network away:
 * cut() resets both sides of every connection (no close frame: the server sees the client
 * away, the client a connection lost with 1006), and while blocked new connections are
 * reset at once, as a network that is down would. While deaf, what the server sends is
 * dropped on the way (a network that fails one way first).
 */
async function startProxy(serverUrl) {
  const target = new URL(serverUrl);
  const pairs = new Set();
  const proxy = {
    blocked: false,
    deaf: false,
    accepted: 0,
    refused: 0,
    cut() {
      for (const pair of pairs) for (const socket of pair) socket.resetAndDestroy();
      pairs.clear();
    },
    stop() {
      proxy.cut();
      listener.close();
    },
  };
  const listener = net.createServer((downstream) => {
    if (proxy.blocked) {
      proxy.refused += 1;
      downstream.on('error', () => {});
      downstream.resetAndDestroy();
      return;
    }
    proxy.accepted += 1;
    const upstream = net.connect(Number(target.port), target.hostname);
    const pair = [downstream, upstream];
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      downstream.destroy();
      upstream.destroy();
    };
    for (const socket of pair) socket.on('error', drop).on('close', drop);
    downstream.pipe(upstream);
    upstream.on('data', (chunk) => {
      if (!proxy.deaf) downstream.write(chunk);
    });
  });
  await new Promise((resolve) => listener.listen(0, '127.0.0.1', resolve));
  proxy.url = `ws://127.0.0.1:${listener.address().port}/`;
  return proxy;
}

/** A caller through `proxy` (it can lose its network) and a callee on the server directly, in an ACTIVE call with settled candidates. */
async function callThroughProxy(serverUrl, proxy, names, options = {}) {
  const [callerName, calleeName] = names;
  const caller = await client(proxy.url, callerName, options);
  const callee = await client(serverUrl, calleeName);
  eq(await caller.register(callerName), callerName, `${callerName} registered`);
  eq(await callee.register(calleeName), calleeName, `${calleeName} registered`);
  callee.addEventListener('incomingcall', (e) => e.detail.accept({}), { once: true });
  const call = await caller.call(calleeName, { dataChannel: true });
  await until(() => call.state === 3 && callee.currentCall && callee.currentCall.state === 3, 'ACTIVE on both sides');
  await until(() => call.pc.remoteCandidates.length === 3 && callee.currentCall.pc.remoteCandidates.length === 3, 'candidates both ways');
  await until(() => call.pc.iceConnectionState === 'connected' && callee.currentCall.pc.iceConnectionState === 'connected', 'ICE connected');
  return { caller, callee, call, calleeCall: callee.currentCall };
}

const seqs = (c, type) => c.of('notify').filter((e) => e.type === type).map((e) => e.data);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

// ---- the scenario -----------------------------------------------------------------------

const server = await startServer();
const steps = [];
const step = (name, fn) => steps.push([name, fn]);
const ctx = {};

step('exports', async () => {
  eq(Object.keys(ERROR_NAMES).length, 18, 'ERROR_NAMES has every code');
  eq([ERROR_NAMES[9000], ERROR_NAMES[9102], ERROR_NAMES[9204], ERROR_NAMES[9500]],
    ['invalidJson', 'sIdInUse', 'sessionNotFound', 'rateLimited'], 'names');
  eq(ERROR_CODES.opponentBusy, 9203, 'ERROR_CODES is the inverse');
  eq(Object.values(SESSION_STATE_NAMES), ['NEW', 'PENDING', 'ACTIVE', 'CLOSED'], 'session state names');
  eq([candidateAddress('candidate:1 1 udp 1 ::1 9 typ host'), loopbackOnly({ candidate: '' }), loopbackOnly(new FakeCandidate('10.0.0.1', 1))],
    ['::1', false, false], 'candidate helpers');
  const e = new SignalingError(9102);
  check(e instanceof Error && e.name === 'sIdInUse' && e.code === 9102, 'SignalingError carries code and name');
});

step('connect and register', async () => {
  ctx.alice = await client(server.url, 'alice');
  ctx.bob = await client(server.url, 'bob');
  ctx.carol = await client(server.url, 'carol');
  eq(await ctx.alice.register('alice'), 'alice', 'alice registered');
  eq(await ctx.bob.register('  bob\t'), 'bob', 'bob gets the trimmed id back');
  eq(ctx.bob.sId, 'bob', 'sId getter');
  eq(await ctx.carol.register('carol'), 'carol', 'carol registered');
  await until(() => listOf(ctx.alice) === 'alice:WAIT,bob:WAIT,carol:WAIT', 'alice sees all three in WAIT');
  check(ctx.alice.of('clients').length >= 1, "'clients' events fired");
  eq(ctx.bob.of('registered').map((e) => e.sId), ['bob'], "'registered' event");
});

step('register errors', async () => {
  const dave = await client(server.url, 'dave');
  await rejects(dave.register('alice'), 9102, 'sIdInUse', 'server: name taken');
  await rejects(dave.register(''), 9003, 'invalidField', 'local: empty id');
  await rejects(dave.register('x'.repeat(65)), 9003, 'invalidField', 'local: id over 64 bytes');
  eq(await dave.register('dave'), 'dave', 'dave registers after a failure');
  await rejects(dave.register('dave2'), 9101, 'alreadyRegistered', 'local: second registration');
  dave.close();
  await until(() => dave.of('close').length === 1, "dave's 'close' event");
  eq(dave.of('close')[0] && [dave.of('close')[0].code, dave.of('close')[0].name], [1000, 'normalClosure'], 'close event');
  await until(() => !listOf(ctx.alice).includes('dave'), 'dave gone from the list');
});

step('raw server errors arrive as error events', async () => {
  const { carol } = ctx;
  carol.socket.send('{not json');
  carol.socket.send('{"cmd":"clu"}');
  carol.socket.send('{"cmd":"stop","sessionId":"0000000000000000"}');
  await until(() => carol.of('error').length === 3, 'three error events');
  eq(carol.of('error').map((e) => `${e.error.code} ${e.error.name}`), ['9000 invalidJson', '9002 unknownCommand', '9204 sessionNotFound'], 'error events');
  carol.events.length = 0;
});

step('notify', async () => {
  const { alice, bob } = ctx;
  alice.notify('bob', 'ring', { text: 'hi', n: [1, null] });
  alice.notify(' bob ', 7);
  alice.notify('bob', 'nul', null);
  await until(() => bob.of('notify').length === 3, 'bob gets three notifies');
  eq(bob.of('notify').map(({ from, type, data, hasData }) => ({ from, type, data, hasData })), [
    { from: 'alice', type: 'ring', data: { text: 'hi', n: [1, null] }, hasData: true },
    { from: 'alice', type: '7', hasData: false },
    { from: 'alice', type: 'nul', data: null, hasData: true },
  ], 'notify events');
  throws(() => alice.notify('alice', 'x'), 9300, 'notifySelf', 'local: notify yourself');
  throws(() => alice.notify('bob', '  '), 9003, 'invalidField', 'local: empty type');
  alice.notify('nobody', 'x');
  await until(() => alice.of('error').length === 1, "alice's error event");
  eq(alice.of('error').map((e) => e.error.name), ['notifyTargetNotFound'], '9301 as an event');
  alice.events.length = 0;
});

step('call errors', async () => {
  const { alice } = ctx;
  await rejects(alice.call('alice'), 9200, 'sessionWithSelf', 'local: call yourself');
  await rejects(alice.call('nobody'), 9201, 'opponentNotFound', 'server: no such client');
  const stranger = new SignalingClient();
  await rejects(stranger.call('bob'), 9100, 'notRegistered', 'local: not registered');
  await rejects(stranger.register('zed'), 0, 'notConnected', 'local: not connected');
  eq(alice.currentCall, null, 'no call after failures');
});

step('call, accept later (candidates buffered), ICE both ways', async () => {
  const { alice, bob, carol } = ctx;
  FakePC.all.length = 0;
  bob.addEventListener('incomingcall', (e) => {
    // Accept after the caller's candidates have arrived: they must wait for the offer.
    setTimeout(() => e.detail.accept({}).catch((err) => check(false, `accept failed: ${err}`)), 150);
  }, { once: true });
  const videoTrack = { kind: 'video', id: 'cam' };
  const call = await alice.call('bob', { dataChannel: true, stream: { getTracks: () => [videoTrack] }, receiveAudio: true });
  check(/^[0-9a-f]{16}$/.test(call.sessionId), `session id ${call.sessionId}`);
  eq([call.role, call.opponentId, alice.currentCall === call], ['caller', 'bob', true], 'caller call');
  const apc = call.pc;
  eq(apc.config.iceServers, [{ urls: 'stun:192.0.2.1' }], 'iceServers passed to RTCPeerConnection');
  eq([apc.tracks.length, apc.transceivers, apc.channels.map((c) => c.label)], [1, [{ kind: 'audio', direction: 'recvonly' }], ['chat']], 'tracks, recvonly audio, data channel');

  await until(() => bob.of('incomingcall').length === 1, 'incomingcall');
  const incoming = bob.of('incomingcall')[0];
  eq([incoming.opponentId, incoming.call.sessionId, incoming.call.role], ['alice', call.sessionId, 'callee'], 'incomingcall detail');

  await until(() => bob.currentCall && bob.currentCall.pc && alice.of('connectionstatechange').some((e) => e.state === 'connected')
    && bob.of('connectionstatechange').some((e) => e.state === 'connected'), 'both connected', 4000);
  const bpc = bob.currentCall.pc;
  eq(bpc.remoteDescription, apc.localDescription, 'offer relayed intact');
  await until(() => apc.remoteDescription, 'answer applied');
  eq(apc.remoteDescription, bpc.localDescription, 'answer relayed intact');

  const loopback = (pc) => [new FakeCandidate('127.0.0.1', 1).toJSON(), new FakeCandidate('::1', 3).toJSON(), null];
  await until(() => bpc.remoteCandidates.length === 3 && apc.remoteCandidates.length === 3, 'candidates both ways');
  eq(bpc.remoteCandidates, loopback(), 'bob got only loopback candidates, then end-of-candidates');
  eq(apc.remoteCandidates, loopback(), 'alice got only loopback candidates, then end-of-candidates');
  eq([apc.violations, bpc.violations], [[], []], 'no addIceCandidate before setRemoteDescription');
  eq(alice.of('icecandidate').filter((e) => e.direction === 'local' && !e.sent).map((e) => candidateAddress(e.candidate)), ['192.168.77.5'], 'filtered candidate reported, not sent');
  eq(bob.of('icecandidate').filter((e) => e.direction === 'remote').length, 3, 'remote candidate events');

  await until(() => states(alice, call.sessionId).length === 3 && states(bob, call.sessionId).length === 3, 'ssu NEW PENDING ACTIVE');
  eq(states(alice, call.sessionId), ['NEW', 'PENDING', 'ACTIVE'], 'caller session states');
  eq(states(bob, call.sessionId), ['NEW', 'PENDING', 'ACTIVE'], 'callee session states');
  eq([call.stateName, bob.currentCall.stateName], ['ACTIVE', 'ACTIVE'], 'Call.stateName');

  await until(() => alice.of('open').length === 1 && bob.of('open').length === 1, "data channel 'open' on both sides");
  eq([alice.of('datachannel').length, bob.of('datachannel').length], [1, 1], "'datachannel' on both sides");
  eq(bob.currentCall.dataChannel, bob.of('datachannel')[0].channel, 'callee dataChannel property');
  await until(() => bob.of('track').length === 1, "'track' event on the callee");
  eq(bob.currentCall.remoteStream, { id: 'remote' }, 'remoteStream');
  eq(bob.of('peerconnection').length, 1, "'peerconnection' event");

  await until(() => listOf(carol).includes('alice:CALLING') && listOf(carol).includes('bob:CALLING'), 'carol sees both CALLING');
  await rejects(alice.call('carol'), 9202, 'alreadyInSession', 'local: already in a call');
  await rejects(carol.call('alice'), 9203, 'opponentBusy', 'server: opponent busy');
  eq([alice.of('error').length, bob.of('error').length], [0, 0], 'no error events');
  ctx.first = call;
});

step('stop', async () => {
  const { alice, bob, first } = ctx;
  const bobCall = bob.currentCall;
  await first.stop();
  eq([first.ended, first.endReason, alice.currentCall, first.pc.closed], [true, 'local', null, true], 'caller side ended');
  await until(() => bob.of('callend').length === 1, "bob's callend");
  eq(bob.of('callend')[0].reason, 'stopped', 'callee callend reason');
  eq([bobCall.pc.closed, bob.currentCall, await bobCall.done], [true, null, 'stopped'], 'callee ended');
  await until(() => states(alice, first.sessionId).at(-1) === 'CLOSED' && states(bob, first.sessionId).at(-1) === 'CLOSED', 'ssu CLOSED on both');
  await until(() => listOf(alice) === 'alice:WAIT,bob:WAIT,carol:WAIT', 'all back in WAIT');
});

step('reject', async () => {
  const { alice, bob } = ctx;
  bob.addEventListener('incomingcall', (e) => e.detail.reject(), { once: true });
  const call = await alice.call('bob', { dataChannel: 'x' });
  eq(call.pc.channels.map((c) => c.label), ['x'], 'data channel label');
  eq(await call.done, 'rejected', 'caller sees rejected');
  await until(() => states(alice, call.sessionId).at(-1) === 'CLOSED', 'ssu CLOSED');
  const bobEnd = bob.of('callend').at(-1);
  eq([bobEnd.reason, bobEnd.call.sessionId, bobEnd.call.pc], ['local', call.sessionId, null], 'callee ended without a peer connection');
});

step('accept inside the event, then the callee disconnects: leave', async () => {
  const { alice, bob } = ctx;
  bob.addEventListener('incomingcall', (e) => e.detail.accept({ dataChannel: false }), { once: true });
  const call = await alice.call('bob', { dataChannel: true });
  await until(() => call.state === 3, 'ACTIVE');
  await until(() => bob.currentCall && bob.currentCall.pc && bob.currentCall.pc.remoteCandidates.length === 3, 'bob has candidates');
  const bobCall = bob.currentCall;
  bob.close();
  await until(() => alice.of('leave').length === 1, "alice's leave");
  eq([alice.of('leave')[0].opponentId, alice.of('leave')[0].sessionId], ['bob', call.sessionId], 'leave detail');
  eq(await call.done, 'left', 'callend reason left');
  await until(() => states(alice, call.sessionId).at(-1) === 'CLOSED', 'ssu CLOSED after leave');
  await until(() => bob.of('close').length === 1, "bob's close");
  eq([await bobCall.done, bob.sId, bob.connected], ['disconnected', null, false], 'bob side after close');
  eq([bob.of('reconnecting').length, bob.of('close')[0].gaveUp], [0, false], 'close() is final: no reconnecting');
  await until(() => listOf(alice) === 'alice:WAIT,carol:WAIT', 'bob gone from the list');
  eq([alice.of('error').length, bob.of('error').length], [0, 0], 'no error events');
  for (const pc of FakePC.all) eq(pc.violations, [], `fake pc ${pc.id} order violations`);
});

step('pending requests fail when the connection closes', async () => {
  const { carol } = ctx;
  const p = carol.call('alice');
  carol.close();
  const err = await p.then(() => null, (e) => e);
  // Either the session was created first (then the call ends 'disconnected') or the request
  // was cut off with the close code.
  if (err) eq(err.name, 'normalClosure', 'request cut off by the close');
  await until(() => carol.of('close').length === 1, "carol's close");
  eq(carol.currentCall, null, 'no call left');
});

// ---- resume (docs/PROTOCOL.md section 11) ----------------------------------------------

const others = []; // clients and proxies of the steps below, closed at the end
const cleanup = (...things) => others.push(...things);

step('a connection lost mid-call is resumed: every message once and in order, no leave', async () => {
  const proxy = await startProxy(server.url);
  cleanup(proxy);
  const { caller: rita, callee: sam, call, calleeCall } = await callThroughProxy(server.url, proxy, ['rita', 'sam']);
  cleanup(rita, sam);
  // A burst, cut while it is on its way: part of it read, part in flight, part written to
  // the dead connection. The count decides which part is replayed.
  for (const n of range(1, 30)) sam.notify('rita', 'seq', n);
  await until(() => seqs(rita, 'seq').length >= 5, 'the burst arriving');
  proxy.blocked = true;
  proxy.cut();
  await until(() => rita.of('reconnecting').length === 1, "'reconnecting'");
  const lost = rita.of('reconnecting')[0];
  eq([lost.code, lost.name, rita.reconnecting, rita.connected], [1006, 'connectionLost', true, false], 'reconnecting detail and getters');
  check(lost.until >= Date.now() + 10000, `reconnecting until ${lost.until}: at least the grace from now`);
  for (const n of range(31, 60)) sam.notify('rita', 'seq', n); // held while rita is away
  rita.notify('sam', 'while-away', 1); // queued until the resume
  await until(() => proxy.refused >= 1, 'an attempt while the network is down');
  proxy.blocked = false;
  await until(() => rita.of('reconnected').length === 1, "'reconnected'", 10000);
  const back = rita.of('reconnected')[0];
  eq([back.sId, back.resumed, rita.connected, rita.reconnecting], ['rita', true, true, false], 'reconnected detail and getters');
  check(back.attempts >= 2, `attempts ${back.attempts}: one refused, one through`);
  sam.notify('rita', 'end');
  await until(() => seqs(rita, 'end').length === 1, 'the marker after the burst');
  eq(seqs(rita, 'seq'), range(1, 60), 'every notify once, in order');
  await until(() => seqs(sam, 'while-away').length === 1, 'what rita sent while away');
  eq([sam.of('leave').length, sam.of('callend').length, rita.of('callend').length, rita.of('close').length, rita.of('sessionlost').length],
    [0, 0, 0, 0, 0], 'no leave, no callend, no close, no session lost');
  eq([rita.currentCall === call, call.stateName, calleeCall.stateName, call.pc.closed], [true, 'ACTIVE', 'ACTIVE', false], 'the call goes on');
  eq(call.pc.offerOptions, [undefined], 'ICE stayed connected: no ICE restart');
  // Negotiation still runs through the resumed session.
  await call.renegotiate();
  eq(calleeCall.pc.remoteDescription, call.pc.localDescription, 'the new offer reached sam');
  eq(call.pc.remoteDescription, calleeCall.pc.localDescription, "sam's answer reached rita");
  await until(() => states(sam, call.sessionId).slice(-2).join() === 'PENDING,ACTIVE', 'PENDING then ACTIVE again');
  eq([call.pc.violations, calleeCall.pc.violations], [[], []], 'no order violations');
  eq([rita.of('error').length, sam.of('error').length], [0, 0], 'no error events');
});

step('ICE that went bad while reconnecting is restarted through the resumed session', async () => {
  const proxy = await startProxy(server.url);
  cleanup(proxy);
  const { caller: tina, callee: ugo, call, calleeCall } = await callThroughProxy(server.url, proxy, ['tina', 'ugo']);
  cleanup(tina, ugo);
  const candidatesBefore = calleeCall.pc.remoteCandidates.length;
  proxy.blocked = true;
  proxy.cut();
  await until(() => tina.reconnecting, 'reconnecting');
  call.pc._setIce('disconnected'); // the network change took the peer path too
  proxy.blocked = false;
  await until(() => tina.of('reconnected').length === 1, "'reconnected'", 10000);
  await until(() => ufragOf(call.pc.remoteDescription) === 'g1', "ugo's answer to the restart", 5000);
  eq(call.pc.offerOptions, [undefined, { iceRestart: true }], 'tina created an ICE-restart offer');
  eq(ufragOf(calleeCall.pc.remoteDescription), 'g1', 'ugo got the restart offer');
  // The restart's candidates follow their descriptions (the fake checks each ufrag).
  await until(() => calleeCall.pc.remoteCandidates.length === candidatesBefore + 3 && call.pc.remoteCandidates.length === 6,
    'candidates of the new credentials both ways');
  eq(calleeCall.pc.remoteCandidates.slice(-3).map((c) => c && c.usernameFragment), ['g1', 'g1', null], 'ugo got the new candidates, then end-of-candidates');
  eq([call.pc.violations, calleeCall.pc.violations], [[], []], 'no candidate before its description');
  await until(() => states(ugo, call.sessionId).slice(-2).join() === 'PENDING,ACTIVE', 'PENDING then ACTIVE again');
  eq([ugo.of('leave').length, tina.of('sessionlost').length, call.ended], [0, 0, false], 'no leave, no session lost');
  eq([tina.of('error').length, ugo.of('error').length], [0, 0], 'no error events');
});

step('an error to a resume attempt is not counted: the next attempt resumes', async () => {
  // A WebSocket whose connections, once armed, answer the client's first command with a
  // 9500 of their own instead of sending it, as a rate-limited server would.
  let armed = 0;
  class RefusingOnce extends WebSocket {
    send(data) {
      if (armed > 0 && !this.refused) {
        armed -= 1;
        this.refused = true;
        setTimeout(() => this.onmessage({ data: '{"cmd":"error","code":9500,"message":"rate limit"}' }), 0);
        return;
      }
      super.send(data);
    }
  }
  const proxy = await startProxy(server.url);
  cleanup(proxy);
  const { caller: abe, callee: bea, call } = await callThroughProxy(server.url, proxy, ['abe', 'bea'], { WebSocket: RefusingOnce });
  cleanup(abe, bea);
  bea.notify('abe', 'before', 1);
  await until(() => seqs(abe, 'before').length === 1, 'a message counted before the loss');
  armed = 1;
  proxy.cut();
  await until(() => abe.of('reconnected').length === 1, "'reconnected'", 10000);
  eq([armed, abe.of('reconnected')[0].resumed, abe.of('reconnected')[0].attempts >= 2], [0, true, true], 'refused once, resumed on the next attempt');
  eq([abe.of('sessionlost').length, bea.of('leave').length, call.ended], [0, 0, false], 'nothing lost');
  bea.notify('abe', 'after', 2);
  await until(() => seqs(abe, 'after').length === 1, 'a message after the resume');
  eq(seqs(abe, 'before'), [1], 'no replay of what was counted');
});

step('a call() cut off by the loss rejects; the session the server opened for it is stopped after the resume', async () => {
  const proxy = await startProxy(server.url);
  cleanup(proxy);
  const cid = await client(proxy.url, 'cid');
  const dan = await client(server.url, 'dan');
  cleanup(cid, dan);
  await cid.register('cid');
  await dan.register('dan');
  const waiting = (c, sId) => c.clients.some((x) => x.sId === sId && x.stateName === 'WAIT');
  await until(() => waiting(cid, 'dan'), 'cid sees dan');
  proxy.deaf = true; // the `session` reply will not reach cid on this connection
  const cut = cid.call('dan').then(() => null, (err) => err);
  await until(() => dan.of('sessionstate').some((e) => e.stateName === 'NEW'), 'the server opened the session');
  proxy.cut();
  proxy.deaf = false;
  const err = await cut;
  eq(err && [err.code, err.name], [1006, 'connectionLost'], 'call() rejected by the loss');
  await until(() => cid.of('reconnected').length === 1, "'reconnected'", 10000);
  await until(() => dan.of('callend').length === 1, "dan's call ends");
  eq(dan.of('callend')[0].reason, 'stopped', 'cid stopped the orphaned session');
  await until(() => waiting(dan, 'cid') && waiting(dan, 'dan'), 'both back in WAIT');
  eq([cid.currentCall, cid.of('incomingcall').length, cid.of('sessionstate').length, cid.of('error').length], [null, 0, 0, 0],
    'cid never took the session for an incoming call');
  dan.addEventListener('incomingcall', (e) => e.detail.accept({}), { once: true });
  const call = await cid.call('dan');
  await until(() => call.state === 3, 'a new call goes through');
});

step('another connection resuming the client closes it with 4001: no reconnecting', async () => {
  const proxy = await startProxy(server.url);
  cleanup(proxy);
  const { caller: vera, callee: walt, call } = await callThroughProxy(server.url, proxy, ['vera', 'walt']);
  cleanup(vera, walt);
  // Another tab the app gave the token to (here read from the client's internals).
  const other = new WebSocket(server.url);
  cleanup({ close: () => other.close() });
  const replies = [];
  other.onmessage = (e) => replies.push(JSON.parse(e.data));
  await new Promise((resolve) => { other.onopen = resolve; });
  other.send(JSON.stringify({ cmd: 'resume', sId: 'vera', resumeToken: vera._token, received: vera._received }));
  await until(() => vera.of('close').length === 1, "vera's close");
  const closed = vera.of('close')[0];
  eq([closed.code, closed.name, closed.gaveUp], [4001, 'replaced', false], 'close 4001');
  eq([replies[0] && replies[0].cmd, vera.of('reconnecting').length, call.endReason, vera.sId], ['resume', 0, 'disconnected', null], 'taken over, not reconnecting');
  eq(walt.of('leave').length, 0, 'walt saw no leave: the session lives on in the other connection');
});

step('reconnecting gives up once the grace is surely over', async () => {
  const proxy = await startProxy(server.url);
  cleanup(proxy);
  const opts = { resumeGrace: 0.3, serverPingInterval: 0.1, reconnectMinDelay: 20, reconnectMaxDelay: 80 };
  const { caller: xena, callee: yann, call } = await callThroughProxy(server.url, proxy, ['xena', 'yann'], opts);
  cleanup(xena, yann);
  let closedAt = 0;
  xena.addEventListener('close', () => { closedAt = Date.now(); });
  proxy.blocked = true;
  proxy.cut();
  await until(() => xena.of('close').length === 1, 'giving up', 5000);
  const { until: deadline } = xena.of('reconnecting')[0] || {};
  check(closedAt >= deadline, `gave up at ${closedAt}, not before ${deadline}`);
  eq([xena.of('close')[0].gaveUp, xena.of('close')[0].code, call.endReason, xena.sId, xena.reconnecting], [true, 1006, 'disconnected', null, false], 'close after giving up');
  check(proxy.refused >= 2, `${proxy.refused} attempts`);
});

step('close() while reconnecting ends it at once', async () => {
  const proxy = await startProxy(server.url);
  cleanup(proxy);
  const zoe = await client(proxy.url, 'zoe', { reconnectMinDelay: 20, reconnectMaxDelay: 40 });
  cleanup(zoe);
  await zoe.register('zoe');
  proxy.blocked = true;
  proxy.cut();
  await until(() => proxy.refused >= 1, 'an attempt');
  zoe.close();
  await until(() => zoe.of('close').length === 1, "zoe's close");
  eq([zoe.of('close')[0].code, zoe.of('close')[0].gaveUp, zoe.reconnecting, zoe.sId], [1000, false, false, null], 'closed by the app');
  const attempts = proxy.refused;
  await sleep(200); // five times the longest backoff: an attempt would show by now
  eq(proxy.refused, attempts, 'no attempt after close()');
});

step('a refused resume (grace over) registers afresh and reports the lost session', async () => {
  const short = await startServer(['--resume-grace', '0.5']);
  cleanup(short);
  const proxy = await startProxy(short.url);
  cleanup(proxy);
  const { caller: rita, callee: sam, call } = await callThroughProxy(short.url, proxy, ['rita', 'sam']);
  cleanup(rita, sam);
  proxy.blocked = true;
  proxy.cut();
  await until(() => rita.reconnecting, 'reconnecting');
  rita.notify('sam', 'queued'); // not tied to the session: sent after the new registration
  // The grace ran out on the server: sam got leave. Only then let rita through.
  await until(() => sam.of('leave').length === 1, "sam's leave at the end of the grace", 5000);
  proxy.blocked = false;
  await until(() => rita.of('reconnected').length === 1, "'reconnected'", 10000);
  eq(rita.of('reconnected')[0].resumed, false, 'not resumed: registered afresh');
  eq(rita.of('sessionlost').map((e) => [e.sessionId, e.opponentId, e.call === call]), [[call.sessionId, 'sam', true]], "'sessionlost' with the session id");
  eq([call.ended, call.endReason, call.pc.closed, rita.currentCall], [true, 'sessionLost', true, null], 'the call ended, its peer connection closed');
  eq(rita.of('callend').map((e) => e.reason), ['sessionLost'], 'one callend');
  eq([rita.of('registered').length, rita.sId, rita.connected], [2, 'rita', true], 'registered again as rita');
  await until(() => listOf(sam) === 'sam:WAIT,rita:WAIT', 'sam sees rita back, in WAIT');
  await until(() => seqs(sam, 'queued').length === 1, 'the notify queued while away');
  sam.notify('rita', 'hello-again');
  await until(() => seqs(rita, 'hello-again').length === 1, 'rita reachable again');
  eq(rita.of('close').length, 0, 'no close event');
  eq(rita.of('error').length, 0, 'no error events');
});

let fatal = null;
try {
  for (const [name, fn] of steps) {
    current = name;
    const before = failures.length;
    console.log(`- ${name}`);
    try {
      await fn();
    } catch (err) {
      check(false, `threw ${err && err.stack ? err.stack : err}`);
    }
    if (failures.length === before) console.log('  ok');
  }
} catch (err) {
  fatal = err;
} finally {
  for (const c of [ctx.alice, ctx.bob, ctx.carol, ...others]) if (c) c.close ? c.close() : c.stop();
  server.stop();
}
if (fatal) failures.push(`fatal: ${fatal}`);
if (failures.length) {
  console.log(`\n${failures.length} check(s) failed:`);
  for (const f of failures) console.log(`  ${f}`);
  process.exit(1);
}
console.log('\nall client protocol checks passed');
process.exit(0);
