// A protocol mock of sluice-gateway for developing sluice-bench without the
// real stack: hello/welcome (resume with replay), join/joined, send/accepted,
// room events, and an instant echo agent on the session channel. It checks
// nothing and stores everything in memory; it is never a benchmark peer.
// MOCK_NO_REPLAY=1 makes it lose what a member missed while away (so the
// storm's loss count can be seen to work).
// Usage: node mock-sluice.js PORT   (127.0.0.1 only; needs the ws package
// that socket.io installs under bench/peers/socketio/node_modules)
'use strict';
const path = require('path');
const { WebSocketServer } = require(path.join(__dirname, 'socketio/node_modules/ws'));
const crypto = require('crypto');

const port = Number(process.argv[2]);
const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/v1/ws' });
const sessions = new Map(); // id -> {ws, rooms:Set, seqS, token}
const rooms = new Map(); // name -> {seq, members:Set(session), history:[]}

function room(name) {
  if (!rooms.has(name)) rooms.set(name, { seq: 0, members: new Set(), history: [] });
  return rooms.get(name);
}

wss.on('connection', (ws) => {
  let sess = null;
  ws.on('message', (data) => {
    let m;
    try { m = JSON.parse(data.toString()); } catch (e) { ws.close(4400); return; }
    if (!sess) {
      if (m.type !== 'hello') { ws.close(4401); return; }
      let resumed = false;
      if (m.resume && sessions.has(m.resume.session)) {
        sess = sessions.get(m.resume.session);
        resumed = true;
      } else {
        sess = { id: crypto.randomBytes(8).toString('hex'), rooms: new Set(), seqS: 0 };
        sessions.set(sess.id, sess);
      }
      sess.ws = ws;
      ws.send(JSON.stringify({ type: 'welcome', session: sess.id, resume_token: 'rt-' + sess.id,
        heartbeat_ms: 25000, resumed, limits: { max_frame: 65536, rate: 20, burst: 40 } }));
      if (resumed && !process.env.MOCK_NO_REPLAY) {
        const pos = m.resume.positions || {};
        for (const rn of sess.rooms) {
          const r = room(rn);
          const from = pos['r:' + rn] || 0;
          for (const ev of r.history) if (ev.seq > from) ws.send(JSON.stringify(ev));
        }
      }
      return;
    }
    if (m.type === 'join') {
      const r = room(m.room);
      r.members.add(sess.id);
      sess.rooms.add(m.room);
      ws.send(JSON.stringify({ type: 'joined', room: m.room, ch: 'r:' + m.room, seq: r.seq, members: [] }));
    } else if (m.type === 'send') {
      ws.send(JSON.stringify({ type: 'accepted', id: m.id, event: 'e' + m.id, duplicate: false }));
      if (m.room) {
        const r = room(m.room);
        r.seq += 1;
        const ev = { type: 'event', ch: 'r:' + m.room, seq: r.seq, kind: 'message', id: m.id,
          event: 'e', from: { user: 'u' }, text: m.text, ts: Date.now() };
        r.history.push(ev);
        if (r.history.length > 100000) r.history.shift();
        const s = JSON.stringify(ev);
        for (const sid of r.members) {
          const o = sessions.get(sid);
          if (o && o.ws && o.ws.readyState === 1) o.ws.send(s);
        }
      } else {
        sess.seqS += 1;
        ws.send(JSON.stringify({ type: 'event', ch: 's', seq: sess.seqS, kind: 'token', reply: 'r' + m.id, to: m.id, agent: 'echo', attempt: 1, text: m.text.slice(0, 8) }));
        sess.seqS += 1;
        ws.send(JSON.stringify({ type: 'event', ch: 's', seq: sess.seqS, kind: 'reply', reply: 'r' + m.id, to: m.id, agent: 'echo', text: m.text, final: true }));
      }
    } else if (m.type === 'ping') {
      ws.send('{"type":"pong"}');
    }
  });
  ws.on('close', () => { if (sess && sess.ws === ws) sess.ws = null; });
});
wss.on('listening', () => console.log('mock sluice on ' + port));
