// socket.io peer for sluice-bench: a room per channel, fan-out to members.
// Usage: node server.js PORT   (listens on 127.0.0.1 only)
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.js PORT');
  process.exit(2);
}

const httpServer = http.createServer((req, res) => {
  res.writeHead(req.url === '/healthz' ? 200 : 404);
  res.end();
});
const io = new Server(httpServer, {
  transports: ['websocket'], // the bench speaks engine.io over a websocket only
  perMessageDeflate: false,
  pingInterval: 25000,
  pingTimeout: 20000,
  serveClient: false,
});

io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    socket.join(String(room));
    if (typeof ack === 'function') ack(true);
  });
  socket.on('pub', (room, text) => {
    io.to(String(room)).emit('msg', text);
  });
});

httpServer.listen(port, '127.0.0.1', () => {
  console.log(`socket.io peer on 127.0.0.1:${port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    io.close();
    httpServer.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
