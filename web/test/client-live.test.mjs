// The JavaScript client against the real stack: nats-server, orchestrator,
// worker (echo backend) and gateway, started by stack.mjs. Each test checks
// a client behaviour of shared/PROTOCOL.md end to end; the last one SIGKILLs
// the gateway in the middle of a streamed reply and restarts it.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { SluiceClient } from '../client/sluice.js';
import { httpGet, startStack } from './stack.mjs';
import { nextEvent, until } from './util.mjs';

let stack;
const clients = [];
let tenantSeq = 0;

// A fresh tenant per test keeps the tests independent on one stack.
function tenant() {
    tenantSeq += 1;
    return `t${process.pid}x${tenantSeq}`;
}

// A client with a recorder of what the application sees.
async function connectAs(ten, user, opts = {}) {
    const token = await stack.token(ten, user);
    const client = new SluiceClient({ url: stack.wsUrl, token, WebSocket, ...opts });
    clients.push(client);
    const rec = { events: [], messages: [], replies: new Map(), updates: [], busy: [], errors: [], states: [] };
    client.on('event', (e) => rec.events.push(e));
    client.on('message', (m) => rec.messages.push(m));
    client.on('reply', (r) => {
        rec.updates.push(r);
        rec.replies.set(r.reply, r);
    });
    client.on('busy', (b) => rec.busy.push(b));
    client.on('error', (e) => rec.errors.push(e));
    client.on('state', (s) => rec.states.push(s.state));
    client.rec = rec;
    await client.connect();
    return client;
}

function finalReplyTo(client, id, agent = 'assistant') {
    return [...client.rec.replies.values()].find((r) => r.to === id && r.agent === agent && r.final);
}

function waitFinal(client, id, { agent = 'assistant', timeoutMs = 15000 } = {}) {
    return until(() => finalReplyTo(client, id, agent), { timeoutMs, what: `final ${agent} reply to ${id}` });
}

// Every event the application saw: (ch, seq) unique and increasing per channel.
function assertCleanOrder(client) {
    const last = new Map();
    for (const e of client.rec.events) {
        const prev = last.get(e.ch);
        assert.ok(prev === undefined || e.seq > prev, `event ${e.ch}#${e.seq} after #${prev}: duplicate or reordered`);
        last.set(e.ch, e.seq);
    }
}

// Every stored event of `ch` after seq `after`, oldest first (history pages of 200).
async function roomSince(client, ch, after) {
    const out = [];
    let before = client.positions[ch] + 1;
    for (let page = 0; page < 50; page += 1) {
        const events = await client.history(ch, { before, limit: 200 });
        const newer = events.filter((e) => e.seq > after);
        out.unshift(...newer);
        if (events.length === 0 || newer.length < events.length) break;
        before = events[0].seq;
    }
    return out;
}

before(async () => {
    stack = await startStack();
});

after(async () => {
    for (const c of clients) c.close();
    if (stack) await stack.stop();
});

describe('client on the real gateway', () => {
    test('the gateway serves the demo page, the client module and dev tokens, on one kept-alive connection', { timeout: 60000 }, async () => {
        // A browser loads the page's files over one kept-alive connection.
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        const sockets = new Set();
        agent.on('free', (socket) => sockets.add(socket));
        const get = (p) =>
            httpGet(stack.wsPort, p, { agent }).catch((err) => {
                throw new Error(`GET ${p} after ${sockets.size} request(s) on a kept-alive connection: ${err.message}`);
            });
        const page = await get('/');
        assert.equal(page.status, 200);
        assert.match(page.body, /<title>Sluice/);
        assert.match(page.headers['content-type'], /text\/html/);
        const mod = await get('/client/sluice.js');
        assert.equal(mod.status, 200);
        assert.match(mod.headers['content-type'], /javascript/);
        assert.match(mod.body, /export class SluiceClient/);
        for (const file of ['/app.js', '/style.css']) assert.equal((await get(file)).status, 200, file);
        const dev = await get('/dev/token?tenant=devt&sub=dana');
        assert.equal(dev.status, 200, dev.body);
        assert.equal(sockets.size, 1, 'one connection for all requests');
        agent.destroy();
        const { token } = JSON.parse(dev.body);
        assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
        const client = new SluiceClient({ url: stack.wsUrl, token, WebSocket });
        clients.push(client);
        const w = await client.connect();
        assert.ok(w.session);
        assert.ok((await client.ping()) >= 0);
    });

    test('join, send, accepted once, own message seen, assistant reply streamed token by token', { timeout: 60000 }, async () => {
        const ten = tenant();
        const ann = await connectAs(ten, 'ann');
        const joined = await ann.join('lobby');
        assert.equal(joined.ch, 'r:lobby');
        assert.ok(Number.isFinite(joined.seq));
        const text = 'the quick brown fox jumps over the lazy dog';
        const h = ann.send(text, { room: 'lobby' });
        const acc = await h.accepted;
        assert.equal(acc.id, h.id);
        assert.equal(acc.duplicate, false);
        await until(() => ann.rec.messages.find((m) => m.id === h.id), { what: 'own message event' });
        const msg = ann.rec.messages.find((m) => m.id === h.id);
        assert.equal(msg.ch, 'r:lobby');
        assert.deepEqual(msg.from, { user: 'ann' });
        assert.equal(msg.text, text);
        const fin = await waitFinal(ann, h.id);
        const streamed = ann.rec.updates.filter((u) => u.reply === fin.reply && !u.final);
        assert.ok(streamed.length >= 2, `streamed in ${streamed.length} token updates`);
        assert.ok(streamed.every((u, i) => i === 0 || u.text.startsWith(streamed[i - 1].text)), 'tokens only append');
        assert.equal(streamed.at(-1).text, fin.text, 'assembled tokens equal the final text');
        assert.ok(fin.text.includes(text), `echo reply: ${fin.text}`);
        assert.equal(fin.ch, 'r:lobby');
        assert.equal(ann.rec.messages.filter((m) => m.id === h.id).length, 1);
        assertCleanOrder(ann);
    });

    test('two users in a room see each other, presence and the agents (@summarizer too)', { timeout: 60000 }, async () => {
        const ten = tenant();
        const ann = await connectAs(ten, 'ann');
        const bob = await connectAs(ten, 'bob');
        await ann.join('lobby');
        const bobJoin = await bob.join('lobby');
        assert.ok(JSON.stringify(bobJoin.members).includes('ann'), `members: ${JSON.stringify(bobJoin.members)}`);
        await until(() => ann.members('lobby').includes('bob'), { what: 'ann sees bob present' });

        const h = ann.send('hello bob, ask @summarizer', { room: 'lobby' });
        await h.accepted;
        await until(() => bob.rec.messages.find((m) => m.id === h.id), { what: 'bob sees ann' });
        const [finA, finB] = await Promise.all([waitFinal(ann, h.id), waitFinal(bob, h.id)]);
        assert.equal(finA.text, finB.text);
        assert.ok(bob.rec.updates.some((u) => u.to === h.id && !u.final), 'bob saw the reply stream');
        await Promise.all([waitFinal(ann, h.id, { agent: 'summarizer' }), waitFinal(bob, h.id, { agent: 'summarizer' })]);

        const hb = bob.send('hi ann', { room: 'lobby' });
        await hb.accepted;
        await until(() => ann.rec.messages.find((m) => m.id === hb.id && m.from.user === 'bob'), { what: 'ann sees bob' });
        await waitFinal(ann, hb.id);
        assert.equal(finalReplyTo(ann, hb.id, 'summarizer'), undefined, 'no mention, no summarizer');

        await bob.leave('lobby');
        await until(() => !ann.members('lobby').includes('bob'), { what: 'bob gone from ann presence' });
        assertCleanOrder(ann);
        assertCleanOrder(bob);
    });

    test('tenants are apart: the same room name in two tenants never mixes', { timeout: 60000 }, async () => {
        const a = await connectAs(tenant(), 'ann');
        const b = await connectAs(tenant(), 'ann');
        await a.join('lobby');
        await b.join('lobby');
        const h = a.send('tenant a only', { room: 'lobby' });
        await h.accepted;
        await waitFinal(a, h.id);
        const hb = b.send('tenant b only', { room: 'lobby' });
        await waitFinal(b, hb.id);
        assert.equal(b.rec.messages.find((m) => m.id === h.id && m.text === 'tenant a only'), undefined);
        assert.equal(a.rec.messages.find((m) => m.text === 'tenant b only'), undefined);
    });

    test('a private message to the agents is answered on the session channel', { timeout: 60000 }, async () => {
        const c = await connectAs(tenant(), 'cy');
        const h = c.send('just between us');
        await h.accepted;
        const fin = await waitFinal(c, h.id);
        assert.equal(fin.ch, 's');
        assert.ok(fin.text.includes('just between us'));
    });

    test('the same id sent again is stored once (accepted duplicate)', { timeout: 60000 }, async () => {
        const c = await connectAs(tenant(), 'dee');
        await c.join('lobby');
        const id = 'dup-test-1';
        const first = c.send('only once please', { room: 'lobby', id });
        assert.equal((await first.accepted).duplicate, false);
        const second = c.send('only once please', { room: 'lobby', id });
        assert.equal((await second.accepted).duplicate, true);
        await waitFinal(c, id);
        const pos = c.positions['r:lobby'];
        const hist = await c.history('r:lobby', { before: pos + 1, limit: 100 });
        assert.equal(hist.filter((e) => e.kind === 'message' && e.id === id).length, 1, 'one stored message');
        assert.equal(c.rec.messages.filter((m) => m.id === id).length, 1, 'one delivered message');
    });

    test('history returns older events, oldest first', { timeout: 60000 }, async () => {
        const c = await connectAs(tenant(), 'eve');
        await c.join('lobby');
        const ids = [];
        for (let i = 0; i < 3; i += 1) {
            const h = c.send(`history ${i}`, { room: 'lobby' });
            ids.push(h.id);
            await h.accepted;
        }
        await until(() => ids.every((id) => c.rec.messages.some((m) => m.id === id)));
        const pos = c.positions['r:lobby'];
        const hist = await c.history('r:lobby', { before: pos + 1, limit: 50 });
        const seqs = hist.map((e) => e.seq);
        assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y));
        const msgIds = hist.filter((e) => e.kind === 'message').map((e) => e.id);
        for (const id of ids) assert.ok(msgIds.includes(id), `${id} in history`);
        const older = await c.history('r:lobby', { before: seqs[0], limit: 50 });
        assert.ok(older.every((e) => e.seq < seqs[0]));
    });

    test('cancel stops a streaming reply: it ends with final and cancelled', { timeout: 60000 }, async () => {
        const c = await connectAs(tenant(), 'fay');
        await c.join('lobby');
        const words = Array.from({ length: 150 }, (_, i) => `w${i}`).join(' ');
        const h = c.send(words, { room: 'lobby' });
        await h.accepted;
        await until(() => c.rec.updates.some((u) => u.to === h.id && !u.final), { timeoutMs: 10000, what: 'first token' });
        c.cancel(h.id);
        const fin = await waitFinal(c, h.id, { timeoutMs: 10000 });
        assert.equal(fin.cancelled, true, JSON.stringify(fin));
        assert.ok(!fin.text.includes('w149'), 'cut before the end');
    });

    test('a bad token is refused (4401) and the client closes for good', { timeout: 60000 }, async () => {
        const client = new SluiceClient({ url: stack.wsUrl, token: 'not.a.jwt', WebSocket });
        clients.push(client);
        await assert.rejects(client.connect(), (e) => e.code === 'unauthorized');
        assert.equal(client.state, 'closed');
    });

    // Keep last: it kills the gateway.
    test('gateway SIGKILLed mid-reply and restarted: resume, nothing lost, nothing twice', { timeout: 60000 }, async () => {
        const ten = tenant();
        const ann = await connectAs(ten, 'ann', { backoff: { baseMs: 100, capMs: 1000 } });
        const bob = await connectAs(ten, 'bob', { backoff: { baseMs: 100, capMs: 1000 } });
        const startA = (await ann.join('lobby')).seq;
        await bob.join('lobby');
        const words = Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ');
        const h = ann.send(words, { room: 'lobby' });
        await h.accepted;
        await until(() => ann.rec.updates.some((u) => u.to === h.id && !u.final), { timeoutMs: 10000, what: 'reply streaming' });
        const sessionA = ann.session;

        // Racing the kill: this send may or may not be stored before the
        // gateway dies; either way it must end up stored and shown once.
        const racing = ann.send('racing the kill', { room: 'lobby' });
        await stack.killGateway();
        await until(() => ann.state !== 'open' && bob.state !== 'open', { what: 'clients notice the dead gateway' });
        // Sent while no gateway is up: must be accepted after the resume.
        const during = bob.send('sent while the gateway was down', { room: 'lobby' });
        await stack.restartGateway();

        await until(() => ann.state === 'open' && bob.state === 'open', { timeoutMs: 15000, what: 'both clients back' });
        assert.equal(ann.session, sessionA, 'same session resumed');
        assert.ok(ann.stats.resumes >= 1);
        await during.accepted;
        await racing.accepted;

        const finA = await waitFinal(ann, h.id, { timeoutMs: 20000 });
        const finB = await waitFinal(bob, h.id, { timeoutMs: 20000 });
        assert.ok(finA.text.includes('word59'), 'whole reply');
        assert.equal(finA.text, finB.text);
        await until(() => ann.rec.messages.some((m) => m.id === during.id), { what: 'ann sees the message sent during the outage' });
        await waitFinal(ann, during.id, { timeoutMs: 20000 });

        for (const c of [ann, bob]) {
            assertCleanOrder(c);
            assert.equal(c.rec.messages.filter((m) => m.id === h.id).length, 1);
            assert.equal(c.rec.messages.filter((m) => m.id === during.id).length, 1);
            await until(() => c.rec.messages.some((m) => m.id === racing.id), { what: 'the racing message' });
            assert.equal(c.rec.messages.filter((m) => m.id === racing.id).length, 1);
            // The streamed text a user watched is the final text (no repeated chunk after the resume).
            const lastPartial = c.rec.updates.filter((u) => u.reply === finA.reply && !u.final).at(-1);
            assert.ok(finA.text.startsWith(lastPartial.text), 'partial text is a prefix of the final');
        }
        // Nothing lost: everything the room holds after ann joined reached ann exactly once.
        const seen = new Set(ann.rec.events.filter((e) => e.ch === 'r:lobby').map((e) => e.seq));
        const hist = await roomSince(ann, 'r:lobby', startA);
        const missing = hist.filter((e) => !seen.has(e.seq)).map((e) => `${e.seq}:${e.kind}`);
        assert.deepEqual(missing, [], `events lost across the restart\n${stack.logs(10)}`);
    });
});
