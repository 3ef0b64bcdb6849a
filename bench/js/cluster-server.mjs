// One process of a socket.io cluster: the official Socket.IO v4 server with the official Redis
// adapter (@socket.io/redis-adapter over the `redis` client), and roomcast's relay contract.
//
//   node bench/js/cluster-server.mjs --port 3001 --redis redis://127.0.0.1:6379
//
// `make bench` (the cluster scenario) runs two of these against one redis-server: a publish
// reaches the members on this process directly and those on the other through Redis pub/sub,
// like a publish on a roomcast node reaches the other node through the router.
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";
import { attachRelay, exitOnSignals } from "./relay.mjs";

const { values } = parseArgs({
  options: {
    port: { type: "string", default: "3001" },
    host: { type: "string", default: "127.0.0.1" },
    redis: { type: "string", default: "redis://127.0.0.1:6379" },
  },
});

const pubClient = createClient({ url: values.redis });
const subClient = pubClient.duplicate();
for (const client of [pubClient, subClient]) {
  client.on("error", (err) => console.error("redis:", err.message));
}
await Promise.all([pubClient.connect(), subClient.connect()]);

const httpServer = createServer();
const io = new Server(httpServer, { serveClient: false, adapter: createAdapter(pubClient, subClient) });
attachRelay(io);
exitOnSignals(io, async () => {
  pubClient.destroy();
  subClient.destroy();
});

httpServer.listen(Number(values.port), values.host, () => {
  console.log(`socket.io ${values.host}:${values.port} ready (redis adapter, ${values.redis})`);
});
