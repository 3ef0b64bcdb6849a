// roomcast's relay contract on a socket.io server, shared by server.mjs and cluster-server.mjs.
//
// Clients get the same `join`, `leave` and `publish` events as on a roomcast node with the
// default relay policy (publish = "members", echo off): see roomcast/node/relay.py.

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

/** Adds the relay's event handlers to every socket of `io`'s main namespace. */
export function attachRelay(io) {
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
      // With an adapter (cluster-server.mjs), this reaches the members on every process.
      socket.to(names).emit(event, message.data);
      reply({ ok: true });
    });
  });
}

/** Closes `io` and exits on SIGINT / SIGTERM (`cleanup` first, when given). */
export function exitOnSignals(io, cleanup = async () => {}) {
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.on(signal, () => {
      io.close();
      cleanup().finally(() => process.exit(0));
    });
  }
}
