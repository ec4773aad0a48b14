// Sluice demo chat: sign in, join rooms, chat with people and agents.
// Plain DOM code on top of the client module; all user text goes through
// textContent, never HTML.

import { SluiceClient, channelRoom, isValidRoom, roomChannel } from './client/sluice.js';

const PRIVATE = ''; // the conversation with the agents on the session channel
const NOTICE_MS = 8000;

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
};

const app = {
    client: null,
    me: null, // {tenant, user}
    current: null, // room name, or PRIVATE
    convs: new Map(), // room name (or PRIVATE) -> {name, ch, wrap, log, li, button, badge, unread, historyLoaded}
    items: new Map(), // key -> li (messages by `${ch}|${from}|${id}`, replies by `reply|${id}`)
    replies: new Map(), // reply id -> {to, agent, ch, final}
    stats: { duplicates: 0, rendered: 0, replies: 0 },
};

// For tests and curious people: the client, the page's counters.
window.sluiceDemo = app;

function fromKey(from) {
    if (!from) return '?';
    return from.user !== undefined ? `u:${from.user}` : `a:${from.agent}`;
}

function fromName(from) {
    if (!from) return 'unknown';
    return from.user ?? from.agent ?? 'unknown';
}

// Event times may come as ISO strings or as numbers in s, ms or ns.
function fmtTime(ts) {
    const toMs = (n) => (n > 1e15 ? n / 1e6 : n > 1e12 ? n : n * 1000);
    let ms = Date.now();
    if (typeof ts === 'number') ms = toMs(ts);
    else if (typeof ts === 'string') ms = /^\d+$/.test(ts) ? toMs(Number(ts)) : Date.parse(ts);
    const d = new Date(Number.isFinite(ms) ? ms : Date.now());
    return { iso: d.toISOString(), text: d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) };
}

// ---- notices ----

function notice(text, { kind = 'info', ms = NOTICE_MS } = {}) {
    const n = el('p', `notice ${kind}`, text);
    if (kind === 'error') n.setAttribute('role', 'alert');
    $('notices').append(n);
    while ($('notices').children.length > 4) $('notices').firstElementChild.remove();
    if (ms > 0) setTimeout(() => n.remove(), ms);
    return n;
}

// ---- conversations (rooms and the private one) ----

function convLabel(name) {
    return name === PRIVATE ? 'Agents (private)' : `#${name}`;
}

function ensureConv(name) {
    let conv = app.convs.get(name);
    if (conv) return conv;
    const ch = name === PRIVATE ? 's' : roomChannel(name);
    // A `log` live region (polite) around a real list, so that both the
    // announcements and the list semantics hold.
    const wrap = el('div', 'log-wrap');
    wrap.setAttribute('role', 'log');
    wrap.setAttribute('aria-live', 'polite');
    wrap.setAttribute('aria-label', `Messages in ${convLabel(name)}`);
    wrap.dataset.room = name;
    wrap.tabIndex = 0;
    wrap.hidden = true;
    const log = el('ol', 'log');
    log.dataset.ch = ch;
    log.dataset.room = name;
    wrap.append(log);
    $('logs').append(wrap);

    const li = el('li', 'room-item');
    const button = el('button', 'room-btn');
    button.type = 'button';
    button.dataset.room = name;
    const label = el('span', 'room-name', convLabel(name));
    const badge = el('span', 'badge');
    badge.hidden = true;
    button.append(label, badge);
    button.addEventListener('click', () => switchTo(name));
    li.append(button);
    if (name !== PRIVATE) {
        const leave = el('button', 'leave', '×');
        leave.type = 'button';
        leave.setAttribute('aria-label', `Leave ${convLabel(name)}`);
        leave.title = `Leave ${convLabel(name)}`;
        leave.addEventListener('click', () => leaveRoom(name));
        li.append(leave);
    } else {
        li.append(el('span', 'leave-spacer'));
    }
    $('rooms').append(li);
    conv = { name, ch, log, wrap, button, li, badge, unread: 0, historyLoaded: false };
    app.convs.set(name, conv);
    return conv;
}

function convOfChannel(ch) {
    if (ch === 's') return ensureConv(PRIVATE);
    const room = channelRoom(ch);
    return room ? app.convs.get(room) ?? ensureConv(room) : null;
}

function switchTo(name) {
    const conv = ensureConv(name);
    app.current = name;
    for (const c of app.convs.values()) {
        c.wrap.hidden = c !== conv;
        if (c === conv) c.button.setAttribute('aria-current', 'true');
        else c.button.removeAttribute('aria-current');
    }
    conv.unread = 0;
    conv.badge.hidden = true;
    $('room-title').textContent = convLabel(name);
    $('text-label').textContent = `Message ${convLabel(name)}`;
    renderPeople();
    updateStopAll();
    scrollToEnd(conv, true);
}

async function joinRoom(name) {
    ensureConv(name);
    switchTo(name);
    try {
        const joined = await app.client.join(name);
        await loadHistory(name, joined.seq);
    } catch (err) {
        if (err.code === 'closed') return;
        notice(`Could not join #${name}: ${err.message}`, { kind: 'error' });
        if (err.code === 'forbidden') dropConv(name);
    }
}

async function leaveRoom(name) {
    try {
        await app.client.leave(name);
    } catch (err) {
        if (err.code !== 'closed') notice(`Leaving #${name}: ${err.message}`, { kind: 'error' });
    }
    dropConv(name);
}

function dropConv(name) {
    const conv = app.convs.get(name);
    if (!conv) return;
    conv.wrap.remove();
    conv.li.remove();
    app.convs.delete(name);
    if (app.current === name) switchTo([...app.convs.keys()].find((k) => k !== PRIVATE) ?? PRIVATE);
}

// Shows the recent past of a room the first time it is joined on this page.
async function loadHistory(name, seq) {
    const conv = app.convs.get(name);
    if (!conv || conv.historyLoaded || !Number.isFinite(seq)) return;
    conv.historyLoaded = true;
    let events;
    try {
        events = await app.client.history(conv.ch, { before: seq + 1, limit: 40 });
    } catch {
        return;
    }
    const first = conv.log.firstChild;
    for (const e of events) {
        let li = null;
        if (e.kind === 'message' && !app.items.has(msgKey(e))) li = messageItem(e, { history: true });
        else if (e.kind === 'reply' && !app.items.has(`reply|${e.reply}`)) li = replyItem({ ...e, final: true }, { history: true });
        if (li) conv.log.insertBefore(li, first);
    }
    scrollToEnd(conv, true);
}

// ---- rendering ----

function msgKey(m) {
    return `${m.ch}|${fromKey(m.from)}|${m.id}`;
}

function nearEnd(box) {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToEnd(conv, force = false) {
    if (force || nearEnd(conv.wrap)) conv.wrap.scrollTop = conv.wrap.scrollHeight;
}

function bump(conv) {
    if (conv.name === app.current) return;
    conv.unread += 1;
    conv.badge.hidden = false;
    conv.badge.textContent = String(conv.unread);
    conv.badge.setAttribute('aria-label', `${conv.unread} new`);
}

function messageItem(m, { pending = false, history = false } = {}) {
    const li = el('li', 'msg');
    // A message the application's backend posted (server API) is never "mine".
    const mine = m.from?.user !== undefined && m.from.user === app.me.user && !m.from.server;
    if (mine) li.classList.add('mine');
    if (m.from?.agent !== undefined) li.classList.add('agent');
    if (m.from?.server) li.classList.add('server');
    if (history) li.classList.add('history');
    li.dataset.key = msgKey(m);
    li.dataset.msgId = m.id;
    li.dataset.from = fromName(m.from);
    if (Number.isFinite(m.seq)) li.dataset.seq = String(m.seq);
    const meta = el('div', 'meta');
    meta.append(el('span', 'who', mine ? `${fromName(m.from)} (you)` : m.from?.server ? `${fromName(m.from)} (server)` : fromName(m.from)));
    const t = fmtTime(m.ts);
    const time = el('time', 'ts', t.text);
    time.dateTime = t.iso;
    meta.append(time);
    const status = el('span', 'status', pending ? 'sending…' : '');
    meta.append(status);
    li.append(meta, el('div', 'text', m.text ?? ''));
    if (pending) li.dataset.pending = '1';
    app.items.set(li.dataset.key, li);
    app.stats.rendered += 1;
    return li;
}

function onMessage(m) {
    const conv = convOfChannel(m.ch);
    if (!conv) return;
    // An agent's answer that also comes as a room message is already on
    // screen as the streamed reply.
    if (m.from?.agent !== undefined && (app.replies.has(m.id) || app.replies.has(m.event))) return;
    const key = msgKey(m);
    const existing = app.items.get(key);
    if (existing && existing.dataset.pending === '1') {
        delete existing.dataset.pending;
        existing.querySelector('.status').textContent = '';
        existing.dataset.seq = String(m.seq);
        conv.log.append(existing); // take its place in channel order
        scrollToEnd(conv);
        return;
    }
    if (existing) {
        if (!existing.classList.contains('history')) app.stats.duplicates += 1;
        return;
    }
    conv.log.append(messageItem(m));
    bump(conv);
    scrollToEnd(conv);
}

function replyItem(r, { history = false } = {}) {
    const li = el('li', 'msg reply agent');
    if (history) li.classList.add('history');
    li.dataset.key = `reply|${r.reply}`;
    li.dataset.replyId = r.reply;
    li.dataset.to = r.to ?? '';
    li.dataset.agent = r.agent ?? '';
    const meta = el('div', 'meta');
    meta.append(el('span', 'who', r.agent ?? 'agent'));
    const toItem = findMessageById(r.ch, r.to);
    if (toItem) meta.append(el('span', 're', `↪ ${toItem.dataset.from}`));
    meta.append(el('span', 'status'));
    const stop = el('button', 'stop', 'Stop');
    stop.type = 'button';
    stop.setAttribute('aria-label', `Stop the reply of ${r.agent ?? 'the agent'}`);
    stop.addEventListener('click', () => {
        stop.disabled = true;
        app.client.cancel(r.to);
    });
    meta.append(stop);
    li.append(meta, el('div', 'text'));
    app.items.set(li.dataset.key, li);
    app.replies.set(r.reply, { to: r.to, agent: r.agent, ch: r.ch, final: false });
    app.stats.replies += 1;
    updateReplyItem(li, r);
    return li;
}

function findMessageById(ch, id) {
    if (!id) return null;
    const conv = app.convs.get(ch === 's' ? PRIVATE : channelRoom(ch));
    return conv?.log.querySelector(`li.msg[data-msg-id="${CSS.escape(id)}"]:not(.reply)`) ?? null;
}

function updateReplyItem(li, r) {
    li.querySelector('.text').textContent = r.text ?? '';
    const info = app.replies.get(r.reply);
    if (r.final) {
        li.classList.remove('streaming');
        li.removeAttribute('aria-busy');
        li.querySelector('.stop')?.remove();
        const flags = [];
        if (r.cancelled) flags.push('stopped');
        if (r.partial) flags.push('cut short');
        if (r.degraded) flags.push('fallback answer');
        li.querySelector('.status').textContent = flags.join(', ');
        li.dataset.final = '1';
        if (info) info.final = true;
    } else {
        li.classList.add('streaming');
        li.setAttribute('aria-busy', 'true');
        li.querySelector('.status').textContent = r.restarted ? 'retrying…' : 'typing…';
    }
}

function onReply(r) {
    const conv = convOfChannel(r.ch);
    if (!conv) return;
    const key = `reply|${r.reply}`;
    let li = app.items.get(key);
    if (!li) {
        li = replyItem(r);
        conv.log.append(li);
        bump(conv);
    } else {
        updateReplyItem(li, r);
    }
    scrollToEnd(conv);
    updateStopAll();
}

function myStreamingReplies() {
    const conv = app.convs.get(app.current);
    if (!conv) return [];
    return [...conv.log.querySelectorAll('li.reply.streaming')].filter((li) => {
        const to = findMessageById(conv.ch, li.dataset.to);
        return to?.classList.contains('mine');
    });
}

function updateStopAll() {
    $('stop-all').disabled = myStreamingReplies().length === 0;
}

function stopMine() {
    const ids = new Set(myStreamingReplies().map((li) => li.dataset.to));
    for (const id of ids) app.client.cancel(id);
    if (ids.size) notice(`Stopping ${ids.size === 1 ? 'the reply' : 'the replies'}…`);
}

function renderPeople() {
    const ul = $('people');
    ul.replaceChildren();
    if (app.current === PRIVATE || app.current === null) {
        $('people-h').textContent = 'People here';
        ul.append(el('li', 'muted', 'Only you and the agents.'));
        return;
    }
    $('people-h').textContent = `People in #${app.current}`;
    const members = app.client?.members(app.current) ?? [];
    if (members.length === 0) ul.append(el('li', 'muted', 'Nobody yet.'));
    for (const user of members) {
        const li = el('li', 'person', user === app.me.user ? `${user} (you)` : user);
        li.dataset.user = user;
        ul.append(li);
    }
}

// ---- connection state ----

function showState(s) {
    const p = $('conn');
    p.dataset.state = s.state;
    switch (s.state) {
        case 'connecting':
            p.textContent = s.attempt ? `Connecting (attempt ${s.attempt + 1})…` : 'Connecting…';
            break;
        case 'open':
            p.textContent = 'Connected';
            break;
        case 'reconnecting':
            p.textContent = `Connection lost: retrying in ${(s.delayMs / 1000).toFixed(1)} s`;
            break;
        case 'closed':
            p.textContent = 'Disconnected';
            break;
        default:
            p.textContent = s.state;
    }
}

// ---- sign in / out ----

async function devToken(tenant, user) {
    const r = await fetch(`/dev/token?tenant=${encodeURIComponent(tenant)}&sub=${encodeURIComponent(user)}`, { cache: 'no-store' });
    if (r.status === 404) {
        throw new Error('This gateway does not issue development tokens (start it in development mode, as make run does), so paste a token.');
    }
    if (!r.ok) throw new Error(`Token request failed: HTTP ${r.status}`);
    const body = await r.json();
    if (typeof body.token !== 'string') throw new Error('Token response without a token');
    return body.token;
}

// The claims of a JWT (unverified: only to show who is signed in).
function jwtClaims(token) {
    try {
        const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
        return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
    } catch {
        return {};
    }
}

async function signIn(ev) {
    ev.preventDefault();
    const err = $('signin-error');
    err.textContent = '';
    const pasted = $('token').value.trim();
    const fields = [[$('first-room'), 'Room']];
    if (!pasted) fields.unshift([$('tenant'), 'Tenant'], [$('user'), 'User name']);
    for (const [input, label] of fields) {
        const ok = isValidRoom(input.value.trim());
        input.setAttribute('aria-invalid', ok ? 'false' : 'true');
        if (!ok) {
            err.textContent = `${label}: use 1 to 64 letters, digits, _ or -.`;
            input.focus();
            return;
        }
    }
    let tenant = $('tenant').value.trim();
    let user = $('user').value.trim();
    const room = $('first-room').value.trim();
    $('signin-btn').disabled = true;
    let token;
    try {
        token = pasted || (await devToken(tenant, user));
    } catch (e) {
        err.textContent = e.message;
        $('signin-btn').disabled = false;
        $('token-box').open = true;
        return;
    } finally {
        $('signin-btn').disabled = false;
    }
    if (pasted) {
        const claims = jwtClaims(pasted);
        tenant = claims.tenant ?? tenant;
        user = claims.sub ?? user;
    } else {
        try {
            localStorage.setItem('sluice.demo', JSON.stringify({ tenant, user, room }));
        } catch {
            /* storage may be off */
        }
    }
    $('token').value = '';
    // A development token is kept until it is about to expire or the gateway
    // refuses it; then a new one is fetched before the next connection.
    let current = token;
    const tokenSource = pasted
        ? pasted
        : async ({ refused = false } = {}) => {
              const exp = jwtClaims(current).exp;
              if (refused || (Number.isFinite(exp) && exp * 1000 < Date.now() + 60000)) current = await devToken(tenant, user);
              return current;
          };
    start({ tenant, user, room, token: tokenSource });
}

function start({ tenant, user, room, token }) {
    app.me = { tenant, user };
    const client = new SluiceClient({ token });
    app.client = client;
    client.on('state', showState);
    client.on('welcome', (w) => {
        if (w.resumed) notice('Reconnected: the conversation resumed where it left off.');
        $('whoami').textContent = `${user} @ ${tenant}`;
    });
    client.on('message', onMessage);
    client.on('reply', onReply);
    client.on('members', ({ room: r }) => {
        if (r === app.current) renderPeople();
    });
    client.on('busy', (b) => {
        const secs = (b.retry_after_ms / 1000).toFixed(1);
        if (b.scope === 'send') notice(`Busy (${b.reason}): your message will be sent again in ${secs} s.`, { kind: 'warn' });
        else if (b.scope === 'agent') notice(`${b.agent} is busy (${b.reason}); try again in ${secs} s.`, { kind: 'warn' });
        else notice(`Busy (${b.reason}): retrying in ${secs} s.`, { kind: 'warn' });
    });
    client.on('gap', (g) => {
        const where = g.ch === 's' ? 'the private conversation' : `#${channelRoom(g.ch)}`;
        notice(`Some events of ${where} are no longer available (${g.from}–${g.to}).`, { kind: 'warn', ms: 0 });
    });
    client.on('reconnect', (r) => notice(`The server is restarting; moving over in ${(r.after_ms / 1000).toFixed(1)} s.`));
    client.on('disconnected', (d) => {
        if (!d.willReconnect) notice(`Signed out by the server (${d.reason || d.code}).`, { kind: 'error', ms: 0 });
    });
    client.on('error', (e) => {
        // Connection trouble shows in the connection state, not as errors.
        if (['disconnected', 'disconnected_by_server', 'timeout', 'closed', 'token', 'connect'].includes(e.code)) return;
        if (e.frame?.id) markFailed(e.frame.id, e.message);
        if (e.code !== 'forbidden') notice(`Error: ${e.message}`, { kind: 'error' });
    });
    client.connect().catch((e) => {
        if (e.code === 'unauthorized') {
            signOut();
            $('signin-error').textContent = 'The token was refused.';
        }
    });

    $('signin-view').hidden = true;
    $('chat-view').hidden = false;
    $('whoami').hidden = false;
    $('whoami').textContent = `${user} @ ${tenant}`;
    $('signout').hidden = false;
    ensureConv(PRIVATE);
    joinRoom(room);
    $('text').focus();
}

function markFailed(id, message) {
    for (const li of app.items.values()) {
        if (li.dataset.msgId === id && li.dataset.pending === '1') {
            li.classList.add('failed');
            li.querySelector('.status').textContent = `not sent: ${message}`;
            delete li.dataset.pending;
        }
    }
}

function signOut() {
    app.client?.close();
    app.client = null;
    for (const c of app.convs.values()) {
        c.wrap.remove();
        c.li.remove();
    }
    app.convs.clear();
    app.items.clear();
    app.replies.clear();
    app.current = null;
    $('chat-view').hidden = true;
    $('signin-view').hidden = false;
    $('whoami').hidden = true;
    $('signout').hidden = true;
    $('notices').replaceChildren();
    showState({ state: 'idle' });
    $('conn').textContent = 'Not connected';
    $('user').focus();
}

// ---- composer ----

function sendCurrent(ev) {
    ev?.preventDefault();
    const box = $('text');
    const text = box.value.trim();
    if (!text || !app.client) return;
    const room = app.current === PRIVATE ? undefined : app.current;
    let handle;
    try {
        handle = app.client.send(text, { room });
    } catch (e) {
        notice(`Not sent: ${e.message}`, { kind: 'error' });
        return;
    }
    box.value = '';
    const conv = ensureConv(app.current);
    const m = { ch: conv.ch, id: handle.id, from: { user: app.me.user }, text, ts: Date.now() };
    conv.log.append(messageItem(m, { pending: true }));
    scrollToEnd(conv, true);
    handle.accepted.then(
        () => {
            const li = app.items.get(msgKey(m));
            if (li?.dataset.pending === '1') li.querySelector('.status').textContent = 'sent';
        },
        () => {},
    );
}

function onComposerKey(ev) {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        sendCurrent();
    } else if (ev.key === 'Escape') {
        ev.preventDefault();
        stopMine();
    }
}

function onJoin(ev) {
    ev.preventDefault();
    const input = $('join-room');
    const name = input.value.trim();
    $('join-error').textContent = '';
    if (!isValidRoom(name)) {
        input.setAttribute('aria-invalid', 'true');
        $('join-error').textContent = 'Room names are 1 to 64 letters, digits, _ or -.';
        input.focus();
        return;
    }
    input.removeAttribute('aria-invalid');
    input.value = '';
    joinRoom(name);
    $('text').focus();
}

function prefill() {
    const params = new URLSearchParams(location.search);
    let saved = {};
    try {
        saved = JSON.parse(localStorage.getItem('sluice.demo') || '{}');
    } catch {
        saved = {};
    }
    $('tenant').value = params.get('tenant') ?? saved.tenant ?? 'demo';
    $('user').value = params.get('user') ?? saved.user ?? `user-${Math.random().toString(36).slice(2, 6)}`;
    $('first-room').value = params.get('room') ?? saved.room ?? 'lobby';
}

$('signin').addEventListener('submit', signIn);
$('signout').addEventListener('click', signOut);
$('composer').addEventListener('submit', sendCurrent);
$('text').addEventListener('keydown', onComposerKey);
$('stop-all').addEventListener('click', stopMine);
$('join-form').addEventListener('submit', onJoin);
prefill();
$('user').focus();
