// End to end in Debian's Chromium (playwright-core, never a downloaded
// browser): the demo page served by the real gateway, two users in one room,
// the agents' streamed replies, the stop button, then the gateway SIGKILLed
// and restarted on the same port while a reply streams. The pages must
// reconnect and resume with nothing lost and nothing shown twice.
// Screenshots go to tests/artifacts/web/.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import { ARTIFACTS_DIR, WEB_ROOT, startStack } from './stack.mjs';

const CHROMIUM = process.env.SLUICE_CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.join(ARTIFACTS_DIR, 'web');
const T = 15000; // default wait for a condition

let stack;
let context;
let userDir;
const pageErrors = [];

async function shot(page, name) {
    const file = path.join(SHOTS, `${name}.png`);
    await page.screenshot({ path: file, fullPage: false });
    return file;
}

async function openAs(tenant, user, room = 'lobby') {
    const page = await context.newPage();
    page.setDefaultTimeout(T);
    page.on('pageerror', (err) => pageErrors.push(`${user}: ${err.message}`));
    page.on('console', (msg) => {
        // Failed connection attempts while the gateway is down are expected.
        const expected = /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/.test(msg.text());
        if (msg.type() === 'error' && !expected) pageErrors.push(`${user} console: ${msg.text()}`);
    });
    await page.goto(stack.httpUrl);
    await page.getByLabel('Tenant').fill(tenant);
    await page.getByLabel('User name').fill(user);
    await page.getByLabel('Room', { exact: true }).fill(room);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForSelector('#conn[data-state="open"]');
    await page.waitForSelector(`#rooms button[data-room="${room}"][aria-current="true"]`);
    // Record every reply update the page's client sees, to prove streaming.
    await page.evaluate(() => {
        window.replyUpdates = [];
        window.sluiceDemo.client.on('reply', (r) => window.replyUpdates.push({ reply: r.reply, to: r.to, final: r.final, len: r.text.length }));
    });
    return page;
}

// Runs axe-core (WCAG 2 A and AA rules) on the page; returns the serious and
// critical violations as readable lines.
async function axeViolations(page) {
    await page.addScriptTag({ path: path.join(WEB_ROOT, 'node_modules', 'axe-core', 'axe.min.js') });
    const violations = await page.evaluate(async () => {
        const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
        return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 3) }));
    });
    return violations.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) => `${v.id} (${v.impact}): ${v.nodes.join(', ')}`);
}

// Sends `text` from the page's composer with the keyboard; returns the message id.
async function say(page, text) {
    const box = page.locator('#text');
    await box.focus();
    await box.fill(text);
    await box.press('Enter');
    const li = page.locator('li.msg.mine:not(.reply)').filter({ hasText: text }).last();
    await li.waitFor();
    return li.getAttribute('data-msg-id');
}

function finalReply(page, to, agent = 'assistant') {
    return page.locator(`li.reply[data-to="${to}"][data-agent="${agent}"][data-final="1"]`);
}

// What the page shows, for the no-duplicate and nothing-lost checks.
function pageState(page) {
    return page.evaluate(() => {
        const log = document.querySelector('ol.log[data-room="lobby"]');
        const items = [...log.querySelectorAll('li.msg')];
        return {
            keys: items.map((li) => li.dataset.key),
            messages: items.filter((li) => !li.classList.contains('reply')).map((li) => li.dataset.msgId),
            replies: items.filter((li) => li.classList.contains('reply')).map((li) => ({ id: li.dataset.replyId, to: li.dataset.to, final: li.dataset.final === '1', text: li.querySelector('.text').textContent })),
            pending: items.filter((li) => li.dataset.pending === '1').length,
            duplicates: window.sluiceDemo.stats.duplicates,
            clientStats: window.sluiceDemo.client.stats,
        };
    });
}

before(async () => {
    fs.mkdirSync(SHOTS, { recursive: true });
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} missing: make web-test installs Debian's chromium`);
    stack = await startStack();
    userDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-chromium-'));
    context = await chromium.launchPersistentContext(userDir, {
        executablePath: CHROMIUM,
        headless: true,
        viewport: { width: 1100, height: 720 },
        args: [
            '--headless',
            '--no-sandbox',
            '--disable-gpu',
            '--disable-background-networking',
            '--disable-quic',
            '--no-first-run',
            '--disable-component-update',
            '--disable-sync',
        ],
    });
});

after(async () => {
    await context?.close().catch(() => {});
    if (userDir) fs.rmSync(userDir, { recursive: true, force: true });
    await stack?.stop();
});

describe('demo page in Chromium', () => {
    test('sign-in explains when the gateway gives no development tokens; no accessibility violations', { timeout: 120000 }, async () => {
        const page = await context.newPage();
        await page.route('**/dev/token**', (route) => route.fulfill({ status: 404, body: 'not found' }));
        await page.goto(stack.httpUrl);
        await page.getByLabel('User name').fill('zed');
        await page.getByRole('button', { name: 'Sign in' }).click();
        await page.getByRole('alert').filter({ hasText: 'paste a token' }).waitFor();
        assert.equal(await page.locator('#token-box').getAttribute('open'), '');
        assert.deepEqual(await axeViolations(page), [], 'accessibility of the sign-in form');
        await page.close();
    });

    test('two users chat with each other and the agents; replies stream; stop; reconnect after a gateway SIGKILL', { timeout: 120000 }, async () => {
        const tenant = `web${process.pid}`;
        const ann = await openAs(tenant, 'ann');
        const bob = await openAs(tenant, 'bob');

        // Accessibility basics: labelled controls, a live message log, connection state as status.
        const log = ann.getByRole('log', { name: 'Messages in #lobby' });
        assert.equal(await log.getAttribute('aria-live'), 'polite');
        assert.equal(await log.locator('ol.log').count(), 1);
        assert.equal(await ann.getByRole('status').first().getAttribute('id'), 'conn');
        await ann.getByLabel('Message #lobby').waitFor();
        await ann.getByLabel('Join a room').waitFor();

        // Presence both ways.
        await ann.locator('#people li[data-user="bob"]').waitFor();
        await bob.locator('#people li[data-user="ann"]').waitFor();

        // ann speaks, bob sees it and the assistant's reply stream in.
        const hello = await say(ann, 'hello bob, how are you');
        await bob.locator(`li.msg[data-msg-id="${hello}"][data-from="ann"]`).waitFor();
        await finalReply(ann, hello).waitFor();
        await finalReply(bob, hello).waitFor();
        const annText = await finalReply(ann, hello).locator('.text').textContent();
        assert.ok(annText.includes('hello bob, how are you'), annText);
        assert.equal(await finalReply(bob, hello).locator('.text').textContent(), annText);
        const streamed = await bob.evaluate((id) => window.replyUpdates.filter((u) => u.to === id && !u.final).length, hello);
        assert.ok(streamed >= 2, `bob saw ${streamed} streaming updates`);

        // bob answers and asks the summarizer; ann sees both agents answer.
        const hi = await say(bob, 'hi ann, @summarizer please sum up');
        await ann.locator(`li.msg[data-msg-id="${hi}"][data-from="bob"]`).waitFor();
        await finalReply(ann, hi, 'assistant').waitFor();
        await finalReply(ann, hi, 'summarizer').waitFor();
        await shot(ann, 'browser-1-chat-ann');
        await shot(bob, 'browser-1-chat-bob');

        // The stop button (used from the keyboard) ends a streaming reply as stopped.
        const long = Array.from({ length: 300 }, (_, i) => `s${i}`).join(' ');
        const stopId = await say(ann, long);
        const streaming = ann.locator(`li.reply.streaming[data-to="${stopId}"][data-agent="assistant"]`);
        await streaming.waitFor();
        assert.equal(await streaming.getAttribute('aria-busy'), 'true');
        await shot(ann, 'browser-2-streaming');
        await streaming.getByRole('button', { name: /Stop/ }).press('Enter');
        await finalReply(ann, stopId).locator('.status', { hasText: 'stopped' }).waitFor();
        assert.ok(!(await finalReply(ann, stopId).locator('.text').textContent()).includes('s299'));

        // A reply streams; the gateway dies; bob writes while it is down.
        const words = Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ');
        const longId = await say(ann, words);
        await ann.locator(`li.reply.streaming[data-to="${longId}"][data-agent="assistant"]`).waitFor();
        await stack.killGateway();
        await ann.waitForSelector('#conn:not([data-state="open"])');
        await bob.waitForSelector('#conn:not([data-state="open"])');
        await shot(ann, 'browser-3-gateway-down');
        const during = await say(bob, 'written while the gateway was down');
        assert.equal(await bob.locator(`li.msg[data-msg-id="${during}"]`).getAttribute('data-pending'), '1');
        await stack.restartGateway();

        await ann.waitForSelector('#conn[data-state="open"]', { timeout: 30000 });
        await bob.waitForSelector('#conn[data-state="open"]', { timeout: 30000 });
        for (const page of [ann, bob]) {
            await finalReply(page, longId).waitFor({ timeout: 30000 });
            await page.locator(`li.msg[data-msg-id="${during}"]:not([data-pending])`).waitFor({ timeout: 30000 });
            await finalReply(page, during).waitFor({ timeout: 30000 });
        }
        const longText = await finalReply(ann, longId).locator('.text').textContent();
        assert.ok(longText.includes('word0') && longText.includes('word59'), longText);
        assert.equal(await finalReply(bob, longId).locator('.text').textContent(), longText);
        await shot(ann, 'browser-4-resumed-ann');
        await shot(bob, 'browser-4-resumed-bob');

        // Nothing shown twice, nothing lost, both pages agree.
        const a = await pageState(ann);
        const b = await pageState(bob);
        for (const [who, st] of [
            ['ann', a],
            ['bob', b],
        ]) {
            assert.equal(new Set(st.keys).size, st.keys.length, `${who}: an item shown twice: ${st.keys.join(' ')}`);
            assert.equal(st.duplicates, 0, `${who}: page saw a repeated message`);
            assert.equal(st.pending, 0, `${who}: a message still pending`);
            assert.ok(st.replies.every((r) => r.final), `${who}: a reply never ended`);
            assert.ok(st.clientStats.resumes >= 1, `${who}: resumed`);
        }
        assert.deepEqual(a.messages, b.messages, 'both pages show the same messages in the same order');
        assert.deepEqual(
            a.replies.map((r) => r.id),
            b.replies.map((r) => r.id),
        );
        for (const id of [hello, hi, stopId, longId, during]) {
            assert.equal(a.messages.filter((m) => m === id).length, 1, `ann shows ${id} once`);
        }
        // Everything the room stored since the pages joined is on screen.
        const stored = await ann.evaluate(async () => {
            const events = await window.sluiceDemo.client.history('r:lobby', { limit: 200 });
            // An agent's answer may also be stored as a room message with the reply's id: the page shows it as the reply.
            return events
                .filter((e) => e.kind === 'message' || e.kind === 'reply')
                .map((e) => (e.kind === 'reply' || (e.from && e.from.agent !== undefined && window.sluiceDemo.replies.has(e.id)) ? `r:${e.reply ?? e.id}` : `m:${e.id}`));
        });
        const shown = new Set([...a.messages.map((m) => `m:${m}`), ...a.replies.map((r) => `r:${r.id}`)]);
        const lost = stored.filter((k) => !shown.has(k));
        assert.deepEqual(lost, [], 'stored events missing from the page');
        assert.deepEqual(pageErrors, []);
    });

    test('keyboard: join a second room with the form, chat there and privately with the agents', { timeout: 120000 }, async () => {
        const page = await openAs(`kb${process.pid}`, 'kim');
        await page.getByLabel('Join a room').focus();
        await page.keyboard.type('side');
        await page.keyboard.press('Enter');
        await page.waitForSelector('#rooms button[data-room="side"][aria-current="true"]');
        await page.waitForSelector('#conn[data-state="open"]');
        assert.equal(await page.locator('#room-title').textContent(), '#side');
        const id = await say(page, 'over in the side room');
        await page.locator(`ol.log[data-room="side"] li.reply[data-to="${id}"][data-final="1"]`).waitFor();
        await shot(page, 'browser-5-second-room');
        // The lobby is still joined; a private word with the agents is answered privately.
        await page.locator('#rooms button[data-room="lobby"]').click();
        assert.equal(await page.locator('#room-title').textContent(), '#lobby');
        await page.getByRole('button', { name: 'Agents (private)' }).click();
        assert.equal(await page.locator('#room-title').textContent(), 'Agents (private)');
        const priv = await say(page, 'just between us');
        const reply = page.locator(`ol.log[data-room=""] li.reply[data-to="${priv}"][data-final="1"]`);
        await reply.waitFor();
        assert.ok((await reply.locator('.text').textContent()).includes('just between us'));
        assert.equal(await page.locator(`ol.log[data-room="lobby"] li[data-msg-id="${priv}"]`).count(), 0);
        await shot(page, 'browser-6-private');
        assert.deepEqual(await axeViolations(page), [], 'accessibility of the chat view');
    });
});
