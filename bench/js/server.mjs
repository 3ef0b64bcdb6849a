// The official Socket.IO v4 server with roomcast's relay contract, for `make bench`.
//
//   node bench/js/server.mjs --port 3001
//
// Clients get the same `join` and `publish` events as on a roomcast node with the default relay
// policy (publish = "members", echo off): see roomcast/node/relay.py.
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";

const { values } = parseArgs({
  options: {
    port: { type: "string", default: "3001" },
    host: { type: "string", default: "127.0.0.1" },
  },
});

const RESERVED = new Set([
  "connect",
  "connect_error",
  "disconnect",
  "disconnecting",
  "newListener",
  "removeListener",
]);

function roomNames(value) {
  const names = typeof value === "string" ? [value] : value;
  if (!Array.isArray(names) || names.length === 0) return null;
  for (const name of names) {
    if (typeof name !== "string" || name.length === 0 || name.length > 256) return null;
  }
  return names;
}

function roomsAck(socket) {
  return { ok: true, rooms: [...socket.rooms].filter((r) => r !== socket.id).sort() };
}

const httpServer = createServer();
const io = new Server(httpServer, { serveClient: false });

io.on("connection", (socket) => {
  socket.on("join", (rooms, ack) => {
    const names = roomNames(rooms);
    const reply = typeof ack === "function" ? ack : () => {};
    if (names === null) return reply({ ok: false, error: "bad room" });
    socket.join(names);
    reply(roomsAck(socket));
  });

  socket.on("leave", (rooms, ack) => {
    const names = roomNames(rooms);
    const reply = typeof ack === "function" ? ack : () => {};
    if (names === null) return reply({ ok: false, error: "bad room" });
    for (const name of names) if (name !== socket.id) socket.leave(name);
    reply(roomsAck(socket));
  });

  socket.on("publish", (message, ack) => {
    const reply = typeof ack === "function" ? ack : () => {};
    if (message === null || typeof message !== "object") {
      return reply({ ok: false, error: "publish takes {room, event, data}" });
    }
    const names = roomNames(message.room);
    if (names === null) return reply({ ok: false, error: "bad room" });
    const event = message.event;
    if (typeof event !== "string" || event.length === 0 || RESERVED.has(event)) {
      return reply({ ok: false, error: "event must be a non-reserved name" });
    }
    for (const name of names) {
      if (!socket.rooms.has(name)) return reply({ ok: false, error: `not a member of ${name}` });
    }
    socket.to(names).emit(event, message.data);
    reply({ ok: true });
  });
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}

httpServer.listen(Number(values.port), values.host, () => {
  console.log(`socket.io ${values.host}:${values.port} ready`);
});
