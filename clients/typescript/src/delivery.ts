/**
 * The delivery engine: a bounded queue, batches by count, bytes and linger, requests with
 * retries, and the exits (flush, close, Node's `beforeExit`, a page being hidden).
 *
 * JavaScript runs the app and the engine on one thread, so a call cannot block: with the
 * queue full a new event is dropped (counted, warned, reported); `waitForRoom()` lets an app
 * that would rather wait do so. Timers are unref'd in Node: a queued event never keeps a
 * process alive on its own; instead `beforeExit` delivers it, within `exitTimeoutMs`.
 */

import type { Config } from "./config.js";
import { EventsDropped, type DropReason, type ErrorDetail } from "./errors.js";
import type { Event } from "./events.js";
import { Backoff, classify, parseRetryAfter } from "./outcome.js";
import { BATCH_OVERHEAD, batchBody, encode, prepare, type Encoded } from "./wire.js";

export interface Stats {
  /** Events queued or in flight now. */
  queued: number;
  delivered: number;
  rejected: number;
  droppedOverflow: number;
  droppedClosed: number;
  /** Events handed to `navigator.sendBeacon` (browser mode): sent, never acknowledged. */
  beaconed: number;
  requests: number;
  retries: number;
  /** Request body bytes on the wire (after gzip), of answered requests. */
  bytesSent: number;
  callbackErrors: number;
}

const WARN_INTERVAL_MS = 10_000;
const STOP_RESERVE_MS = 250;

type Timer = ReturnType<typeof setTimeout>;

function unref(timer: Timer): Timer {
  (timer as { unref?: () => void }).unref?.();
  return timer;
}

interface Flight {
  batch: Encoded[];
  abort: AbortController;
}

export class Delivery {
  readonly stats: Omit<Stats, "queued"> = {
    delivered: 0,
    rejected: 0,
    droppedOverflow: 0,
    droppedClosed: 0,
    beaconed: 0,
    requests: 0,
    retries: 0,
    bytesSent: 0,
    callbackErrors: 0,
  };
  private queue: Encoded[] = [];
  private queuedBytes = 0;
  private flights = new Set<Flight>();
  private inFlightEvents = 0;
  private timer: Timer | null = null;
  private pausedUntil = 0;
  private flushing = 0;
  private closed = false;
  private stopped = false;
  private closeDeadline: number | null = null;
  private waiters = new Set<() => void>();
  private lastWarn = new Map<string, number>();
  private readonly backoff: Backoff;
  private maxEvents: number;
  private maxBytes: number;

  constructor(private readonly config: Config) {
    this.backoff = new Backoff(config.backoffBaseMs, config.backoffMaxMs);
    this.maxEvents = config.maxBatchEvents;
    this.maxBytes = config.maxBatchBytes;
  }

  get queued(): number {
    return this.queue.length + this.inFlightEvents;
  }

  enqueue(event: Event): void {
    if (this.closed) return this.drop("closed", [event.event_id], "client closed");
    if (this.queued >= this.config.maxQueueEvents) {
      return this.drop("overflow", [event.event_id], "in-memory queue full");
    }
    let encoded: Encoded;
    try {
      encoded = encode(event.event_id, event);
    } catch (error) {
      const detail = { loc: [], msg: `not JSON-encodable: ${String(error)}`, type: "unencodable" };
      return this.drop("rejected", [event.event_id], "not JSON-encodable", null, [detail]);
    }
    this.queue.push(encoded);
    this.queuedBytes += encoded.bytes;
    if (this.queue.length >= this.maxEvents || this.queuedBytes >= this.maxBytes) this.schedule(0);
    else if (this.timer === null) this.schedule(this.config.lingerMs);
  }

  /** Resolves true once the queue has room (or false after `timeoutMs`). */
  async waitForRoom(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.queued >= this.config.maxQueueEvents && !this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await this.changed(left);
    }
    return !this.closed;
  }

  async flush(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    this.flushing += 1;
    try {
      this.pump(true);
      while (this.queue.length || this.flights.size) {
        const left = deadline - Date.now();
        if (left <= 0 || this.stopped) return false;
        await this.changed(left);
      }
      return true;
    } finally {
      this.flushing -= 1;
    }
  }

  /** Deliver what is queued within `timeoutMs`, then stop; what is left is reported
   * `closed`. Resolves within the timeout even when the server is down. */
  async close(timeoutMs: number): Promise<boolean> {
    if (this.closed) return !this.queued;
    this.closed = true;
    this.closeDeadline = Date.now() + timeoutMs;
    const delivered = await this.flush(Math.max(0, timeoutMs - Math.min(STOP_RESERVE_MS, timeoutMs / 5)));
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    const left = [...this.queue, ...[...this.flights].flatMap((f) => f.batch)];
    for (const flight of this.flights) flight.abort.abort();
    this.queue = [];
    this.queuedBytes = 0;
    this.drop("closed", left.map((e) => e.id), "close() timed out before delivery");
    this.notify();
    return delivered;
  }

  /** The page is going away: hand everything queued to `navigator.sendBeacon`, which the
   * browser sends even after the page is gone (a keepalive fetch where it refuses). */
  beacon(): void {
    const nav = (globalThis as { navigator?: { sendBeacon?: (url: string, data: Blob) => boolean } })
      .navigator;
    while (this.queue.length && !this.stopped) {
      const batch = this.take();
      const body = new Blob([batchBody(batch)], { type: "text/plain;charset=UTF-8" });
      if (nav?.sendBeacon?.(this.config.eventsUrl, body)) this.stats.beaconed += batch.length;
      else void this.send(batch);
    }
  }

  private schedule(ms: number): void {
    if (this.timer !== null) {
      if (ms > 0) return;
      clearTimeout(this.timer);
    }
    this.timer = unref(
      setTimeout(() => {
        this.timer = null;
        this.pump(true);
      }, ms),
    );
  }

  /** Send what is due: full batches, or everything when `lingered` (or flushing). */
  private pump(lingered: boolean): void {
    if (this.stopped) return;
    const now = Date.now();
    if (now < this.pausedUntil) return this.schedule(this.pausedUntil - now);
    while (this.flights.size < this.config.maxInFlight && this.queue.length) {
      const full = this.queue.length >= this.maxEvents || this.queuedBytes >= this.maxBytes;
      if (!(full || lingered || this.flushing || this.closed)) break;
      void this.send(this.take());
    }
    if (this.queue.length && this.timer === null && this.flights.size < this.config.maxInFlight) {
      this.schedule(this.config.lingerMs);
    }
  }

  private take(): Encoded[] {
    const batch: Encoded[] = [];
    let size = BATCH_OVERHEAD;
    for (const item of this.queue) {
      if (batch.length && (batch.length >= this.maxEvents || size + item.bytes + 1 > this.maxBytes)) break;
      size += item.bytes + (batch.length ? 1 : 0);
      batch.push(item);
    }
    this.queue.splice(0, batch.length);
    this.queuedBytes -= batch.reduce((n, e) => n + e.bytes, 0);
    return batch;
  }

  private async send(batch: Encoded[]): Promise<void> {
    const flight: Flight = { batch, abort: new AbortController() };
    this.flights.add(flight);
    this.inFlightEvents += batch.length;
    this.stats.requests += 1;
    let limit = this.config.requestTimeoutMs;
    if (this.closeDeadline !== null) limit = Math.max(1, Math.min(limit, this.closeDeadline - Date.now()));
    const timeout = unref(setTimeout(() => flight.abort.abort(), limit));
    let status: number | null = null;
    let text = "";
    let retryAfter: string | null = null;
    let failure = "";
    let wireBytes = 0;
    try {
      const { body, headers } = await prepare(batchBody(batch), this.config);
      wireBytes = body.byteLength;
      const response = await fetch(this.config.eventsUrl, {
        method: "POST",
        body: body as BodyInit,
        headers,
        signal: flight.abort.signal,
        keepalive: this.config.mode === "browser",
      });
      text = await response.text();
      status = response.status;
      this.stats.bytesSent += wireBytes;
      retryAfter = response.headers.get("retry-after");
    } catch (error) {
      failure = String(error);
    } finally {
      clearTimeout(timeout);
      this.flights.delete(flight);
      this.inFlightEvents -= batch.length;
    }
    if (this.stopped) return; // close() reported these already
    this.apply(batch, status, text, retryAfter, failure);
    this.notify();
    this.pump(false);
  }

  private apply(
    batch: Encoded[],
    status: number | null,
    text: string,
    retryAfter: string | null,
    failure: string,
  ): void {
    const ids = batch.map((e) => e.id);
    const verdict = classify(status, text, ids);
    this.stats.delivered += verdict.delivered.length;
    if (verdict.rejected.length) {
      const errors = [...new Map(verdict.rejected.flatMap(([, e]) => e).map((e) => [JSON.stringify(e), e])).values()];
      const refused = verdict.rejected.map(([i]) => ids[i]!);
      this.drop("rejected", refused, "refused by the server, not retried", status, errors);
    }
    const back = [...verdict.resend, ...verdict.retry].sort((a, b) => a - b).map((i) => batch[i]!);
    this.queue.unshift(...back);
    this.queuedBytes += back.reduce((n, e) => n + e.bytes, 0);
    if (verdict.tooLarge) {
      this.maxEvents = Math.max(1, Math.floor(batch.length / 2));
      this.maxBytes = Math.max(BATCH_OVERHEAD + 1, Math.floor(batch.reduce((n, e) => n + e.bytes + 1, BATCH_OVERHEAD) / 2));
    }
    if (verdict.retry.length) {
      this.stats.retries += 1;
      const delay = this.backoff.next(parseRetryAfter(retryAfter));
      this.pausedUntil = Date.now() + delay;
      this.warn("retry", `flywheel client: delivery failed (${status !== null ? `HTTP ${status}` : failure}); retrying in ${(delay / 1000).toFixed(2)}s`);
    } else if (verdict.delivered.length || verdict.rejected.length || verdict.resend.length) {
      this.backoff.reset();
      if (back.length) this.pausedUntil = 0;
    }
  }

  private drop(
    reason: DropReason,
    ids: string[],
    detail: string,
    status: number | null = null,
    errors: ErrorDetail[] = [],
  ): void {
    if (!ids.length) return;
    const counter = { rejected: "rejected", overflow: "droppedOverflow", closed: "droppedClosed" } as const;
    this.stats[counter[reason]] += ids.length;
    const dropped = new EventsDropped(reason, ids, status, errors);
    const fields = errors.slice(0, 5).map((e) => `${e.loc.join(".")} [${e.type}] ${e.msg}`).join("; ");
    this.warn(reason, `flywheel client: ${ids.length} event(s) dropped: ${reason} (${detail}${status ? `, HTTP ${status}` : ""})${fields ? `: ${fields}` : ""}`);
    if (this.config.onError === null) return;
    try {
      this.config.onError(dropped);
    } catch (error) {
      this.stats.callbackErrors += 1;
      console.error("flywheel client: onError callback threw", error);
    }
  }

  /** One warning per kind every `WARN_INTERVAL_MS`: never silent, never a flood. */
  private warn(key: string, message: string): void {
    const now = Date.now();
    if (now - (this.lastWarn.get(key) ?? -Infinity) < WARN_INTERVAL_MS) return;
    this.lastWarn.set(key, now);
    console.warn(message);
  }

  private changed(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      // Not unref'd: an app awaiting flush() or close() keeps its process alive until then.
      const timer = setTimeout(done, timeoutMs);
      this.waiters.add(done);
    });
  }

  private notify(): void {
    for (const waiter of [...this.waiters]) waiter();
  }
}
