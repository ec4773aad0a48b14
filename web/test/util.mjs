// Helpers shared by the web test suites: condition waits with timeouts, and
// a scriptable fake gateway (a `ws` server on 127.0.0.1) for the client's
// logic tests. The suites that prove the product run against the real
// gateway (stack.mjs); the fake only drives corner cases on demand.

import { once } from 'node:events';
import { WebSocketServer } from 'ws';

/**
 * Resolves with the first truthy value of `cond()` (sync or async), checked
 * every `intervalMs`; rejects after `timeoutMs` with `what` in the message.
 */
export async function until(cond, { timeoutMs = 5000, intervalMs = 10, what = 'condition' } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (let i = 0; ; i += 1) {
        try {
            last = await cond();
        } catch (err) {
            last = undefined;
            if (Date.now() >= deadline) throw err;
        }
        if (last) return last;
        if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await new Promise((r) => setTimeout(r, intervalMs));
        if (i > 1e6) throw new Error('until: loop bound');
    }
}

/** Resolves with the next `name` event of `emitter` (client.on style), or rejects after timeoutMs. */
export function nextEvent(emitter, name, { timeoutMs = 5000, filter = () => true } = {}) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            off();
            reject(new Error(`timed out after ${timeoutMs} ms waiting for event ${name}`));
        }, timeoutMs);
        const off = emitter.on(name, (payload) => {
            if (!filter(payload)) return;
            clearTimeout(timer);
            off();
            resolve(payload);
        });
    });
}

/** One connection to the fake gateway: the frames it received, and ways to answer. */
export class FakeConn {
    constructor(ws, index) {
        this.ws = ws;
        this.index = index;
        this.frames = [];
        this.closed = false;
        this.closeCode = null;
        this.cursor = 0;
        ws.on('message', (data, isBinary) => {
            const text = isBinary ? '<binary>' : data.toString();
            let f;
            try {
                f = JSON.parse(text);
            } catch {
                f = { type: '<invalid>', text };
            }
            f.receivedAt = Date.now();
            this.frames.push(f);
        });
        ws.on('close', (code) => {
            this.closed = true;
            this.closeCode = code;
        });
    }

    /** Waits for the next received frame (after the previous next()) that matches `pred`. */
    async next(pred = () => true, { timeoutMs = 3000, what = 'a frame' } = {}) {
        return until(
            () => {
                for (let i = this.cursor; i < this.frames.length; i += 1) {
                    if (pred(this.frames[i])) {
                        this.cursor = i + 1;
                        return this.frames[i];
                    }
                }
                return null;
            },
            { timeoutMs, what: `${what} on fake connection ${this.index}` },
        );
    }

    /** Frames received of the given type. */
    ofType(type) {
        return this.frames.filter((f) => f.type === type);
    }

    send(obj) {
        this.ws.send(JSON.stringify(obj));
    }

    /** Answers the hello: a welcome for `session` (resumed as told). */
    welcome({ session = 'sess-1', resumed = false, heartbeat_ms = 25000 } = {}) {
        this.send({
            type: 'welcome',
            session,
            resume_token: `rt-${session}`,
            heartbeat_ms,
            resumed,
            limits: { max_frame: 65536, rate: 20, burst: 40 },
        });
    }

    /** Drops the TCP connection without a close handshake (as a SIGKILLed gateway does). */
    kill() {
        this.ws.terminate();
    }

    close(code, reason) {
        this.ws.close(code, reason);
    }
}

/** Starts a fake gateway on 127.0.0.1 with a free port; `conns` fills as clients connect. */
export async function fakeGateway() {
    const wss = new WebSocketServer({
        host: '127.0.0.1',
        port: 0,
        path: '/v1/ws',
        handleProtocols: (protocols) => (protocols.has('sluice.v1') ? 'sluice.v1' : false),
    });
    await once(wss, 'listening');
    const conns = [];
    wss.on('connection', (ws) => conns.push(new FakeConn(ws, conns.length)));
    return {
        url: `ws://127.0.0.1:${wss.address().port}/v1/ws`,
        conns,
        /** Waits for connection number `index` (0-based). */
        conn(index, { timeoutMs = 5000 } = {}) {
            return until(() => conns[index], { timeoutMs, what: `fake connection ${index}` });
        },
        async close() {
            for (const c of conns) c.ws.terminate();
            await new Promise((resolve) => wss.close(resolve));
        },
    };
}
