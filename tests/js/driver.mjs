// A long-lived driver of the official socket.io-client, remote-controlled by pytest.
//
// One process serves a whole pytest run: it listens on 127.0.0.1 (port printed on stdout as
// {"type": "listening", "port": N}) and every TCP connection to it is a *session* (one test)
// with its own clients. Commands arrive as JSON lines; everything the session's clients see
// leaves as JSON lines on the same connection. Binary values travel as {"$bin": "<base64>"} both
// ways. When a session's connection closes, its clients disconnect; when stdin closes, the
// process exits.
//
// Commands:
//   {"cmd": "connect", "id", "url", "namespace", "opts", "replies"}
//       a new client (its own Manager, so its own Engine.IO connection), or with "share": id,
//       another namespace multiplexed on that client's Manager. "replies" answers server-to-
//       client acks per event: {"args": [...]} sends those, {"echo": true} the received args.
//   {"cmd": "emit", "id", "event", "args", "ref"?, "timeout"?}  with "ref": ask for an ack
//   {"cmd": "burst", "id", "event", "count"}    emit event(i) for i < count in one tick
//   {"cmd": "answer", "id", "ackRef", "args"}   answer a server ack request by hand
//   {"cmd": "info", "id", "ref"}                connected, sid, current transport
//   {"cmd": "retry", "id", "auth"}              set socket.auth and call socket.connect() again
//   {"cmd": "cut", "id", "how"}                 lose the connection without a deliberate
//       disconnect: "close" closes the Engine.IO connection (socket.io.engine.close()), "drop"
//       destroys the TCP socket under a WebSocket; the client then reconnects by itself if its
//       "opts" turned reconnection on, else with "reconnect"
//   {"cmd": "reconnect", "id", "url"?}          socket.connect() again, auth unchanged (a client
//       that lost its connection presents its pid and last offset: connection state recovery),
//       with "url": to that base URL (another node) instead
//   {"cmd": "disconnect", "id"}
//
// Output types (each with the client "id" it concerns): ready, connect (with the socket's "sid",
// its Engine.IO session's id "engine", "recovered" (socket.recovered) and, for the tests of
// connection state recovery, the private "pid" the client keeps), connect_error,
// disconnect, upgrade, ping, event (with "ackRef" when the server asked for an ack and no
// automatic reply was configured), ack (the answer to an emit with "ref"), info, error.

import { createServer } from "node:net";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

function encode(value) {
  if (Buffer.isBuffer(value)) return { $bin: value.toString("base64") };
  if (value instanceof ArrayBuffer) return { $bin: Buffer.from(value).toString("base64") };
  if (ArrayBuffer.isView(value)) {
    return { $bin: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  }
  if (Array.isArray(value)) return value.map(encode);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encode(v)]));
  }
  return value === undefined ? null : value;
}

function decode(value) {
  if (Array.isArray(value)) return value.map(decode);
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$bin") return Buffer.from(value.$bin, "base64");
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, decode(v)]));
  }
  return value;
}

function transportOf(socket) {
  return socket.io.engine?.transport?.name ?? null;
}

/** One test's clients, fed by `handle(line)`, reporting through `out`. */
class Session {
  constructor(write) {
    this.write = write;
    this.clients = new Map();
    this.pendingAcks = new Map();
    this.nextAckRef = 0;
  }

  out(obj) {
    this.write(JSON.stringify(obj) + "\n");
  }

  handle(line) {
    if (!line.trim()) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
      const run = this[`cmd_${cmd.cmd}`];
      if (typeof run !== "function") throw new Error(`unknown command ${cmd.cmd}`);
      run.call(this, cmd);
    } catch (err) {
      this.out({ id: cmd?.id ?? null, type: "error", message: String(err?.stack ?? err) });
    }
  }

  close() {
    for (const { socket } of this.clients.values()) socket.disconnect();
    this.clients.clear();
    this.pendingAcks.clear();
  }

  client(cmd) {
    const c = this.clients.get(cmd.id);
    if (!c) throw new Error(`no client ${cmd.id}`);
    return c;
  }

  cmd_connect(cmd) {
    const { id } = cmd;
    if (this.clients.has(id)) throw new Error(`client ${id} exists`);
    const opts = { forceNew: true, reconnection: false, ...(cmd.opts ?? {}) };
    if (opts.auth !== undefined) opts.auth = decode(opts.auth);
    let socket;
    if (cmd.share !== undefined) {
      socket = this.client({ id: cmd.share }).socket.io.socket(cmd.namespace ?? "/", {
        auth: opts.auth,
      });
    } else {
      socket = io(cmd.url + (cmd.namespace ?? ""), opts);
      // Heartbeats and transport upgrades of this Manager's Engine.IO connection.
      socket.io.on("ping", () => this.out({ id, type: "ping" }));
      socket.io.on("open", () => {
        const engine = socket.io.engine;
        engine.on("upgrade", (transport) =>
          this.out({ id, type: "upgrade", transport: transport.name, current: engine.transport.name }),
        );
      });
    }
    const client = { socket, replies: cmd.replies ?? {} };
    this.clients.set(id, client);
    socket.on("connect", () =>
      this.out({
        id,
        type: "connect",
        sid: socket.id,
        engine: socket.io.engine?.id ?? null,
        transport: transportOf(socket),
        recovered: Boolean(socket.recovered),
        pid: socket._pid ?? null,
      }),
    );
    socket.on("connect_error", (err) =>
      this.out({ id, type: "connect_error", message: err.message, data: encode(err.data ?? null) }),
    );
    socket.on("disconnect", (reason) => this.out({ id, type: "disconnect", reason }));
    socket.onAny((event, ...args) => {
      const ack = typeof args.at(-1) === "function" ? args.pop() : null;
      const msg = { id, type: "event", event, args: encode(args) };
      if (ack !== null) {
        const spec = client.replies[event];
        if (spec?.echo) {
          ack(...args);
          msg.answered = true;
        } else if (spec?.args) {
          ack(...decode(spec.args));
          msg.answered = true;
        } else {
          msg.ackRef = this.nextAckRef++;
          this.pendingAcks.set(msg.ackRef, ack);
        }
      }
      this.out(msg);
    });
  }

  cmd_emit(cmd) {
    const { socket } = this.client(cmd);
    const args = decode(cmd.args ?? []);
    if (cmd.ref === undefined) {
      socket.emit(cmd.event, ...args);
      return;
    }
    socket.timeout(cmd.timeout ?? 5000).emit(cmd.event, ...args, (err, ...res) =>
      this.out({ id: cmd.id, type: "ack", ref: cmd.ref, error: err?.message ?? null, args: encode(res) }),
    );
  }

  cmd_burst(cmd) {
    // Many emits in one tick: over polling they leave in as few POST bodies as the client likes.
    const { socket } = this.client(cmd);
    for (let i = 0; i < cmd.count; i++) socket.emit(cmd.event, i);
  }

  cmd_answer(cmd) {
    const ack = this.pendingAcks.get(cmd.ackRef);
    if (!ack) throw new Error(`no pending ack ${cmd.ackRef}`);
    this.pendingAcks.delete(cmd.ackRef);
    ack(...decode(cmd.args ?? []));
  }

  cmd_info(cmd) {
    const { socket } = this.client(cmd);
    this.out({
      id: cmd.id,
      type: "info",
      ref: cmd.ref,
      connected: socket.connected,
      sid: socket.id ?? null,
      transport: transportOf(socket),
    });
  }

  cmd_retry(cmd) {
    // socket.io-client's documented retry after a refused CONNECT: new auth, connect() again.
    const { socket } = this.client(cmd);
    socket.auth = decode(cmd.auth);
    socket.connect();
  }

  cmd_cut(cmd) {
    const engine = this.client(cmd).socket.io.engine;
    if (!engine) throw new Error(`client ${cmd.id} has no connection to cut`);
    if (cmd.how === "drop") {
      const raw = engine.transport?.ws?._socket; // the `ws` package's net.Socket
      if (!raw) throw new Error(`client ${cmd.id} is not on a WebSocket`);
      raw.destroy();
    } else {
      engine.close();
    }
  }

  cmd_reconnect(cmd) {
    const { socket } = this.client(cmd);
    // Another node's base URL: the Manager opens its next Engine.IO connection there.
    if (cmd.url) socket.io.uri = cmd.url;
    socket.connect();
  }

  cmd_disconnect(cmd) {
    this.client(cmd).socket.disconnect();
  }
}

const sessions = new Set();

const server = createServer((conn) => {
  conn.setNoDelay(true);
  const session = new Session((text) => {
    if (!conn.destroyed) conn.write(text);
  });
  sessions.add(session);
  const lines = createInterface({ input: conn });
  lines.on("line", (line) => session.handle(line));
  // A test that ends abruptly resets its connection: that ends the session, not the driver.
  lines.on("error", () => {});
  conn.on("error", () => {});
  conn.on("close", () => {
    sessions.delete(session);
    session.close();
  });
  session.out({ type: "ready" });
});

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ type: "listening", port: server.address().port }) + "\n");
});

createInterface({ input: process.stdin }).on("close", () => {
  for (const session of sessions) session.close();
  server.close();
  // Leave a moment for the last DISCONNECT packets and close frames, then go.
  setTimeout(() => process.exit(0), 100).unref();
});
