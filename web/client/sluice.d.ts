// Type declarations of the Sluice JavaScript client (sluice.js), protocol sluice.v1.

export declare const PROTOCOL: 'sluice.v1';
export declare const BACKOFF_BASE_MS: 500;
export declare const BACKOFF_CAP_MS: 20000;

export declare const State: {
    readonly IDLE: 'idle';
    readonly CONNECTING: 'connecting';
    readonly OPEN: 'open';
    readonly RECONNECTING: 'reconnecting';
    readonly CLOSED: 'closed';
};
export type ConnectionState = (typeof State)[keyof typeof State];

export interface BackoffOptions {
    /** First ceiling of the delay in ms (default 500). */
    baseMs?: number;
    /** Largest ceiling in ms (default 20000). */
    capMs?: number;
    /** Source of randomness in [0, 1) (default Math.random). */
    random?: () => number;
}

/** Delay before reconnect attempt `attempt` (0-based): uniform in [0, min(cap, base * 2^attempt)). */
export declare function backoffDelay(attempt: number, options?: BackoffOptions): number;
export declare function isValidId(id: unknown): id is string;
export declare function isValidRoom(name: unknown): name is string;
export declare function roomChannel(room: string): `r:${string}`;
export declare function channelRoom(ch: string): string | null;

/** `s` (the session's private channel) or `r:<room>`. */
export type Channel = 's' | `r:${string}`;

/** `server: true`: posted by the application's backend through the server API (as `user`). */
export type From = { user: string; server?: true } | { agent: string };

interface EventBase {
    type: 'event';
    ch: Channel;
    seq: number;
}

export interface MessageEvent extends EventBase {
    kind: 'message';
    id: string;
    event: string;
    from: From;
    text: string;
    /** Milliseconds since the Unix epoch. */
    ts: number;
}

export interface TokenEvent extends EventBase {
    kind: 'token';
    reply: string;
    to: string;
    agent: string;
    attempt: number;
    text: string;
}

export interface ReplyEvent extends EventBase {
    kind: 'reply';
    reply: string;
    to: string;
    agent: string;
    /** The delivery attempt that produced this reply (1 on the first). */
    attempt: number;
    text: string;
    final: true;
    degraded?: boolean;
    partial?: boolean;
    cancelled?: boolean;
    /** Tokens this answer used (every final reply of a current server carries it). */
    usage?: Usage;
}

/** Tokens of one model call. `estimated`: counted by the worker, not reported by the model. */
export interface Usage {
    input_tokens: number;
    output_tokens: number;
    estimated?: boolean;
}

export interface PresenceChange {
    action: 'join' | 'leave' | 'disconnect';
    user: string;
    session: string;
}

/** One change (action, user, session), or several in order (changes). */
export interface PresenceEvent extends EventBase {
    kind: 'presence';
    action?: 'join' | 'leave' | 'disconnect';
    user?: string;
    session?: string;
    changes?: PresenceChange[];
}

export interface ReceiptEvent extends EventBase {
    kind: 'receipt';
    to: string;
    user: string;
    state: 'delivered';
}

export interface AgentBusyEvent extends EventBase {
    kind: 'busy';
    to: string;
    /** Absent when the refusal is not about one agent. */
    agent?: string;
    reason: string;
    retry_after_ms: number;
}

export type SluiceEvent = MessageEvent | TokenEvent | ReplyEvent | PresenceEvent | ReceiptEvent | AgentBusyEvent;

export interface Limits {
    max_frame: number;
    rate: number;
    burst: number;
}

export interface Welcome {
    type: 'welcome';
    session: string;
    resume_token: string;
    heartbeat_ms: number;
    /** True only when the session asked for was resumed. */
    resumed: boolean;
    limits?: Limits;
}

export interface Accepted {
    type: 'accepted';
    id: string;
    event: string;
    duplicate: boolean;
}

export type BusyReason = 'rate_limited' | 'tenant_queue_full' | 'overloaded' | 'draining' | (string & {});

/**
 * A `busy` frame (scope 'send': the message was not taken and will be resent; 'cancel' and
 * 'request': a cancel or a join/leave that the client sends again) or a `busy` event (scope 'agent').
 */
export type BusyNotice =
    | { type: 'busy'; scope: 'send' | 'cancel' | 'request'; id?: string; reason: BusyReason; retry_after_ms: number }
    | (AgentBusyEvent & { scope: 'agent' });

export type Member = string | { user: string; session?: string };

export interface Joined {
    type: 'joined';
    room: string;
    ch: `r:${string}`;
    seq: number;
    members: Member[];
    /** True when the member list was cut (at most 100 are listed). */
    members_truncated?: boolean;
}

export interface Left {
    type: 'left';
    room: string;
    ch: `r:${string}`;
}

export interface Gap {
    type: 'gap';
    ch: Channel;
    from: number;
    to: number;
    /** True when the client itself could not fill a hole (history failed), not the gateway. */
    local?: boolean;
}

export interface ReconnectFrame {
    type: 'reconnect';
    after_ms: number;
}

export interface ErrorFrame {
    type: 'error';
    code: 'bad_frame' | 'unauthorized' | 'forbidden' | 'too_large' | 'unknown_type' | 'bad_id' | 'not_joined' | 'internal' | (string & {});
    message?: string;
    id?: string;
}

/** An assembled reply: the text so far (or the whole answer when `final`). */
export interface ReplyState {
    reply: string;
    to: string;
    agent: string;
    ch: Channel;
    attempt: number;
    text: string;
    final: boolean;
    /** True on the update where a new attempt replaced the earlier partial text. */
    restarted: boolean;
    cancelled?: boolean;
    degraded?: boolean;
    partial?: boolean;
    /** On the final update, when the reply event carried it. */
    usage?: Usage;
}

export interface StateChange {
    state: ConnectionState;
    previous: ConnectionState;
    attempt?: number;
    delayMs?: number;
    code?: number;
    reason?: string;
    resumed?: boolean;
    session?: string | null;
}

export interface ClientStats {
    duplicates: number;
    reconnects: number;
    resumes: number;
    resent: number;
    gaps: number;
    backfilled: number;
}

export interface ClientEvents {
    state: StateChange;
    welcome: Welcome;
    disconnected: { code: number; reason: string; willReconnect: boolean };
    event: SluiceEvent;
    message: MessageEvent;
    reply: ReplyState;
    presence: { room: string; action: PresenceEvent['action']; user: string; session: string; members: string[] };
    members: { room: string; members: string[] };
    receipt: ReceiptEvent;
    busy: BusyNotice;
    accepted: Accepted;
    joined: Joined;
    left: Left;
    history: { type: 'history'; ch: Channel; events: SluiceEvent[] };
    gap: Gap;
    reconnect: ReconnectFrame;
    duplicate: { ch: Channel; seq: number };
    error: SluiceError;
}

export declare class Emitter<E extends object = Record<string, unknown>> {
    on<K extends keyof E>(type: K, fn: (payload: E[K]) => void): () => void;
    once<K extends keyof E>(type: K, fn: (payload: E[K]) => void): () => void;
    off<K extends keyof E>(type: K, fn: (payload: E[K]) => void): void;
    emit<K extends keyof E>(type: K, payload: E[K]): void;
}

export declare class Positions {
    get(ch: string): number | undefined;
    has(ch: string): boolean;
    accept(ch: string, seq: number): boolean;
    advance(ch: string, seq: number): void;
    delete(ch: string): void;
    entries(): Array<[string, number]>;
    toJSON(): Record<string, number>;
}

export declare class ReplyAssembler {
    constructor(options?: { keepFinished?: number });
    get(id: string): ReplyState | undefined;
    active(): ReplyState[];
    token(ev: Omit<TokenEvent, 'type' | 'seq' | 'kind'> & Partial<TokenEvent>): ReplyState | null;
    final(ev: Omit<ReplyEvent, 'type' | 'seq' | 'kind' | 'final'> & Partial<ReplyEvent>): ReplyState | null;
}

export declare class SluiceError extends Error {
    constructor(code: string, message?: string, frame?: unknown);
    /** A protocol error code, or: closed, disconnected, disconnected_by_server (close 4403), timeout, not_connected, unauthorized, bad_option, token, connect. */
    code: string;
    frame?: ErrorFrame;
}

/** The subset of the WebSocket API the client uses (browsers' WebSocket, or the `ws` package's). */
export interface WebSocketLike {
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: { data: unknown }) => void) | null;
    onerror: ((ev: unknown) => void) | null;
    onclose: ((ev: { code: number; reason: string }) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
    /** ws(s)://host:port/v1/ws; defaults to /v1/ws on the page's host. */
    url?: string;
    /** The JWT, or a function returning one, called before every connection (`refused` after a 4401 on its last token). */
    token: string | ((info: { refused: boolean }) => string | Promise<string>);
    /** WebSocket constructor; defaults to globalThis.WebSocket. */
    WebSocket?: WebSocketConstructor | (new (...args: any[]) => any);
    backoff?: { baseMs?: number; capMs?: number };
    random?: () => number;
    /** Send `ack` for delivered events (default true). */
    autoAck?: boolean;
    ackDelayMs?: number;
    requestTimeoutMs?: number;
    helloTimeoutMs?: number;
    /** Send `join` again after a resume (default false). */
    rejoinOnResume?: boolean;
    /** How many finished replies are remembered to ignore late events (default 1000). */
    keepFinished?: number;
}

export interface SendHandle {
    id: string;
    /** Resolves once the gateway stored the message, across reconnects and busy retries. */
    accepted: Promise<Accepted>;
}

export declare class SluiceClient extends Emitter<ClientEvents> {
    constructor(options: ClientOptions);
    readonly state: ConnectionState;
    readonly session: string | null;
    readonly limits: Limits | null;
    readonly positions: Record<string, number>;
    readonly rooms: string[];
    readonly stats: ClientStats;
    readonly unaccepted: string[];
    readonly activeReplies: ReplyState[];
    reply(id: string): ReplyState | undefined;
    members(room: string): string[];
    connect(): Promise<Welcome>;
    close(code?: number, reason?: string): void;
    send(text: string, options?: { room?: string | null; id?: string }): SendHandle;
    nextId(): string;
    join(room: string): Promise<Joined>;
    leave(room: string): Promise<Left>;
    cancel(id: string): void;
    history(ch: Channel, options?: { before?: number; limit?: number }): Promise<SluiceEvent[]>;
    ping(): Promise<number>;
    flushAcks(): void;
}

export default SluiceClient;
