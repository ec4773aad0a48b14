// Sluice JavaScript client: the client side of the Sluice client protocol,
// version 1 (shared/PROTOCOL.md). One ES module, no dependencies, no build
// step. It runs in browsers and in Node (pass the `ws` package's WebSocket
// as the `WebSocket` option where there is no global one).
//
// What it does for the application:
// - connects, says `hello`, and reconnects with exponential back-off and
//   full jitter (base 500 ms, cap 20 s), resuming the session with the last
//   position of every channel;
// - resends the sends that were not `accepted` with the same id (so the
//   server stores each once), honours `busy.retry_after_ms` and
//   `reconnect.after_ms`;
// - drops duplicate `(ch, seq)` events, fills the hole left by a rejoin in a
//   new session from `history`, acknowledges positions with `ack`;
// - assembles `token` events into replies (a new `attempt` replaces the
//   partial text), tracks presence per room, and reports connection state.

export const PROTOCOL = 'sluice.v1';
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 20000;

const ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
const NAME_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** Connection states, in the order a connection goes through them. */
export const State = Object.freeze({
    IDLE: 'idle', // created, connect() not called yet
    CONNECTING: 'connecting', // socket opening or hello sent, no welcome yet
    OPEN: 'open', // welcomed: frames flow
    RECONNECTING: 'reconnecting', // waiting before the next attempt
    CLOSED: 'closed', // closed by the application or for good (bad token)
});

/**
 * Returns the delay before reconnect attempt `attempt` (0 for the first
 * retry): a uniformly random value in [0, min(cap, base * 2^attempt)) ms,
 * which is "full jitter".
 */
export function backoffDelay(attempt, { baseMs = BACKOFF_BASE_MS, capMs = BACKOFF_CAP_MS, random = Math.random } = {}) {
    const n = Math.max(0, Math.min(Number(attempt) || 0, 40));
    const ceiling = Math.min(capMs, baseMs * 2 ** n);
    return Math.floor(random() * ceiling);
}

/** Tells whether `id` is a valid client message id (1-64 of [A-Za-z0-9_.:-]). */
export function isValidId(id) {
    return typeof id === 'string' && ID_RE.test(id);
}

/** Tells whether `name` is a valid room name (1-64 of [A-Za-z0-9_-]). */
export function isValidRoom(name) {
    return typeof name === 'string' && NAME_RE.test(name);
}

/** Returns the channel name of a room ("r:<room>"). */
export function roomChannel(room) {
    return `r:${room}`;
}

/** Returns the room of a channel name, or null for the session channel "s". */
export function channelRoom(ch) {
    return typeof ch === 'string' && ch.startsWith('r:') ? ch.slice(2) : null;
}

/** A tiny synchronous event emitter. */
export class Emitter {
    #handlers = new Map();

    /** Calls `fn(payload)` on each `type` event; returns a function that unsubscribes. */
    on(type, fn) {
        let set = this.#handlers.get(type);
        if (!set) {
            set = new Set();
            this.#handlers.set(type, set);
        }
        set.add(fn);
        return () => this.off(type, fn);
    }

    /** Like on(), for the next event only. */
    once(type, fn) {
        const off = this.on(type, (payload) => {
            off();
            fn(payload);
        });
        return off;
    }

    off(type, fn) {
        this.#handlers.get(type)?.delete(fn);
    }

    // A throwing handler must not break the client's state machine, so its
    // error is rethrown on a fresh stack where the host reports it.
    emit(type, payload) {
        const set = this.#handlers.get(type);
        if (!set) return;
        for (const fn of [...set]) {
            try {
                fn(payload);
            } catch (err) {
                setTimeout(() => {
                    throw err;
                }, 0);
            }
        }
    }
}

/**
 * The last delivered `seq` of every channel. accept() is the duplicate
 * filter: along a channel seq only grows, so anything at or below the last
 * one was delivered before.
 */
export class Positions {
    #map = new Map();

    get(ch) {
        return this.#map.get(ch);
    }

    has(ch) {
        return this.#map.has(ch);
    }

    /** Returns true and records `seq` when it is new on `ch`; false for a duplicate. */
    accept(ch, seq) {
        const last = this.#map.get(ch);
        if (last !== undefined && seq <= last) return false;
        this.#map.set(ch, seq);
        return true;
    }

    /** Moves `ch` forward to `seq` (never backwards). */
    advance(ch, seq) {
        const last = this.#map.get(ch);
        if (last === undefined || seq > last) this.#map.set(ch, seq);
    }

    delete(ch) {
        this.#map.delete(ch);
    }

    entries() {
        return [...this.#map.entries()];
    }

    /** Returns the positions as a plain object, as `hello.resume.positions` wants them. */
    toJSON() {
        return Object.fromEntries(this.#map);
    }
}

/**
 * Assembles `token` events into replies. A reply is identified by its
 * `reply` id; tokens of a higher `attempt` replace the text of the earlier
 * attempt (a worker died and another one retried), tokens of a lower one
 * are stale and dropped, and the final `reply` event gives the whole text.
 * Finished replies are remembered (up to `keepFinished`) so that late or
 * repeated events for them are ignored.
 */
export class ReplyAssembler {
    #live = new Map();
    #done = new Map();
    #keep;

    constructor({ keepFinished = 1000 } = {}) {
        this.#keep = keepFinished;
    }

    /** Returns the state of reply `id` (live or finished), or undefined. */
    get(id) {
        return this.#live.get(id) ?? this.#done.get(id);
    }

    /** Returns the replies still streaming. */
    active() {
        return [...this.#live.values()];
    }

    /** Feeds a `token` event; returns the updated reply, or null when the token was dropped. */
    token(ev) {
        if (this.#done.has(ev.reply)) return null;
        const attempt = Number.isFinite(ev.attempt) ? ev.attempt : 0;
        let r = this.#live.get(ev.reply);
        let restarted = false;
        if (!r) {
            r = { reply: ev.reply, to: ev.to, agent: ev.agent, ch: ev.ch, attempt, text: '', final: false };
            this.#live.set(ev.reply, r);
        } else if (attempt < r.attempt) {
            return null;
        } else if (attempt > r.attempt) {
            r.attempt = attempt;
            r.text = '';
            restarted = true;
        }
        r.text += typeof ev.text === 'string' ? ev.text : '';
        return { ...r, restarted };
    }

    /** Feeds a final `reply` event; returns the finished reply, or null for a repeat. */
    final(ev) {
        if (this.#done.has(ev.reply)) return null;
        const prev = this.#live.get(ev.reply);
        this.#live.delete(ev.reply);
        const r = {
            reply: ev.reply,
            to: ev.to ?? prev?.to,
            agent: ev.agent ?? prev?.agent,
            ch: ev.ch ?? prev?.ch,
            attempt: Number.isFinite(ev.attempt) ? ev.attempt : (prev?.attempt ?? 0),
            text: typeof ev.text === 'string' ? ev.text : (prev?.text ?? ''),
            final: true,
            cancelled: ev.cancelled === true,
            degraded: ev.degraded === true,
            partial: ev.partial === true,
        };
        if (ev.usage && typeof ev.usage === 'object') r.usage = { ...ev.usage };
        this.#done.set(ev.reply, r);
        if (this.#done.size > this.#keep) this.#done.delete(this.#done.keys().next().value);
        return { ...r, restarted: false };
    }
}

// Presence of one room: who is there, keyed by session where the server
// says it (a user may be present with several sessions).
function memberKey(m) {
    if (typeof m === 'string') return { key: `u:${m}`, user: m };
    if (m && typeof m === 'object' && typeof m.user === 'string') {
        return { key: m.session ? `s:${m.session}` : `u:${m.user}`, user: m.user };
    }
    return null;
}

let idPrefixCounter = 0;
function randomPrefix() {
    const c = globalThis.crypto;
    if (c?.getRandomValues) {
        const b = new Uint8Array(6);
        c.getRandomValues(b);
        return [...b].map((x) => x.toString(36).padStart(2, '0')).join('').slice(0, 8);
    }
    idPrefixCounter += 1;
    return `${Date.now().toString(36)}${idPrefixCounter}`;
}

function defaultUrl() {
    const loc = globalThis.location;
    if (!loc?.host) return undefined;
    return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/v1/ws`;
}

function frameText(data) {
    if (typeof data === 'string') return data;
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
    if (Array.isArray(data)) return data.map(frameText).join('');
    return String(data);
}

/** Error raised by the client's promises; `code` is a protocol error code or a local one. */
export class SluiceError extends Error {
    constructor(code, message, frame) {
        super(message || code);
        this.name = 'SluiceError';
        this.code = code;
        if (frame !== undefined) this.frame = frame;
    }
}

/**
 * A Sluice client: one logical session that survives reconnects.
 *
 * Events (client.on(name, fn)):
 *   state        {state, previous, attempt?, delayMs?, code?, reason?}
 *   welcome      the welcome frame ({session, resumed, heartbeat_ms, limits, ...})
 *   disconnected {code, reason, willReconnect}
 *   event        every new channel event, after duplicate filtering
 *   message      `message` events
 *   reply        reply updates {reply, to, agent, ch, attempt, text, final, restarted, cancelled?, degraded?, partial?, usage?}
 *   presence     {room, action, user, session, members}, one per change (an event
 *                carrying several `changes` gives several)
 *   members      {room, members} whenever a room's member list changes
 *   receipt      `receipt` events
 *   busy         `busy` frames: for a send ({id, reason, retry_after_ms, scope:'send'}: it
 *                will be sent again), a cancel (scope:'cancel') or another request
 *                (scope:'request'), all retried by the client; and `busy` events from
 *                agents ({to, agent, reason, retry_after_ms, scope:'agent'})
 *   accepted     `accepted` frames
 *   joined, left the `joined` / `left` frames
 *   gap          `gap` frames, and {ch, from, to, local:true} when a hole could not be filled
 *   reconnect    `reconnect` frames (the gateway is draining)
 *   duplicate    {ch, seq} of each dropped duplicate
 *   error        `error` frames and local errors (SluiceError)
 */
export class SluiceClient extends Emitter {
    #opts;
    #WS;
    #ws = null;
    #state = State.IDLE;
    #session = null;
    #resumeToken = null;
    #resumeSent = false;
    #tokenIsStatic;
    #tokenRefused = false; // the last fresh hello's token was refused (4401)
    #heartbeatMs = 25000;
    #limits = null;
    #attempt = 0;
    #reconnectAt = 0; // set by a `reconnect` frame
    #timers = new Set();
    #named = new Map(); // name -> timer: reconnect, hello, heartbeat, drain, ack, flush, retryRequests
    #lastInbound = 0;
    #connectWaiters = [];

    #positions = new Positions();
    #acked = new Map();
    #replies;

    #pending = new Map(); // id -> {frame, state: 'queued'|'inflight', resolve, reject}
    #lastSentId = null;
    #idPrefix = randomPrefix();
    #idCounter = 0;
    #pauseUntil = 0;
    #control = []; // frames to send once open (cancel)
    #cancels = new Set(); // ids of recent cancels

    #rooms = new Set(); // rooms the application wants to be in
    #joinedNow = new Set(); // rooms confirmed by `joined` on the current session
    #joinWaiters = new Map(); // room -> [{resolve, reject, timer}]
    #leaveWaiters = new Map();
    #members = new Map(); // room -> Map(key -> user)
    #historyWaiters = new Map(); // ch -> [{resolve, reject, timer}]
    #pingWaiters = [];
    #backfill = new Map(); // ch -> buffered live events while history fills a hole

    #stats = { duplicates: 0, reconnects: 0, resumes: 0, resent: 0, gaps: 0, backfilled: 0 };

    /**
     * Creates a client; nothing happens until connect().
     *
     * Options:
     *   url          ws(s)://host:port/v1/ws (default: /v1/ws on the page's host)
     *   token        the JWT, or a function (possibly async) returning one; a
     *                function is called before every connection, so it can renew
     *                (it gets {refused: true} after the gateway refused its last token)
     *   WebSocket    the WebSocket constructor (default: globalThis.WebSocket)
     *   backoff      {baseMs: 500, capMs: 20000}
     *   random       () => [0, 1), for the jitter (tests)
     *   autoAck      send `ack` for delivered events (default true)
     *   ackDelayMs   batching delay of acks (default 200)
     *   requestTimeoutMs  timeout of join/leave/history/ping (default 10000)
     *   helloTimeoutMs    time allowed for `welcome` after the socket opens (default 10000)
     *   rejoinOnResume    send `join` again for every room after a resume (default false:
     *                     a resumed session keeps its rooms on the gateway)
     */
    constructor(opts = {}) {
        super();
        const url = opts.url ?? defaultUrl();
        if (!url) throw new SluiceError('bad_option', 'url is required outside a browser page');
        if (opts.token === undefined) throw new SluiceError('bad_option', 'token is required');
        const WS = opts.WebSocket ?? globalThis.WebSocket;
        if (typeof WS !== 'function') throw new SluiceError('bad_option', 'no WebSocket implementation: pass opts.WebSocket');
        this.#opts = {
            url,
            token: opts.token,
            backoff: { baseMs: BACKOFF_BASE_MS, capMs: BACKOFF_CAP_MS, ...(opts.backoff || {}) },
            random: opts.random ?? Math.random,
            autoAck: opts.autoAck !== false,
            ackDelayMs: opts.ackDelayMs ?? 200,
            requestTimeoutMs: opts.requestTimeoutMs ?? 10000,
            helloTimeoutMs: opts.helloTimeoutMs ?? 10000,
            rejoinOnResume: opts.rejoinOnResume === true,
        };
        this.#WS = WS;
        this.#tokenIsStatic = typeof opts.token !== 'function';
        this.#replies = new ReplyAssembler({ keepFinished: opts.keepFinished ?? 1000 });
    }

    /** The connection state (see State). */
    get state() {
        return this.#state;
    }

    /** The session id given by the last welcome, or null. */
    get session() {
        return this.#session;
    }

    /** The limits given by the last welcome ({max_frame, rate, burst}), or null. */
    get limits() {
        return this.#limits;
    }

    /** The last delivered seq per channel, as a plain object. */
    get positions() {
        return this.#positions.toJSON();
    }

    /** The rooms joined (or being joined). */
    get rooms() {
        return [...this.#rooms];
    }

    /** Counters: duplicates dropped, reconnects, resumes, sends resent, gaps, events backfilled. */
    get stats() {
        return { ...this.#stats };
    }

    /** The ids of the sends not accepted yet, oldest first. */
    get unaccepted() {
        return [...this.#pending.keys()];
    }

    /** The replies still streaming. */
    get activeReplies() {
        return this.#replies.active();
    }

    /** Returns the state of reply `id`, or undefined. */
    reply(id) {
        return this.#replies.get(id);
    }

    /** Returns the users present in `room` (each once). */
    members(room) {
        return [...new Set(this.#members.get(room)?.values() ?? [])].sort();
    }

    /**
     * Connects (once; the client then keeps itself connected until close()).
     * Resolves with the first `welcome`; rejects when the client is closed
     * first or the token is refused for good.
     */
    connect() {
        if (this.#state === State.OPEN) return Promise.resolve(this.#lastWelcome);
        const p = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
        p.catch(() => {});
        if (this.#state === State.IDLE || this.#state === State.CLOSED) {
            this.#attempt = 0;
            this.#open();
        }
        return p;
    }

    #lastWelcome = null;

    /**
     * Closes the connection for good: no reconnect. Unaccepted sends and
     * outstanding requests are rejected with code 'closed'.
     */
    close(code = 1000, reason = 'client closed') {
        if (this.#state === State.CLOSED) return;
        const ws = this.#ws;
        this.#detach();
        if (ws) {
            try {
                ws.close(code, reason);
            } catch {
                /* already closing */
            }
        }
        this.#clearTimers();
        this.#setState(State.CLOSED, { code, reason });
        const err = new SluiceError('closed', 'client closed');
        for (const p of this.#pending.values()) p.reject(err);
        this.#pending.clear();
        this.#failRequests(err, true);
        for (const w of this.#connectWaiters.splice(0)) w.reject(err);
    }

    /**
     * Posts `text` to `room` (or, without a room, privately to the agents on
     * the session channel). Returns {id, accepted}: `accepted` resolves with
     * the `accepted` frame once the gateway has stored the message, however
     * many reconnects and `busy` retries that takes, and rejects on an
     * `error` frame for this id or close().
     */
    send(text, { room, id } = {}) {
        if (typeof text !== 'string') throw new SluiceError('bad_frame', 'text must be a string');
        if (room !== undefined && room !== null && !isValidRoom(room)) throw new SluiceError('bad_id', `bad room name: ${room}`);
        if (id === undefined) id = this.nextId();
        if (!isValidId(id)) throw new SluiceError('bad_id', `bad message id: ${id}`);
        if (this.#pending.has(id)) throw new SluiceError('bad_id', `id ${id} is already pending`);
        if (this.#state === State.CLOSED) throw new SluiceError('closed', 'client closed');
        const frame = { type: 'send', id };
        if (room) frame.room = room;
        frame.text = text;
        if (this.#lastSentId) frame.prev = this.#lastSentId;
        this.#lastSentId = id;
        let resolve;
        let reject;
        const accepted = new Promise((res, rej) => {
            resolve = res;
            reject = rej;
        });
        accepted.catch(() => {});
        this.#pending.set(id, { frame, state: 'queued', resolve, reject });
        this.#flushSends();
        return { id, accepted };
    }

    /** Returns a fresh message id ("c-<random>-<n>"). */
    nextId() {
        this.#idCounter += 1;
        return `c-${this.#idPrefix}-${this.#idCounter}`;
    }

    /**
     * Joins `room`; resolves with the `joined` frame ({room, ch, seq, members}).
     * The client rejoins by itself after a reconnect that starts a new session.
     */
    join(room) {
        if (!isValidRoom(room)) return Promise.reject(new SluiceError('bad_id', `bad room name: ${room}`));
        this.#rooms.add(room);
        const p = this.#waitFor(this.#joinWaiters, room, 'join');
        if (this.#state === State.OPEN) this.#sendFrame({ type: 'join', room });
        return p;
    }

    /** Leaves `room`; resolves with the `left` frame. */
    leave(room) {
        if (!isValidRoom(room)) return Promise.reject(new SluiceError('bad_id', `bad room name: ${room}`));
        this.#rooms.delete(room);
        // A resume restores the rooms of its positions: forget this one.
        this.#positions.delete(roomChannel(room));
        this.#acked.delete(roomChannel(room));
        for (const w of this.#joinWaiters.get(room) ?? []) {
            clearTimeout(w.timer);
            w.reject(new SluiceError('left', `left ${room}`));
        }
        this.#joinWaiters.delete(room);
        const p = this.#waitFor(this.#leaveWaiters, room, 'leave');
        if (this.#state === State.OPEN) this.#sendFrame({ type: 'leave', room });
        return p;
    }

    /** Asks the agents to stop the replies to message `id`. */
    cancel(id) {
        if (!isValidId(id)) throw new SluiceError('bad_id', `bad message id: ${id}`);
        const frame = { type: 'cancel', id };
        // Remembered (bounded) so that a `busy` for it is recognised.
        this.#cancels.add(id);
        if (this.#cancels.size > 256) this.#cancels.delete(this.#cancels.values().next().value);
        if (this.#state === State.OPEN) this.#sendFrame(frame);
        else this.#control.push(frame);
    }

    /**
     * Fetches older events of channel `ch` (before seq `before`, at most
     * `limit`); resolves with the events, oldest first. These events do not
     * go through the live pipeline (no `event`/`message`/`reply` emits).
     */
    history(ch, { before, limit = 50 } = {}) {
        if (this.#state !== State.OPEN) return Promise.reject(new SluiceError('not_connected', 'not connected'));
        const p = this.#waitFor(this.#historyWaiters, ch, 'history');
        const frame = { type: 'history', ch, limit };
        if (before !== undefined) frame.before = before;
        this.#sendFrame(frame);
        return p.then((f) => (Array.isArray(f.events) ? [...f.events].sort((a, b) => a.seq - b.seq) : []));
    }

    /** Sends an application `ping`; resolves with the round-trip time in ms. */
    ping() {
        if (this.#state !== State.OPEN) return Promise.reject(new SluiceError('not_connected', 'not connected'));
        const t0 = Date.now();
        const p = new Promise((resolve, reject) => {
            const w = { resolve, reject, timer: null };
            w.timer = this.#timeout(() => {
                const i = this.#pingWaiters.indexOf(w);
                if (i >= 0) this.#pingWaiters.splice(i, 1);
                reject(new SluiceError('timeout', 'ping timed out'));
            }, this.#opts.requestTimeoutMs);
            this.#pingWaiters.push(w);
        });
        this.#sendFrame({ type: 'ping' });
        return p.then(() => Date.now() - t0);
    }

    /** Sends the acks due now (normally batched automatically). */
    flushAcks() {
        this.#clearTimer('ack');
        if (this.#state !== State.OPEN) return;
        for (const [ch, seq] of this.#positions.entries()) {
            if ((this.#acked.get(ch) ?? -1) < seq) {
                this.#acked.set(ch, seq);
                this.#sendFrame({ type: 'ack', ch, seq });
            }
        }
    }

    // ---- connection life cycle ----

    #setState(state, info = {}) {
        const previous = this.#state;
        this.#state = state;
        this.emit('state', { state, previous, ...info });
    }

    async #open() {
        this.#clearTimer('reconnect');
        this.#setState(State.CONNECTING, { attempt: this.#attempt });
        let token;
        try {
            token = this.#tokenIsStatic ? this.#opts.token : await this.#opts.token({ refused: this.#tokenRefused });
        } catch (err) {
            this.emit('error', new SluiceError('token', `token provider failed: ${err?.message ?? err}`));
            this.#scheduleReconnect({ code: 0, reason: 'token provider failed' });
            return;
        }
        if (this.#state !== State.CONNECTING) return; // closed meanwhile
        let ws;
        try {
            ws = new this.#WS(this.#opts.url, [PROTOCOL]);
        } catch (err) {
            this.emit('error', new SluiceError('connect', `cannot open ${this.#opts.url}: ${err?.message ?? err}`));
            this.#scheduleReconnect({ code: 0, reason: 'connect failed' });
            return;
        }
        this.#ws = ws;
        ws.onopen = () => {
            if (ws !== this.#ws) return;
            const hello = { type: 'hello', token };
            this.#resumeSent = false;
            if (this.#session && this.#resumeToken) {
                hello.resume = { session: this.#session, resume_token: this.#resumeToken, positions: this.#positions.toJSON() };
                this.#resumeSent = true;
            }
            this.#lastInbound = Date.now();
            this.#rawSend(hello);
            this.#setNamed('hello', () => this.#drop(4408, 'no welcome in time'), this.#opts.helloTimeoutMs);
        };
        ws.onmessage = (e) => {
            if (ws !== this.#ws) return;
            this.#lastInbound = Date.now();
            let msg;
            try {
                msg = JSON.parse(frameText(e.data));
            } catch {
                this.emit('error', new SluiceError('bad_frame', 'gateway sent a frame that is not JSON'));
                return;
            }
            if (msg && typeof msg === 'object') this.#onFrame(msg);
        };
        ws.onerror = () => {
            /* a close event follows */
        };
        ws.onclose = (e) => {
            if (ws !== this.#ws) return;
            this.#detach();
            this.#onClosed(e.code ?? 1006, e.reason ?? '');
        };
    }

    #detach() {
        const ws = this.#ws;
        if (!ws) return;
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        // A socket closed before it opened still reports an error to the
        // host; keep a listener so Node does not treat it as unhandled.
        ws.onerror = () => {};
        this.#ws = null;
    }

    // Gives up on the current socket at once (dead peer, no welcome, planned
    // switch after `reconnect`), without waiting for a close handshake.
    #drop(code, reason) {
        const ws = this.#ws;
        this.#detach();
        if (ws) {
            try {
                ws.close(code >= 4000 || code === 1000 ? code : 1000, reason);
            } catch {
                /* already closing */
            }
        }
        this.#onClosed(code, reason);
    }

    #onClosed(code, reason) {
        for (const name of ['hello', 'heartbeat', 'drain', 'ack', 'flush', 'retryRequests']) this.#clearTimer(name);
        if (this.#state === State.CLOSED) return;
        const wasOpen = this.#state === State.OPEN;
        this.#joinedNow.clear();
        for (const p of this.#pending.values()) p.state = 'queued';
        this.#failRequests(new SluiceError('disconnected', `connection closed (${code})`), false);
        for (const buf of this.#backfill.values()) buf.length = 0;
        this.#backfill.clear();

        if (code === 4403) {
            // Disconnected by the application (server API): never come
            // back on our own; the app decides what happens next.
            this.#closeForGood(code, reason, new SluiceError('disconnected_by_server', `disconnected by the application (${code} ${reason})`));
            return;
        }
        if (code === 4401) {
            if (this.#resumeSent) {
                // The resume token was refused (expired, other gateway
                // secret): start a new session; rooms are joined again.
                this.#session = null;
                this.#resumeToken = null;
            } else if (!this.#tokenIsStatic) {
                this.#tokenRefused = true;
            } else {
                this.#closeForGood(code, reason, new SluiceError('unauthorized', `token refused (${code} ${reason})`));
                return;
            }
        }
        this.emit('disconnected', { code, reason, willReconnect: true });
        if (wasOpen) this.#stats.reconnects += 1;
        this.#scheduleReconnect({ code, reason });
    }

    // The gateway ended the session for good (a refused fixed token, 4401;
    // the application's disconnect, 4403): no reconnect; everything waiting
    // rejects with err.
    #closeForGood(code, reason, err) {
        this.emit('error', err);
        this.emit('disconnected', { code, reason, willReconnect: false });
        this.#clearTimers();
        this.#setState(State.CLOSED, { code, reason });
        for (const p of this.#pending.values()) p.reject(err);
        this.#pending.clear();
        this.#failRequests(err, true);
        for (const w of this.#connectWaiters.splice(0)) w.reject(err);
    }

    #scheduleReconnect({ code, reason }) {
        let delayMs;
        const now = Date.now();
        if (this.#reconnectAt > 0) {
            // The draining gateway told us when to come back.
            delayMs = Math.max(0, this.#reconnectAt - now);
            this.#reconnectAt = 0;
        } else {
            delayMs = backoffDelay(this.#attempt, { ...this.#opts.backoff, random: this.#opts.random });
            this.#attempt += 1;
        }
        this.#setState(State.RECONNECTING, { attempt: this.#attempt, delayMs, code, reason });
        this.#setNamed(
            'reconnect',
            () => {
                if (this.#state === State.RECONNECTING) this.#open();
            },
            delayMs,
        );
    }

    #onWelcome(w) {
        this.#clearTimer('hello');
        this.#tokenRefused = false;
        const resumed = this.#resumeSent && w.resumed === true;
        if (!resumed) this.#startNewSession();
        else this.#stats.resumes += 1;
        this.#session = w.session ?? null;
        this.#resumeToken = w.resume_token ?? null;
        if (Number.isFinite(w.heartbeat_ms) && w.heartbeat_ms > 0) this.#heartbeatMs = w.heartbeat_ms;
        this.#limits = w.limits ?? null;
        this.#attempt = 0;
        this.#reconnectAt = 0;
        this.#lastWelcome = w;
        this.#setState(State.OPEN, { resumed, session: this.#session });
        this.emit('welcome', { ...w, resumed });
        this.#startHeartbeat();

        // Rooms: a new session joins them again; a resumed one keeps them on
        // the gateway, but joins that were never confirmed are sent again.
        for (const room of this.#rooms) {
            if (!resumed || this.#opts.rejoinOnResume || this.#joinWaiters.has(room)) this.#sendFrame({ type: 'join', room });
        }
        for (const room of this.#leaveWaiters.keys()) this.#sendFrame({ type: 'leave', room });
        for (const f of this.#control.splice(0)) this.#sendFrame(f);
        this.#flushSends();
        for (const c of this.#connectWaiters.splice(0)) c.resolve({ ...w, resumed });
    }

    // The session is new (first connect, or the old one could not be
    // resumed): the session channel starts over, and the causal chain of the
    // unaccepted sends is rebuilt so the first one does not wait for a `prev`
    // the new session never saw.
    #startNewSession() {
        this.#positions.delete('s');
        this.#acked.clear();
        let prev = null;
        for (const p of this.#pending.values()) {
            if (prev) p.frame.prev = prev;
            else delete p.frame.prev;
            prev = p.frame.id;
        }
        this.#lastSentId = prev;
        for (const room of this.#rooms) this.#members.delete(room);
    }

    #startHeartbeat() {
        const hb = this.#heartbeatMs;
        const tick = () => {
            if (this.#state !== State.OPEN) return;
            const idle = Date.now() - this.#lastInbound;
            if (idle > 2.5 * hb) {
                this.#drop(4408, 'heartbeat timeout');
                return;
            }
            if (idle >= hb) this.#rawSend({ type: 'ping' });
            this.#setNamed('heartbeat', tick, Math.max(50, Math.floor(hb / 2)));
        };
        this.#setNamed('heartbeat', tick, Math.max(50, Math.floor(hb / 2)));
    }

    // ---- inbound frames ----

    #onFrame(f) {
        switch (f.type) {
            case 'welcome':
                this.#onWelcome(f);
                break;
            case 'event':
                this.#onEvent(f);
                break;
            case 'accepted': {
                const p = this.#pending.get(f.id);
                if (p) {
                    this.#pending.delete(f.id);
                    p.resolve(f);
                }
                this.emit('accepted', f);
                break;
            }
            case 'busy':
                this.#onBusy(f);
                break;
            case 'joined':
                this.#onJoined(f);
                break;
            case 'left': {
                const room = f.room ?? channelRoom(f.ch);
                this.#joinedNow.delete(room);
                this.#members.delete(room);
                this.#resolveWaiter(this.#leaveWaiters, room, f);
                this.emit('left', f);
                break;
            }
            case 'history':
                if (!this.#resolveWaiter(this.#historyWaiters, f.ch, f)) this.emit('history', f);
                break;
            case 'gap':
                this.#stats.gaps += 1;
                // `to` is the seq of the first event replayed after the hole:
                // that event is still to come, so the position stops just
                // before it (advancing to `to` would drop it as a duplicate).
                if (Number.isFinite(f.to)) this.#positions.advance(f.ch, f.to - 1);
                this.emit('gap', f);
                break;
            case 'reconnect':
                this.#onReconnectFrame(f);
                break;
            case 'resume_token':
                // A fresh token for a long connection: only the latest is kept.
                if (typeof f.resume_token === 'string' && f.resume_token !== '') this.#resumeToken = f.resume_token;
                break;
            case 'pong': {
                const w = this.#pingWaiters.shift();
                if (w) {
                    clearTimeout(w.timer);
                    this.#timers.delete(w.timer);
                    w.resolve();
                }
                break;
            }
            case 'error':
                this.#onError(f);
                break;
            default:
                break; // Unknown frame types are ignored: the protocol may grow.
        }
    }

    // A `busy` frame refuses one client frame. For a send (its id is
    // pending) sending pauses and the same id goes again after the delay. A
    // refused cancel carries the id of the message to stop: it is sent again.
    // Anything else (a join or leave, which carry no id) is retried by
    // sending the unanswered joins and leaves again after the delay.
    #onBusy(f) {
        const p = this.#pending.get(f.id);
        const delay = Number.isFinite(f.retry_after_ms) && f.retry_after_ms >= 0 ? f.retry_after_ms : 1000;
        let scope = 'request';
        if (p) {
            scope = 'send';
            p.state = 'queued';
            this.#pauseUntil = Math.max(this.#pauseUntil, Date.now() + delay);
            this.#flushSends();
        } else if (f.id !== undefined && this.#cancels.has(f.id)) {
            scope = 'cancel';
            this.#timeout(() => this.cancel(f.id), delay);
        } else {
            this.#setNamed('retryRequests', () => this.#resendRequests(), delay);
        }
        this.emit('busy', { ...f, retry_after_ms: delay, scope });
    }

    #resendRequests() {
        for (const room of this.#joinWaiters.keys()) this.#sendFrame({ type: 'join', room });
        for (const room of this.#leaveWaiters.keys()) this.#sendFrame({ type: 'leave', room });
    }

    #onError(f) {
        const err = new SluiceError(f.code ?? 'internal', f.message ?? f.code ?? 'error', f);
        if (f.id !== undefined && this.#pending.has(f.id)) {
            const p = this.#pending.get(f.id);
            this.#pending.delete(f.id);
            p.reject(err);
        } else if (f.code === 'forbidden') {
            // Errors carry no room: a refused join is the oldest one waiting.
            const room = f.room ?? this.#joinWaiters.keys().next().value;
            if (room !== undefined && this.#joinWaiters.has(room)) {
                this.#rooms.delete(room);
                this.#rejectWaiters(this.#joinWaiters, room, err);
            }
        } else if (f.code === 'not_joined' && this.#leaveWaiters.size > 0) {
            // Leaving a room the session is not in: it is left all the same.
            const room = f.room ?? this.#leaveWaiters.keys().next().value;
            this.#resolveWaiter(this.#leaveWaiters, room, { type: 'left', room });
            return;
        }
        this.emit('error', err);
    }

    #onReconnectFrame(f) {
        const after = Number.isFinite(f.after_ms) && f.after_ms >= 0 ? f.after_ms : 0;
        this.#reconnectAt = Date.now() + after;
        this.emit('reconnect', f);
        // Leave at the time given (the gateway closes later, after its grace).
        this.#setNamed(
            'drain',
            () => {
                if (this.#state === State.OPEN) this.#drop(1000, 'gateway draining');
            },
            after,
        );
    }

    #onJoined(f) {
        const room = f.room ?? channelRoom(f.ch);
        const ch = f.ch ?? roomChannel(room);
        this.#rooms.add(room);
        this.#joinedNow.add(room);
        const members = new Map();
        for (const m of Array.isArray(f.members) ? f.members : []) {
            const k = memberKey(m);
            if (k) members.set(k.key, k.user);
        }
        // A join repeated on the same session is answered without members:
        // keep what presence events built.
        if (members.size > 0 || !this.#members.has(room)) this.#members.set(room, members);
        const last = this.#positions.get(ch);
        if (Number.isFinite(f.seq)) {
            if (last === undefined) this.#positions.advance(ch, f.seq);
            else if (last < f.seq && !this.#backfill.has(ch)) this.#startBackfill(ch, last, f.seq);
        }
        this.#resolveWaiter(this.#joinWaiters, room, f);
        this.emit('joined', f);
        this.emit('members', { room, members: this.members(room) });
    }

    #onEvent(ev) {
        const { ch, seq } = ev;
        if (typeof ch !== 'string' || !Number.isFinite(seq)) return;
        const buf = this.#backfill.get(ch);
        if (buf) {
            buf.push(ev);
            return;
        }
        this.#deliver(ev);
    }

    #deliver(ev) {
        if (!this.#positions.accept(ev.ch, ev.seq)) {
            this.#stats.duplicates += 1;
            this.emit('duplicate', { ch: ev.ch, seq: ev.seq });
            return;
        }
        if (this.#opts.autoAck && !this.#hasNamed('ack') && this.#state === State.OPEN) {
            this.#setNamed('ack', () => this.flushAcks(), this.#opts.ackDelayMs);
        }
        this.emit('event', ev);
        switch (ev.kind) {
            case 'message':
                this.emit('message', ev);
                break;
            case 'token': {
                const r = this.#replies.token(ev);
                if (r) this.emit('reply', r);
                break;
            }
            case 'reply': {
                const r = this.#replies.final(ev);
                if (r) this.emit('reply', r);
                break;
            }
            case 'presence':
                this.#onPresence(ev);
                break;
            case 'receipt':
                this.emit('receipt', ev);
                break;
            case 'busy':
                this.emit('busy', { ...ev, scope: 'agent' });
                break;
            default:
                break;
        }
    }

    #onPresence(ev) {
        const room = ev.room ?? channelRoom(ev.ch);
        if (!room) return;
        let members = this.#members.get(room);
        if (!members) {
            members = new Map();
            this.#members.set(room, members);
        }
        // One change, or several in order (`changes`, from a gateway that
        // coalesces the joins and leaves of a short interval): one
        // `presence` event per change, one `members` at the end.
        const changes = Array.isArray(ev.changes) ? ev.changes : [ev];
        for (const c of changes) {
            if (!c || typeof c.user !== 'string' || typeof c.action !== 'string') continue;
            const key = c.session ? `s:${c.session}` : `u:${c.user}`;
            if (c.action === 'join') {
                members.set(key, c.user);
            } else {
                members.delete(key);
                members.delete(`u:${c.user}`);
            }
            this.emit('presence', { room, action: c.action, user: c.user, session: c.session, members: this.members(room) });
        }
        this.emit('members', { room, members: this.members(room) });
    }

    // A room joined again in a new session after events were missed: hold
    // the live events of the channel, fetch the hole (after, upto] from
    // history page by page (bounded), deliver it, then the held events (the
    // duplicate filter drops any overlap).
    async #startBackfill(ch, after, upto) {
        const held = [];
        this.#backfill.set(ch, held);
        const found = new Map();
        let filled = false;
        try {
            let before = upto + 1;
            for (let page = 0; page < 20; page += 1) {
                const events = await this.history(ch, { before, limit: 100 });
                for (const e of events) if (e.seq > after && e.seq <= upto) found.set(e.seq, e);
                if (events.length === 0) break;
                const oldest = events[0].seq;
                if (oldest <= after + 1 || events.length < 100) {
                    filled = true;
                    break;
                }
                before = oldest;
            }
        } catch {
            /* reported as a gap below */
        }
        if (this.#backfill.get(ch) !== held) return; // disconnected meanwhile
        this.#backfill.delete(ch);
        const events = [...found.values()].sort((a, b) => a.seq - b.seq);
        if (!filled) {
            this.#stats.gaps += 1;
            const from = after + 1;
            const to = events.length ? events[0].seq - 1 : upto;
            if (to >= from) this.emit('gap', { type: 'gap', ch, from, to, local: true });
        }
        for (const e of events) {
            this.#stats.backfilled += 1;
            this.#deliver({ ch, ...e });
        }
        this.#positions.advance(ch, upto);
        for (const e of held) this.#deliver(e);
    }

    // ---- outbound ----

    #rawSend(obj) {
        const ws = this.#ws;
        if (!ws) return false;
        try {
            ws.send(JSON.stringify(obj));
            return true;
        } catch {
            return false;
        }
    }

    #sendFrame(obj) {
        if (this.#state !== State.OPEN) return false;
        return this.#rawSend(obj);
    }

    #flushSends() {
        if (this.#state !== State.OPEN) return;
        const wait = this.#pauseUntil - Date.now();
        if (wait > 0) {
            if (!this.#hasNamed('flush')) this.#setNamed('flush', () => this.#flushSends(), wait);
            return;
        }
        for (const p of this.#pending.values()) {
            if (p.state !== 'queued') continue;
            if (p.sentOnce) this.#stats.resent += 1;
            p.sentOnce = true;
            p.state = 'inflight';
            if (!this.#sendFrame(p.frame)) {
                p.state = 'queued';
                break;
            }
        }
    }

    // ---- request bookkeeping ----

    #waitFor(map, key, what) {
        return new Promise((resolve, reject) => {
            const w = { resolve, reject, timer: null };
            w.timer = this.#timeout(() => {
                const list = map.get(key);
                const i = list ? list.indexOf(w) : -1;
                if (i >= 0) list.splice(i, 1);
                if (list && list.length === 0) map.delete(key);
                reject(new SluiceError('timeout', `${what} ${key} timed out`));
            }, this.#opts.requestTimeoutMs);
            if (!map.has(key)) map.set(key, []);
            map.get(key).push(w);
        });
    }

    #resolveWaiter(map, key, value) {
        const list = map.get(key);
        if (!list || list.length === 0) return false;
        const w = list.shift();
        if (list.length === 0) map.delete(key);
        clearTimeout(w.timer);
        this.#timers.delete(w.timer);
        // Several joins of one room are all answered by one `joined`.
        if (map === this.#joinWaiters || map === this.#leaveWaiters) {
            for (const other of list) {
                clearTimeout(other.timer);
                this.#timers.delete(other.timer);
                other.resolve(value);
            }
            map.delete(key);
        }
        w.resolve(value);
        return true;
    }

    #rejectWaiters(map, key, err) {
        for (const w of map.get(key) ?? []) {
            clearTimeout(w.timer);
            this.#timers.delete(w.timer);
            w.reject(err);
        }
        map.delete(key);
    }

    // Requests that cannot survive a reconnect (history, ping) fail; joins
    // and leaves are sent again after the next welcome unless `all`.
    #failRequests(err, all) {
        for (const key of [...this.#historyWaiters.keys()]) this.#rejectWaiters(this.#historyWaiters, key, err);
        for (const w of this.#pingWaiters.splice(0)) {
            clearTimeout(w.timer);
            this.#timers.delete(w.timer);
            w.reject(err);
        }
        if (all) {
            for (const key of [...this.#joinWaiters.keys()]) this.#rejectWaiters(this.#joinWaiters, key, err);
            for (const key of [...this.#leaveWaiters.keys()]) this.#rejectWaiters(this.#leaveWaiters, key, err);
        }
    }

    // ---- timers ----

    #timeout(fn, ms) {
        const t = setTimeout(() => {
            this.#timers.delete(t);
            fn();
        }, ms);
        this.#timers.add(t);
        return t;
    }

    // Named timers: at most one of each kind runs at a time.
    #setNamed(name, fn, ms) {
        this.#clearTimer(name);
        const t = this.#timeout(() => {
            if (this.#named.get(name) === t) this.#named.delete(name);
            fn();
        }, ms);
        this.#named.set(name, t);
    }

    #hasNamed(name) {
        return this.#named.has(name);
    }

    #clearTimer(name) {
        const t = this.#named.get(name);
        if (t) {
            clearTimeout(t);
            this.#timers.delete(t);
            this.#named.delete(name);
        }
    }

    #clearTimers() {
        for (const t of this.#timers) clearTimeout(t);
        this.#timers.clear();
        this.#named.clear();
    }
}

export default SluiceClient;
