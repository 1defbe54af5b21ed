/** The client's settings, checked once when the client is made. */

import { ClientConfigError, type EventsDropped } from "./errors.js";

/**
 * `server`: an app's backend (Node): `Authorization: Bearer`, signing and gzip available.
 * `browser`: a page, with a browser key: the key travels as `?api_key=` with a `text/plain`
 * body (a CORS "simple" request, the only kind `navigator.sendBeacon` can make), requests
 * use `keepalive`, and queued events leave by `sendBeacon` when the page is hidden.
 */
export type Mode = "server" | "browser";

export interface FlywheelOptions {
  /** The ingest's base URL, e.g. `https://flywheel.example.com`. */
  url: string;
  apiKey: string;
  mode?: Mode;
  /** The key's HMAC secret, when the tenant signs requests (server mode only). */
  signingSecret?: string;
  /** A batch is sent when it holds this many events or bytes, or has waited `lingerMs`. */
  maxBatchEvents?: number;
  maxBatchBytes?: number;
  lingerMs?: number;
  /** Events held in memory before new ones are dropped (counted, reported). */
  maxQueueEvents?: number;
  maxInFlight?: number;
  requestTimeoutMs?: number;
  /** Retry delays grow from base to max, with jitter; a `Retry-After` is honoured. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** gzip bodies at least this large (null: never; never in browser mode). */
  gzipMinBytes?: number | null;
  /** Node: when the event loop runs dry, deliver what is queued within this (null: no hook). */
  exitTimeoutMs?: number | null;
  /** Runs whose prompt `edit()` can fill in. */
  rememberRuns?: number;
  onError?: (error: EventsDropped) => void;
}

export type Config = Required<Omit<FlywheelOptions, "signingSecret" | "onError">> & {
  signingSecret: string | null;
  onError: ((error: EventsDropped) => void) | null;
  eventsUrl: string;
  eventsPath: string;
};

/** keepalive requests and beacons share a 64 KiB budget in browsers. */
const BROWSER_MAX_BATCH_BYTES = 60_000;

export function makeConfig(options: FlywheelOptions): Config {
  const mode = options.mode ?? "server";
  if (mode !== "server" && mode !== "browser") {
    throw new ClientConfigError(`mode must be "server" or "browser", not ${String(mode)}`);
  }
  let parsed: URL;
  try {
    parsed = new URL(options.url);
  } catch {
    throw new ClientConfigError(`url must be http(s)://host[:port][/prefix], not ${options.url}`);
  }
  if (!["http:", "https:"].includes(parsed.protocol) || parsed.search || parsed.hash) {
    throw new ClientConfigError(`url must be http(s)://host[:port][/prefix], not ${options.url}`);
  }
  if (!options.apiKey) throw new ClientConfigError("apiKey is required");
  if (mode === "browser" && options.signingSecret) {
    throw new ClientConfigError("a browser key cannot sign: a page cannot keep a secret");
  }
  const browser = mode === "browser";
  const config: Config = {
    url: options.url,
    apiKey: options.apiKey,
    mode,
    signingSecret: options.signingSecret ?? null,
    maxBatchEvents: options.maxBatchEvents ?? (browser ? 100 : 500),
    maxBatchBytes: options.maxBatchBytes ?? (browser ? BROWSER_MAX_BATCH_BYTES : 512 * 1024),
    lingerMs: options.lingerMs ?? 200,
    maxQueueEvents: options.maxQueueEvents ?? 10_000,
    maxInFlight: options.maxInFlight ?? 2,
    requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
    backoffBaseMs: options.backoffBaseMs ?? 100,
    backoffMaxMs: options.backoffMaxMs ?? 30_000,
    gzipMinBytes: browser ? null : options.gzipMinBytes === undefined ? 16 * 1024 : options.gzipMinBytes,
    exitTimeoutMs: options.exitTimeoutMs === undefined ? 5_000 : options.exitTimeoutMs,
    rememberRuns: options.rememberRuns ?? 256,
    onError: options.onError ?? null,
    eventsUrl: "",
    eventsPath: parsed.pathname.replace(/\/+$/, "") + "/v1/events",
  };
  const base = options.url.replace(/\/+$/, "") + "/v1/events";
  config.eventsUrl = browser ? `${base}?api_key=${encodeURIComponent(config.apiKey)}` : base;
  for (const name of [
    "maxBatchEvents",
    "maxBatchBytes",
    "maxQueueEvents",
    "maxInFlight",
    "requestTimeoutMs",
    "backoffBaseMs",
    "backoffMaxMs",
  ] as const) {
    if (!(config[name] > 0)) throw new ClientConfigError(`${name} must be > 0, not ${config[name]}`);
  }
  if (!(config.lingerMs >= 0)) throw new ClientConfigError(`lingerMs must be >= 0`);
  if (config.maxQueueEvents < config.maxBatchEvents) {
    throw new ClientConfigError("maxQueueEvents must hold at least one batch");
  }
  return config;
}
