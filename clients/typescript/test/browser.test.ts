/**
 * Browser mode. Against the real ingest: what the SDK sends with a browser key (`?api_key=`,
 * `text/plain`, and a beacon's exact request) is taken, scopes and origins are enforced and
 * reported. Node is no browser, so the browser's own parts are played by the test: the
 * `Origin` header a browser adds, and `navigator.sendBeacon` as the request it makes. The
 * page-hide logic is tested on its own with a stubbed `window` (unit tests, last below).
 */

import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { EventsDropped, Flywheel, trackCopy, trackDwell, trackRegenerate, watchAbandon } from "../src/index.js";
import { BROWSER_KEY, BROWSER_ORIGIN, Ingest, until } from "./harness.js";

const realFetch = globalThis.fetch;
const g = globalThis as Record<string, unknown>;

/** What a browser adds to every request of a page served from `origin`. */
function browserFetch(origin: string): typeof fetch {
  return (input, init) => realFetch(input, { ...init, headers: { ...(init?.headers as object), origin } });
}

interface Beacon {
  url: string;
  type: string;
}

/** A page: window events and visibility, and `navigator.sendBeacon` making the browser's
 * request (POST, the Blob as body with its type as Content-Type, the page's Origin); with
 * no origin, beacons are only recorded (the unit tests). */
function installPage(origin: string | null): { page: EventTarget; beacons: Beacon[]; sent: Promise<Response>[] } {
  const page = new EventTarget();
  const beacons: Beacon[] = [];
  const sent: Promise<Response>[] = [];
  g.addEventListener = page.addEventListener.bind(page);
  g.removeEventListener = page.removeEventListener.bind(page);
  g.document = { visibilityState: "visible" };
  g.navigator = {
    sendBeacon: (url: string, data: Blob) => {
      beacons.push({ url, type: data.type });
      if (origin !== null) sent.push(realFetch(url, { method: "POST", body: data, headers: { origin } }));
      return true;
    },
  };
  return { page, beacons, sent };
}

afterEach(() => {
  globalThis.fetch = realFetch;
  for (const name of ["addEventListener", "removeEventListener", "document"]) delete g[name];
  Object.defineProperty(globalThis, "navigator", { value: undefined, configurable: true, writable: true });
});

test("a page's feedback is taken with its browser key; a run is out of its scopes", async () => {
  const ingest = await Ingest.create();
  globalThis.fetch = browserFetch(BROWSER_ORIGIN);
  const drops: EventsDropped[] = [];
  const fw = new Flywheel({ url: ingest.url, apiKey: BROWSER_KEY, mode: "browser", lingerMs: 20, onError: (e) => drops.push(e) });
  const ids = [fw.signal("run-1", "copy"), fw.signal("run-1", "dwell", 4200)];
  const run = fw.logRun("hi", "hello", "m", { runId: "run-2" }); // a page may not log runs
  ids.push(fw.thumbs("run-1", "up"));
  assert.equal(await fw.flush(30_000), true);
  await fw.close();
  assert.equal(fw.stats().delivered, 3);
  assert.equal(drops.length, 1);
  assert.equal(drops[0]!.status, 403);
  assert.equal(drops[0]!.errors[0]!.type, "scope_denied");
  assert.deepEqual(drops[0]!.errors[0]!.loc, ["body", "events", 2, "type"]);
  assert.equal(run, "run-2");
  const counts = await ingest.landed(ids);
  assert.equal(ids.filter((id) => counts.get(id) !== 1).length, 0);
});

test("a page from another origin is refused and told so", async () => {
  const ingest = await Ingest.create();
  globalThis.fetch = browserFetch("https://evil.example.com");
  const drops: EventsDropped[] = [];
  const fw = new Flywheel({ url: ingest.url, apiKey: BROWSER_KEY, mode: "browser", lingerMs: 20, onError: (e) => drops.push(e) });
  fw.signal("run-1", "copy");
  assert.equal(await fw.flush(30_000), true);
  await fw.close();
  assert.equal(drops[0]!.status, 403);
  assert.equal(drops[0]!.errors[0]!.type, "origin_denied");
});

test("on page hide, queued events leave by sendBeacon and are taken", async () => {
  const ingest = await Ingest.create();
  const { page, beacons, sent } = installPage(BROWSER_ORIGIN);
  const fw = new Flywheel({ url: ingest.url, apiKey: BROWSER_KEY, mode: "browser", lingerMs: 60_000 });
  const ids = Array.from({ length: 250 }, (_, i) => fw.signal(`run-${i}`, "copy"));
  page.dispatchEvent(new Event("pagehide"));
  assert.equal(beacons.length, 3); // 100 events per batch in browser mode
  assert.ok(beacons.every((b) => b.url === `${ingest.url}/v1/events?api_key=${BROWSER_KEY}`));
  assert.ok(beacons.every((b) => b.type === "text/plain;charset=utf-8"));
  const answers = await Promise.all(sent);
  assert.deepEqual(answers.map((a) => a.status), [202, 202, 202]);
  assert.equal(fw.stats().beaconed, 250);
  const counts = await ingest.landed(ids);
  assert.equal(ids.filter((id) => counts.get(id) !== 1).length, 0);
  await fw.close(100);
});

// -- the page logic alone (stubbed window; no server) ------------------------------------

function offlineClient(): Flywheel {
  return new Flywheel({ url: "http://127.0.0.1:9", apiKey: "k", mode: "browser", lingerMs: 60_000 });
}

test("unit: hidden page beacons, visible page does not", () => {
  const { page, beacons } = installPage(null);
  const fw = offlineClient();
  fw.signal("r", "copy");
  page.dispatchEvent(new Event("visibilitychange")); // still visible
  assert.equal(beacons.length, 0);
  (g.document as { visibilityState: string }).visibilityState = "hidden";
  page.dispatchEvent(new Event("visibilitychange"));
  assert.equal(beacons.length, 1);
  assert.equal(fw.stats().queued, 0);
});

test("unit: dwell counts visible time only, sent once at page hide", () => {
  const { page, beacons } = installPage(null);
  const fw = offlineClient();
  let now = 1_000;
  trackDwell(fw, "r", () => now);
  now += 3_000;
  (g.document as { visibilityState: string }).visibilityState = "hidden";
  page.dispatchEvent(new Event("visibilitychange"));
  now += 10_000; // hidden: not counted
  (g.document as { visibilityState: string }).visibilityState = "visible";
  page.dispatchEvent(new Event("visibilitychange"));
  now += 500;
  const before = beacons.length;
  page.dispatchEvent(new Event("pagehide"));
  assert.ok(beacons.length > before);
  assert.equal(fw.stats().beaconed, 1);
});

test("unit: abandon only when the page goes before settle; copy and regenerate clicks", async () => {
  const { page } = installPage(null);
  const fw = offlineClient();
  const settled = watchAbandon(fw, "kept");
  watchAbandon(fw, "left");
  settled.settle();
  const answer = new EventTarget();
  const button = new EventTarget();
  const untrack = trackCopy(fw, "r", answer);
  trackRegenerate(fw, "r", button);
  answer.dispatchEvent(new Event("copy"));
  button.dispatchEvent(new Event("click"));
  untrack();
  answer.dispatchEvent(new Event("copy")); // no longer tracked
  assert.equal(fw.stats().queued, 2);
  page.dispatchEvent(new Event("pagehide"));
  await until(() => fw.stats().beaconed === 3, 1_000, "copy, regenerate and one abandon");
});
