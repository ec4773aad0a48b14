// The client's own logic, driven against a scriptable fake gateway so that
// each corner case (lost accepts, busy, drain, refused resume, stale
// attempts, holes after a rejoin) happens exactly when the test wants it.
// The product-level suites (client-live, browser) use the real gateway.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import WebSocket from 'ws';
import {
    BACKOFF_BASE_MS,
    BACKOFF_CAP_MS,
    Positions,
    ReplyAssembler,
    SluiceClient,
    backoffDelay,
    isValidId,
} from '../client/sluice.js';
import { fakeGateway, nextEvent, until } from './util.mjs';

const clients = [];
function makeClient(url, opts = {}) {
    const c = new SluiceClient({ url, token: 'tok-1', WebSocket, backoff: { baseMs: 20, capMs: 200 }, ...opts });
    clients.push(c);
    return c;
}
after(() => {
    for (const c of clients) c.close();
});

async function withGateway(fn) {
    const gw = await fakeGateway();
    try {
        await fn(gw);
    } finally {
        for (const c of clients.splice(0)) c.close();
        await gw.close();
    }
}

describe('backoff', () => {
    test('full jitter under min(cap, base * 2^attempt), from 500 ms up to 20 s', { timeout: 20000 }, () => {
        assert.equal(BACKOFF_BASE_MS, 500);
        assert.equal(BACKOFF_CAP_MS, 20000);
        const top = () => 0.999999;
        const expected = [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000];
        expected.forEach((ceiling, attempt) => {
            const d = backoffDelay(attempt, { random: top });
            assert.ok(d < ceiling && d >= ceiling - 1, `attempt ${attempt}: ${d} vs ceiling ${ceiling}`);
            assert.equal(backoffDelay(attempt, { random: () => 0 }), 0);
        });
        assert.equal(backoffDelay(1000, { random: top }), 19999);
    });

    test('delays spread over the whole range (not a fixed ladder)', { timeout: 20000 }, () => {
        const samples = Array.from({ length: 2000 }, () => backoffDelay(3));
        assert.ok(samples.every((d) => d >= 0 && d < 4000));
        const low = samples.filter((d) => d < 1000).length;
        const high = samples.filter((d) => d >= 3000).length;
        // Uniform on [0, 4000): each quarter holds ~500 of 2000.
        assert.ok(low > 350 && low < 650, `low quarter ${low}`);
        assert.ok(high > 350 && high < 650, `high quarter ${high}`);
    });
});

describe('pure pieces', () => {
    test('Positions drops duplicate and older (ch, seq), per channel', { timeout: 20000 }, () => {
        const p = new Positions();
        assert.equal(p.accept('r:a', 5), true);
        assert.equal(p.accept('r:a', 5), false);
        assert.equal(p.accept('r:a', 3), false);
        assert.equal(p.accept('r:b', 3), true);
        assert.equal(p.accept('r:a', 90), true);
        p.advance('r:a', 10);
        assert.deepEqual(p.toJSON(), { 'r:a': 90, 'r:b': 3 });
    });

    test('ReplyAssembler: tokens join, a new attempt replaces, stale attempts and late events are dropped', { timeout: 20000 }, () => {
        const a = new ReplyAssembler();
        const base = { reply: 'r1', to: 'c-1', agent: 'assistant', ch: 'r:lobby' };
        assert.equal(a.token({ ...base, attempt: 1, text: 'hel' }).text, 'hel');
        assert.equal(a.token({ ...base, attempt: 1, text: 'lo' }).text, 'hello');
        const restarted = a.token({ ...base, attempt: 2, text: 'Hi' });
        assert.equal(restarted.text, 'Hi');
        assert.equal(restarted.restarted, true);
        assert.equal(a.token({ ...base, attempt: 1, text: ' stale' }), null);
        assert.equal(a.token({ ...base, attempt: 2, text: ' there' }).text, 'Hi there');
        assert.equal(a.active().length, 1);
        const fin = a.final({ ...base, text: 'Hi there!', final: true });
        assert.equal(fin.text, 'Hi there!');
        assert.equal(fin.final, true);
        assert.equal(a.final({ ...base, text: 'again', final: true }), null);
        assert.equal(a.token({ ...base, attempt: 3, text: 'late' }), null);
        assert.equal(a.active().length, 0);
        assert.equal(a.get('r1').text, 'Hi there!');
        assert.equal(fin.usage, undefined);
        const used = a.final({ ...base, reply: 'r2', text: 'ok', final: true,
                               usage: { input_tokens: 7, output_tokens: 1, estimated: true } });
        assert.deepEqual(used.usage, { input_tokens: 7, output_tokens: 1, estimated: true });
    });

    test('generated ids are valid protocol ids and unique', { timeout: 20000 }, () => {
        const c = new SluiceClient({ url: 'ws://127.0.0.1:1/v1/ws', token: 't', WebSocket });
        const ids = new Set(Array.from({ length: 500 }, () => c.nextId()));
        assert.equal(ids.size, 500);
        for (const id of ids) assert.ok(isValidId(id), id);
        assert.throws(() => c.send('x', { id: 'bad id' }), /bad message id/);
        assert.throws(() => c.send('x', { room: 'a.b' }), /bad room/);
    });
});

describe('client against a fake gateway', () => {
    test('hello first, welcome opens, duplicate (ch, seq) are dropped, acks follow', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url, { ackDelayMs: 10 });
            const seen = [];
            client.on('event', (e) => seen.push(`${e.ch}#${e.seq}`));
            const welcomed = client.connect();
            const conn = await gw.conn(0);
            const hello = await conn.next();
            assert.deepEqual(hello.type, 'hello');
            assert.equal(hello.token, 'tok-1');
            assert.equal(hello.resume, undefined);
            conn.welcome();
            const w = await welcomed;
            assert.equal(w.session, 'sess-1');
            assert.equal(client.state, 'open');
            for (const seq of [5, 5, 3, 6, 6, 9]) {
                conn.send({ type: 'event', ch: 'r:lobby', seq, kind: 'message', id: `m${seq}`, from: { user: 'u' }, text: 't' });
            }
            conn.send({ type: 'event', ch: 's', seq: 2, kind: 'receipt', to: 'm5', user: 'u2', state: 'delivered' });
            await until(() => seen.length === 4, { what: 'four distinct events' });
            const ack = await conn.next((f) => f.type === 'ack' && f.ch === 'r:lobby' && f.seq === 9, { what: 'ack r:lobby 9' });
            assert.ok(ack);
            assert.deepEqual(seen, ['r:lobby#5', 'r:lobby#6', 'r:lobby#9', 's#2']);
            assert.equal(client.stats.duplicates, 3);
        });
    });

    test('after a dropped connection: resume with positions, resend only unaccepted sends with the same id and prev', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url, { autoAck: false });
            client.connect();
            const c0 = await gw.conn(0);
            await c0.next((f) => f.type === 'hello');
            c0.welcome({ session: 'S1' });
            await until(() => client.state === 'open');
            const a = client.send('first', { room: 'lobby' });
            const b = client.send('second', { room: 'lobby' });
            const s1 = await c0.next((f) => f.type === 'send' && f.id === a.id);
            const s2 = await c0.next((f) => f.type === 'send' && f.id === b.id);
            assert.equal(s1.prev, undefined);
            assert.equal(s2.prev, a.id);
            c0.send({ type: 'accepted', id: a.id, event: 'E1', duplicate: false });
            c0.send({ type: 'event', ch: 'r:lobby', seq: 41, kind: 'message', id: a.id, from: { user: 'me' }, text: 'first' });
            assert.equal((await a.accepted).event, 'E1');
            await until(() => client.positions['r:lobby'] === 41);
            c0.kill();

            const c1 = await gw.conn(1, { timeoutMs: 3000 });
            const hello = await c1.next((f) => f.type === 'hello');
            assert.deepEqual(hello.resume, { session: 'S1', resume_token: 'rt-S1', positions: { 'r:lobby': 41 } });
            // Nothing is sent before the welcome.
            assert.equal(c1.frames.length, 1);
            c1.welcome({ session: 'S1', resumed: true });
            const again = await c1.next((f) => f.type === 'send');
            assert.equal(again.id, b.id);
            assert.equal(again.prev, a.id);
            assert.equal(again.text, 'second');
            c1.send({ type: 'accepted', id: b.id, event: 'E2', duplicate: true });
            assert.equal((await b.accepted).duplicate, true);
            assert.equal(c1.ofType('send').length, 1, 'the accepted send is not resent');
            assert.deepEqual(client.unaccepted, []);
            assert.equal(client.stats.resumes, 1);
            assert.equal(client.stats.resent, 1);
        });
    });

    test('a gap frame is followed by the event it names in `to`, which is delivered', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url, { autoAck: false });
            const seen = [];
            const gaps = [];
            client.on('event', (e) => seen.push(`${e.ch}#${e.seq}`));
            client.on('gap', (g) => gaps.push(g));
            client.connect();
            const conn = await gw.conn(0);
            await conn.next((f) => f.type === 'hello');
            conn.welcome();
            await until(() => client.state === 'open');
            conn.send({ type: 'event', ch: 'r:lobby', seq: 10, kind: 'message', id: 'm10', from: { user: 'u' }, text: 't' });
            conn.send({ type: 'gap', ch: 'r:lobby', from: 10, to: 350 });
            conn.send({ type: 'event', ch: 'r:lobby', seq: 350, kind: 'message', id: 'm350', from: { user: 'u' }, text: 't' });
            conn.send({ type: 'event', ch: 'r:lobby', seq: 351, kind: 'message', id: 'm351', from: { user: 'u' }, text: 't' });
            await until(() => seen.length === 3, { what: 'three events' });
            assert.deepEqual(seen, ['r:lobby#10', 'r:lobby#350', 'r:lobby#351']);
            assert.equal(gaps.length, 1);
            assert.equal(client.stats.duplicates, 0);
        });
    });

    test('busy: the same id is sent again only after retry_after_ms', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url);
            client.connect();
            const conn = await gw.conn(0);
            await conn.next((f) => f.type === 'hello');
            conn.welcome();
            await until(() => client.state === 'open');
            const busy = nextEvent(client, 'busy');
            const h = client.send('hello', { room: 'lobby' });
            const first = await conn.next((f) => f.type === 'send');
            const busyAt = Date.now();
            conn.send({ type: 'busy', id: h.id, reason: 'rate_limited', retry_after_ms: 300 });
            assert.equal((await busy).reason, 'rate_limited');
            // A send made during the pause waits too, and keeps its order.
            const h2 = client.send('later', { room: 'lobby' });
            const retry = await conn.next((f) => f.type === 'send', { timeoutMs: 3000 });
            assert.equal(retry.id, first.id);
            assert.ok(retry.receivedAt - busyAt >= 280, `resent after ${retry.receivedAt - busyAt} ms`);
            const next = await conn.next((f) => f.type === 'send');
            assert.equal(next.id, h2.id);
            assert.equal(next.prev, h.id);
            conn.send({ type: 'accepted', id: h.id, event: 'E1', duplicate: false });
            conn.send({ type: 'accepted', id: h2.id, event: 'E2', duplicate: false });
            await Promise.all([h.accepted, h2.accepted]);
        });
    });

    test('busy for a join or a cancel: the client sends it again after retry_after_ms', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url);
            const scopes = [];
            client.on('busy', (b) => scopes.push(b.scope));
            client.connect();
            const conn = await gw.conn(0);
            await conn.next((f) => f.type === 'hello');
            conn.welcome();
            await until(() => client.state === 'open');
            const joined = client.join('lobby');
            await conn.next((f) => f.type === 'join');
            const t0 = Date.now();
            conn.send({ type: 'busy', reason: 'rate_limited', retry_after_ms: 200 });
            const again = await conn.next((f) => f.type === 'join', { what: 'join sent again' });
            assert.ok(again.receivedAt - t0 >= 180, `join again after ${again.receivedAt - t0} ms`);
            conn.send({ type: 'joined', room: 'lobby', ch: 'r:lobby', seq: 1, members: [] });
            await joined;
            client.cancel('c-9');
            await conn.next((f) => f.type === 'cancel');
            const t1 = Date.now();
            conn.send({ type: 'busy', id: 'c-9', reason: 'rate_limited', retry_after_ms: 150 });
            const cancel2 = await conn.next((f) => f.type === 'cancel', { what: 'cancel sent again' });
            assert.equal(cancel2.id, 'c-9');
            assert.ok(cancel2.receivedAt - t1 >= 130);
            assert.deepEqual(scopes, ['request', 'cancel']);
            assert.equal(conn.ofType('send').length, 0, 'nothing taken for a send');
        });
    });

    test('reconnect.after_ms: the client leaves at that time and resumes on a new connection', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url, { backoff: { baseMs: 5000, capMs: 5000 } });
            client.connect();
            const c0 = await gw.conn(0);
            await c0.next((f) => f.type === 'hello');
            c0.welcome({ session: 'S9' });
            await until(() => client.state === 'open');
            const told = Date.now();
            c0.send({ type: 'reconnect', after_ms: 250 });
            const c1 = await gw.conn(1, { timeoutMs: 3000 });
            const hello = await c1.next((f) => f.type === 'hello');
            const waited = hello.receivedAt - told;
            assert.ok(waited >= 230 && waited < 2500, `reconnected after ${waited} ms`);
            assert.equal(hello.resume.session, 'S9');
            await until(() => c0.closed, { what: 'old connection closed by the client' });
        });
    });

    test('a resume_token frame replaces the token the next resume sends', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url);
            client.connect();
            const c0 = await gw.conn(0);
            await c0.next((f) => f.type === 'hello');
            c0.welcome({ session: 'S7' });
            await until(() => client.state === 'open');
            c0.send({ type: 'resume_token', resume_token: 'RT-fresh' });
            const pinged = client.ping();
            await c0.next((f) => f.type === 'ping');
            c0.send({ type: 'pong' });
            await pinged; // the resume_token frame, sent before, has been read
            c0.kill();
            const c1 = await gw.conn(1);
            const h1 = await c1.next((f) => f.type === 'hello');
            assert.equal(h1.resume.session, 'S7');
            assert.equal(h1.resume.resume_token, 'RT-fresh');
        });
    });

    test('a refused resume (4401) falls back to a new session and joins the rooms again', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url);
            client.connect();
            const c0 = await gw.conn(0);
            await c0.next((f) => f.type === 'hello');
            c0.welcome({ session: 'OLD' });
            await until(() => client.state === 'open');
            const joined = client.join('lobby');
            await c0.next((f) => f.type === 'join' && f.room === 'lobby');
            c0.send({ type: 'joined', room: 'lobby', ch: 'r:lobby', seq: 7, members: [{ user: 'me', session: 'OLD' }] });
            await joined;
            c0.kill();
            const c1 = await gw.conn(1);
            const h1 = await c1.next((f) => f.type === 'hello');
            assert.equal(h1.resume.session, 'OLD');
            c1.close(4401, 'bad resume token');
            const c2 = await gw.conn(2);
            const h2 = await c2.next((f) => f.type === 'hello');
            assert.equal(h2.resume, undefined, 'fresh hello after a refused resume');
            c2.welcome({ session: 'NEW', resumed: false });
            const rejoin = await c2.next((f) => f.type === 'join');
            assert.equal(rejoin.room, 'lobby');
            assert.equal(client.session, 'NEW');
        });
    });

    test('a refused token with a fixed token closes the client for good', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url);
            const errors = [];
            client.on('error', (e) => errors.push(e.code));
            const p = client.connect();
            const c0 = await gw.conn(0);
            await c0.next((f) => f.type === 'hello');
            c0.close(4401, 'bad token');
            await assert.rejects(p, (e) => e.code === 'unauthorized');
            assert.equal(client.state, 'closed');
            assert.deepEqual(errors, ['unauthorized']);
            assert.throws(() => client.send('x'), /closed/);
        });
    });

    test('a close with 4403 (disconnected by the application) closes the client for good, even with a token function', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            let asked = 0;
            const client = makeClient(gw.url, {
                token: async () => {
                    asked += 1;
                    return 'tok-1';
                },
            });
            const errors = [];
            const disconnects = [];
            client.on('error', (e) => errors.push(e.code));
            client.on('disconnected', (d) => disconnects.push(d));
            client.connect();
            const c0 = await gw.conn(0);
            await c0.next((f) => f.type === 'hello');
            c0.welcome();
            await until(() => client.state === 'open');
            const h = client.send('never accepted', { room: 'lobby' });
            await c0.next((f) => f.type === 'send');
            c0.close(4403, 'disconnected by the application');
            await assert.rejects(h.accepted, (e) => e.code === 'disconnected_by_server');
            assert.equal(client.state, 'closed');
            assert.deepEqual(errors, ['disconnected_by_server']);
            assert.equal(disconnects.length, 1);
            assert.equal(disconnects[0].code, 4403);
            assert.equal(disconnects[0].willReconnect, false);
            // Closed, not reconnecting: no reconnect timer, no second connection, no token asked.
            assert.equal(gw.conns.length, 1);
            assert.equal(asked, 1, 'no token asked for a reconnect');
            assert.throws(() => client.send('x'), /closed/);
        });
    });

    test('a token function is asked again before each connection', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            let n = 0;
            const asked = [];
            const client = makeClient(gw.url, {
                token: async (info) => {
                    asked.push(info.refused);
                    return `tok-${++n}`;
                },
            });
            client.connect();
            const c0 = await gw.conn(0);
            assert.equal((await c0.next((f) => f.type === 'hello')).token, 'tok-1');
            c0.close(4401, 'expired');
            const c1 = await gw.conn(1);
            assert.equal((await c1.next((f) => f.type === 'hello')).token, 'tok-2');
            c1.welcome();
            await until(() => client.state === 'open');
            c1.kill();
            const c2 = await gw.conn(2);
            assert.equal((await c2.next((f) => f.type === 'hello')).token, 'tok-3');
            assert.deepEqual(asked, [false, true, false], 'told when its last token was refused');
        });
    });

    test('rejoin in a new session: the hole is filled from history, in order, exactly once', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url);
            const seen = [];
            client.on('event', (e) => seen.push(e.seq));
            client.connect();
            const c0 = await gw.conn(0);
            await c0.next((f) => f.type === 'hello');
            c0.welcome({ session: 'A' });
            await until(() => client.state === 'open');
            const j = client.join('lobby');
            await c0.next((f) => f.type === 'join');
            c0.send({ type: 'joined', room: 'lobby', ch: 'r:lobby', seq: 10, members: [] });
            await j;
            const ev = (seq) => ({ type: 'event', ch: 'r:lobby', seq, kind: 'message', id: `m${seq}`, from: { user: 'x' }, text: `t${seq}` });
            c0.send(ev(11));
            c0.send(ev(12));
            await until(() => seen.length === 2);
            c0.kill();
            const c1 = await gw.conn(1);
            await c1.next((f) => f.type === 'hello');
            c1.welcome({ session: 'B', resumed: false });
            await c1.next((f) => f.type === 'join' && f.room === 'lobby');
            c1.send({ type: 'joined', room: 'lobby', ch: 'r:lobby', seq: 15, members: [] });
            c1.send(ev(16)); // live, before the hole is filled: must wait
            const h = await c1.next((f) => f.type === 'history');
            assert.equal(h.ch, 'r:lobby');
            assert.equal(h.before, 16);
            assert.equal(seen.length, 2, 'live event held until the hole is filled');
            c1.send({ type: 'history', ch: 'r:lobby', events: [ev(12), ev(13), ev(14), ev(15)] });
            await until(() => seen.length === 6, { what: 'backfilled and held events' });
            assert.deepEqual(seen, [11, 12, 13, 14, 15, 16]);
            assert.equal(client.stats.backfilled, 3);
        });
    });

    test('replies stream through the client; an attempt change replaces the partial text; cancel is sent', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url);
            const updates = [];
            client.on('reply', (r) => updates.push(r));
            client.connect();
            const conn = await gw.conn(0);
            await conn.next((f) => f.type === 'hello');
            conn.welcome();
            await until(() => client.state === 'open');
            let seq = 100;
            const tok = (attempt, text) => ({ type: 'event', ch: 's', seq: ++seq, kind: 'token', reply: 'R', to: 'c-1', agent: 'assistant', attempt, text });
            conn.send(tok(1, 'one '));
            conn.send(tok(1, 'two '));
            conn.send(tok(2, 'uno '));
            conn.send(tok(1, 'stale '));
            conn.send(tok(2, 'dos'));
            await until(() => updates.length === 4);
            assert.deepEqual(
                updates.map((u) => u.text),
                ['one ', 'one two ', 'uno ', 'uno dos'],
            );
            assert.equal(updates[2].restarted, true);
            client.cancel('c-1');
            assert.deepEqual(await conn.next((f) => f.type === 'cancel'), { type: 'cancel', id: 'c-1', receivedAt: conn.frames.at(-1).receivedAt });
            conn.send({ type: 'event', ch: 's', seq: ++seq, kind: 'reply', reply: 'R', to: 'c-1', agent: 'assistant', text: 'uno dos', final: true, cancelled: true });
            await until(() => updates.length === 5);
            assert.equal(updates[4].final, true);
            assert.equal(updates[4].cancelled, true);
            assert.deepEqual(client.activeReplies, []);
        });
    });

    test('presence, history and ping answers reach the right callers', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url);
            client.connect();
            const conn = await gw.conn(0);
            await conn.next((f) => f.type === 'hello');
            conn.welcome();
            await until(() => client.state === 'open');
            const j = client.join('lobby');
            await conn.next((f) => f.type === 'join');
            conn.send({ type: 'joined', room: 'lobby', ch: 'r:lobby', seq: 3, members: [{ user: 'ann', session: 's1' }, 'bob'] });
            assert.equal((await j).seq, 3);
            assert.deepEqual(client.members('lobby'), ['ann', 'bob']);
            conn.send({ type: 'event', ch: 'r:lobby', seq: 4, kind: 'presence', action: 'join', user: 'cy', session: 's3' });
            conn.send({ type: 'event', ch: 'r:lobby', seq: 5, kind: 'presence', action: 'disconnect', user: 'ann', session: 's1' });
            await until(() => client.members('lobby').join() === 'bob,cy', { what: 'presence applied' });
            // Several changes in one event (a coalescing gateway): applied in
            // order, one presence event per change.
            const seen = [];
            client.on('presence', (p) => seen.push(`${p.action}:${p.user}`));
            conn.send({
                type: 'event', ch: 'r:lobby', seq: 6, kind: 'presence',
                changes: [
                    { action: 'join', user: 'dee', session: 's4' },
                    { action: 'leave', user: 'bob' },
                    { action: 'join', user: 'eve', session: 's5' },
                    { action: 'leave', user: 'eve', session: 's5' },
                ],
            });
            await until(() => seen.length === 4, { what: 'coalesced presence applied' });
            assert.deepEqual(seen, ['join:dee', 'leave:bob', 'join:eve', 'leave:eve']);
            assert.deepEqual(client.members('lobby'), ['cy', 'dee']);

            const hist = client.history('r:lobby', { before: 4, limit: 2 });
            const req = await conn.next((f) => f.type === 'history');
            assert.deepEqual([req.ch, req.before, req.limit], ['r:lobby', 4, 2]);
            conn.send({ type: 'history', ch: 'r:lobby', events: [{ ch: 'r:lobby', seq: 3, kind: 'message' }, { ch: 'r:lobby', seq: 2, kind: 'message' }] });
            assert.deepEqual(
                (await hist).map((e) => e.seq),
                [2, 3],
            );
            const rtt = client.ping();
            await conn.next((f) => f.type === 'ping');
            conn.send({ type: 'pong' });
            assert.ok((await rtt) >= 0);
        });
    });

    test('a silent gateway is left after 2.5 heartbeats, after an application ping', { timeout: 20000 }, async () => {
        await withGateway(async (gw) => {
            const client = makeClient(gw.url);
            client.connect();
            const c0 = await gw.conn(0);
            await c0.next((f) => f.type === 'hello');
            const t0 = Date.now();
            c0.welcome({ heartbeat_ms: 100 });
            await c0.next((f) => f.type === 'ping', { what: 'application ping when idle' });
            const c1 = await gw.conn(1, { timeoutMs: 3000 });
            const hello = await c1.next((f) => f.type === 'hello');
            assert.ok(hello.receivedAt - t0 >= 250, `left after ${hello.receivedAt - t0} ms`);
            assert.equal(hello.resume.session, 'sess-1');
        });
    });

    test('the client retries while the gateway is unreachable, with growing jittered delays', { timeout: 20000 }, async () => {
        const delays = [];
        const client = new SluiceClient({
            url: 'ws://127.0.0.1:9/v1/ws',
            token: 't',
            WebSocket,
            backoff: { baseMs: 10, capMs: 40 },
            random: () => 0.999,
        });
        clients.push(client);
        client.on('state', (s) => {
            if (s.state === 'reconnecting') delays.push(s.delayMs);
        });
        client.connect();
        await until(() => delays.length >= 5, { what: 'five retries' });
        client.close();
        assert.deepEqual(delays.slice(0, 5), [9, 19, 39, 39, 39]);
    });
});
