/** Signing (v2) and gzip against the real ingest, and the signature against node:crypto. */

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { gunzipSync } from "node:zlib";
import { test } from "node:test";

import { EventsDropped, Flywheel } from "../src/index.js";
import { makeConfig } from "../src/config.js";
import { prepare, sign } from "../src/wire.js";
import { ACME_KEY, Ingest, SIGNED_KEY, SIGNING_SECRET } from "./harness.js";

const QUICK = { lingerMs: 20, exitTimeoutMs: null, maxBatchEvents: 200 };
const TEXT = "The same helpful answer, repeated as telemetry usually is. ".repeat(4);

function log(fw: Flywheel, count: number): string[] {
  return Array.from({ length: count }, (_, i) => fw.thumbs(`run-${i}`, "down", { correction: `${TEXT} #${i}` }));
}

test("the signature covers timestamp, method, path and the bytes on the wire", async () => {
  const config = makeConfig({ url: "http://h/prefix", apiKey: "k", signingSecret: "s3cret", gzipMinBytes: 1024 });
  const body = `{"events":[${Array(2000).fill('{"a":1}').join(",")}]}`;
  const { body: wire, headers } = await prepare(body, config, () => 1767225600250);
  assert.equal(headers["content-encoding"], "gzip");
  assert.equal(gunzipSync(wire).toString(), body);
  assert.equal(headers["x-flywheel-timestamp"], "1767225600.250");
  const expected =
    "sha256=" +
    createHmac("sha256", "s3cret")
      .update(Buffer.concat([Buffer.from("1767225600.250\nPOST\n/prefix/v1/events\n"), wire]))
      .digest("hex");
  assert.equal(headers["x-flywheel-signature"], expected);
  assert.equal(await sign("s3cret", "1767225600.250", "post", "/prefix/v1/events", wire), expected);
});

test("signed, gzipped batches are taken, and gzip shrinks the wire", async () => {
  const ingest = await Ingest.create();
  const fw = new Flywheel({ url: ingest.url, apiKey: SIGNED_KEY, signingSecret: SIGNING_SECRET, gzipMinBytes: 1024, ...QUICK });
  const ids = log(fw, 1000);
  assert.equal(await fw.flush(60_000), true);
  const stats = fw.stats();
  await fw.close();
  assert.deepEqual([stats.delivered, stats.rejected, stats.retries], [1000, 0, 0]);
  assert.ok(stats.bytesSent < (1000 * 300) / 4, `${stats.bytesSent} bytes sent: not compressed`);
  const counts = await ingest.landed(ids);
  assert.equal(ids.filter((id) => counts.get(id) !== 1).length, 0);
});

test("a wrong signing secret is refused once and reported", async () => {
  const ingest = await Ingest.create();
  const drops: EventsDropped[] = [];
  const fw = new Flywheel({ url: ingest.url, apiKey: SIGNED_KEY, signingSecret: "wrong", onError: (e) => drops.push(e), ...QUICK });
  const ids = log(fw, 10);
  assert.equal(await fw.flush(30_000), true);
  const stats = fw.stats();
  await fw.close();
  assert.deepEqual([stats.rejected, stats.retries, stats.delivered], [10, 0, 0]);
  assert.deepEqual(new Set(drops.flatMap((d) => d.eventIds)), new Set(ids));
  assert.equal(drops[0]!.status, 401);
  assert.equal(drops[0]!.errors[0]!.type, "bad_signature");
});

test("without gzip the wire carries the raw JSON", async () => {
  const ingest = await Ingest.create();
  const fw = new Flywheel({ url: ingest.url, apiKey: ACME_KEY, gzipMinBytes: null, ...QUICK });
  log(fw, 200);
  assert.equal(await fw.flush(30_000), true);
  assert.ok(fw.stats().bytesSent > 200 * 300);
  await fw.close();
});
