// The official Socket.IO v4 server with roomcast's relay contract, for `make bench`.
//
//   node bench/js/server.mjs --port 3001
//
// Clients get the same `join` and `publish` events as on a roomcast node with the default relay
// policy (publish = "members", echo off): see relay.mjs and roomcast/node/relay.py.
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";
import { attachRelay, exitOnSignals } from "./relay.mjs";

const { values } = parseArgs({
  options: {
    port: { type: "string", default: "3001" },
    host: { type: "string", default: "127.0.0.1" },
  },
});

const httpServer = createServer();
const io = new Server(httpServer, { serveClient: false });
attachRelay(io);
exitOnSignals(io);

httpServer.listen(Number(values.port), values.host, () => {
  console.log(`socket.io ${values.host}:${values.port} ready`);
});
