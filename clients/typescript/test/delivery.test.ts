/** Node mode against the real ingest process and broker (through the harness). */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer, type Server, type Socket } from "node:net";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { EventsDropped, Flywheel, type FlywheelOptions } from "../src/index.js";
import { ACME_KEY, Ingest, until } from "./harness.js";

const FAST: Partial<FlywheelOptions> = { lingerMs: 20, backoffMaxMs: 500, exitTimeoutMs: null };
const here = dirname(fileURLToPath(import.meta.url));

/** Each of `ids` on Kafka exactly once, and `total` events there in all. */
function once(counts: Map<string, number>, ids: readonly string[], total = ids.length): void {
  const wrong = ids.filter((id) => counts.get(id) !== 1);
  assert.equal(wrong.length, 0, `${wrong.length} events not on Kafka exactly once`);
  assert.equal([...counts.values()].reduce((a, b) => a + b, 0), total);
}

test("every call lands once, with its fields", async () => {
  const ingest = await Ingest.create();
  const fw = new Flywheel({ url: ingest.url, apiKey: ACME_KEY, ...FAST });
  const runId = fw.logRun([{ role: "user", content: "2+2?" }], "5", "m", { feature: "math" });
  const ids = [
    fw.thumbs(runId, "down", { correction: "4" }),
    fw.rate(runId, 2),
    fw.edit(runId, { original: "5", final: "4" }),
    fw.regenerated(runId, "r2"),
    fw.signal(runId, "dwell", 1500),
    fw.signal(runId, "copy"),
  ];
  assert.equal(await fw.flush(30_000), true);
  assert.equal(fw.stats().delivered, 7);
  await fw.close();
  once(await ingest.landed(ids), ids, 7); // and the run, whose event id is not returned
});

for (const signal of ["SIGTERM", "SIGKILL"] as const) {
  test(`ingest ${signal === "SIGTERM" ? "stopped" : "killed"} and restarted while the app sends`, async () => {
    const ingest = await Ingest.create();
    const drops: EventsDropped[] = [];
    const fw = new Flywheel({ url: ingest.url, apiKey: ACME_KEY, ...FAST, maxQueueEvents: 50_000, onError: (e) => drops.push(e) });
    const ids: string[] = [];
    let stopped = false;
    const sender = (async () => {
      for (let i = 0; i < 3000; i++) {
        ids.push(fw.thumbs(`run-${i}`, "up"), fw.signal(`run-${i}`, "copy"));
        if (i % 20 === 19) await new Promise((r) => setTimeout(r, 10));
        if (i === 1000) {
          await until(() => fw.stats().delivered > 1000, 60_000, "first deliveries");
          await ingest.stop(signal);
          stopped = true;
        }
      }
    })();
    await until(() => stopped && fw.stats().retries >= 2, 60_000, "retries during the outage");
    await ingest.start();
    await sender;
    assert.equal(await fw.flush(120_000), true);
    await fw.close();
    assert.equal(drops.length, 0);
    const counts = await ingest.landed(ids, 60);
    const lost = ids.filter((id) => !counts.get(id));
    assert.equal(lost.length, 0, `${lost.length} events lost`);
    const copies = [...counts.values()].reduce((a, b) => a + b, 0) - ids.length;
    console.log(`${signal}: ${ids.length} events, 0 lost, ${copies} extra copies (same event_id)`);
    if (signal === "SIGTERM") assert.equal(copies, 0);
    else assert.ok(copies <= 2 * 500);
  });
}

test("refused events are reported with their field paths and never retried", async () => {
  const ingest = await Ingest.create();
  const drops: EventsDropped[] = [];
  const fw = new Flywheel({ url: ingest.url, apiKey: ACME_KEY, ...FAST, lingerMs: 5_000, onError: (e) => drops.push(e) });
  const good = Array.from({ length: 9 }, (_, i) => fw.signal(`run-${i}`, "copy"));
  const bad = fw.signal("x".repeat(300), "copy");
  good.push(fw.signal("run-9", "accept"));
  assert.equal(await fw.flush(30_000), true);
  const stats = fw.stats();
  assert.deepEqual([stats.delivered, stats.rejected, stats.retries, stats.requests], [10, 1, 0, 2]);
  assert.equal(drops.length, 1);
  const [drop] = drops;
  assert.equal(drop!.reason, "rejected");
  assert.equal(drop!.status, 422);
  assert.deepEqual(drop!.eventIds, [bad]);
  assert.deepEqual(drop!.errors[0]!.loc, ["body", "events", 9, "run_id"]);
  await fw.close();
  once(await ingest.landed(good), good);
});

async function silentServer(): Promise<{ url: string; server: Server; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => sockets.add(socket)); // accepts, never answers
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const { port } = server.address() as { port: number };
  return { url: `http://127.0.0.1:${port}`, server, sockets };
}

for (const kind of ["refusing", "silent"] as const) {
  test(`close() keeps its timeout when the server is ${kind}`, async () => {
    const { url, server, sockets } = await silentServer();
    if (kind === "refusing") await new Promise((ok) => server.close(ok));
    const drops: EventsDropped[] = [];
    const fw = new Flywheel({ url, apiKey: ACME_KEY, lingerMs: 10, onError: (e) => drops.push(e), exitTimeoutMs: null });
    const ids = Array.from({ length: 100 }, (_, i) => fw.signal(`r${i}`, "copy"));
    await until(() => fw.stats().requests >= 1, 10_000, "a first request");
    const started = Date.now();
    assert.equal(await fw.close(1_000), false);
    const elapsed = Date.now() - started;
    server.close();
    for (const socket of sockets) socket.destroy();
    assert.ok(elapsed < 1_500, `close(1000) took ${elapsed} ms`);
    assert.equal(fw.stats().droppedClosed, 100);
    assert.deepEqual(new Set(drops.filter((d) => d.reason === "closed").flatMap((d) => d.eventIds)), new Set(ids));
    fw.signal("r", "copy"); // after close: dropped and counted, never thrown
    assert.equal(fw.stats().droppedClosed, 101);
  });
}

test("a full queue drops new events, counted and reported; waitForRoom waits", async () => {
  const ingest = await Ingest.create({ start: false });
  const drops: EventsDropped[] = [];
  const fw = new Flywheel({ url: ingest.url, apiKey: ACME_KEY, ...FAST, maxBatchEvents: 100, maxQueueEvents: 1000, onError: (e) => drops.push(e) });
  const ids = Array.from({ length: 1500 }, (_, i) => fw.signal(`r${i}`, "copy"));
  assert.equal(fw.stats().droppedOverflow, 500);
  const dropped = new Set(drops.flatMap((d) => d.eventIds));
  assert.deepEqual(dropped, new Set(ids.slice(1000)));
  assert.equal(await fw.waitForRoom(200), false); // the server is still away
  await ingest.start();
  assert.equal(await fw.waitForRoom(60_000), true);
  assert.equal(await fw.flush(60_000), true);
  await fw.close();
  once(await ingest.landed(ids.slice(0, 1000)), ids.slice(0, 1000));
});

test("Retry-After is honoured", async () => {
  const ingest = await Ingest.create({
    apiKeys: [{ tenant: "acme", key_sha256: await sha256(ACME_KEY), rate_per_s: 100, burst: 100 }],
    settings: { retry_after_s: 1 },
  });
  const fw = new Flywheel({ url: ingest.url, apiKey: ACME_KEY, ...FAST, maxBatchEvents: 50 });
  const started = Date.now();
  const ids = Array.from({ length: 300 }, (_, i) => fw.signal(`r${i}`, "copy"));
  assert.equal(await fw.flush(60_000), true);
  assert.ok(Date.now() - started >= 1_000, "the client waited at least what Retry-After said");
  assert.ok(fw.stats().retries >= 1);
  await fw.close();
  once(await ingest.landed(ids), ids);
});

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Buffer.from(digest).toString("hex");
}

function runApp(url: string, count: number, exitTimeoutMs: number): Promise<{ ids: string[]; ms: number }> {
  const started = Date.now();
  const child = spawn(process.execPath, [join(here, "app.js"), url, ACME_KEY, String(count), String(exitTimeoutMs)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
  return new Promise((ok, fail) =>
    child.once("exit", (code) =>
      code === 0 ? ok({ ids: out.split("\n").filter(Boolean), ms: Date.now() - started }) : fail(new Error(`app exited ${code}`)),
    ),
  );
}

test("what a Node app queued is delivered when its event loop runs dry", async () => {
  const ingest = await Ingest.create();
  const { ids } = await runApp(ingest.url, 500, 30_000);
  assert.equal(ids.length, 500);
  once(await ingest.landed(ids), ids);
});

test("the exit flush waits no longer than exitTimeoutMs when the server is away", async () => {
  const ingest = await Ingest.create({ start: false });
  const { ids, ms } = await runApp(ingest.url, 50, 1_000);
  assert.equal(ids.length, 50);
  assert.ok(ms < 10_000, `the app took ${ms} ms to exit`);
});
