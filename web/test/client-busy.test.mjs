// `busy` from the real gateway: a stack whose per-connection rate is tiny
// (SLUICE_RATE=2/s, SLUICE_BURST=3), so a burst of sends is partly refused
// with rate_limited. The client must wait retry_after_ms, send the same ids
// again, and end with every message stored once, in the order written.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { SluiceClient } from '../client/sluice.js';
import { startStack } from './stack.mjs';
import { until } from './util.mjs';

let stack;
let client;

// The `ws` WebSocket, recording every frame the client sends, with its time.
const sent = [];
class RecordingWebSocket extends WebSocket {
    send(data, ...rest) {
        sent.push({ at: Date.now(), frame: JSON.parse(data) });
        return super.send(data, ...rest);
    }
}

before(async () => {
    stack = await startStack({ gatewayEnv: { SLUICE_RATE: '2', SLUICE_BURST: '3' } });
});

after(async () => {
    client?.close();
    if (stack) await stack.stop();
});

describe('busy on the real gateway', () => {
    test('rate-limited sends are retried after retry_after_ms with the same id: all stored once, in order', { timeout: 60000 }, async () => {
        const token = await stack.token(`busy${process.pid}`, 'ann');
        client = new SluiceClient({ url: stack.wsUrl, token, WebSocket: RecordingWebSocket });
        const busy = [];
        const messages = [];
        client.on('busy', (b) => busy.push({ ...b, at: Date.now(), sentBefore: sent.length }));
        client.on('message', (m) => messages.push(m));
        await client.connect();
        await client.join('lobby');
        const handles = Array.from({ length: 8 }, (_, i) => client.send(`burst ${i}`, { room: 'lobby' }));
        const accepted = await Promise.all(handles.map((h) => h.accepted));
        assert.ok(
            busy.some((b) => b.scope === 'send' && b.reason === 'rate_limited' && b.retry_after_ms > 0),
            `expected rate_limited busy frames, got ${JSON.stringify(busy)}`,
        );
        assert.equal(accepted.filter((a) => a.duplicate).length, 0, 'a refused send was not stored');
        const ids = handles.map((h) => h.id);
        await until(() => ids.every((id) => messages.some((m) => m.id === id)), { timeoutMs: 20000, what: 'all 8 messages' });
        const order = messages.filter((m) => ids.includes(m.id)).map((m) => m.id);
        assert.deepEqual(order, ids, 'each stored once, in the order written');
        assert.ok(client.stats.resent >= 1);
        // No id went out again before its busy's retry_after_ms had passed.
        for (const b of busy.filter((x) => x.scope === 'send')) {
            const next = sent.slice(b.sentBefore).find((x) => x.frame.type === 'send' && x.frame.id === b.id);
            assert.ok(next, `${b.id} sent again`);
            assert.ok(next.at - b.at >= b.retry_after_ms - 5, `${b.id} resent after ${next.at - b.at} ms < ${b.retry_after_ms} ms`);
            assert.equal(next.frame.text, `burst ${ids.indexOf(b.id)}`, 'same id, same message');
        }
    });
});
