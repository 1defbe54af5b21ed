/**
 * What the server's answer to a batch means for each event, and when to try again.
 *
 * `POST /v1/events` is all-or-nothing: a 4xx stores nothing and names the events at fault by
 * index (`loc = ["body", "events", i, ...]`); those are refused for good, the others go again
 * at once. Network errors, 408, 429 and 5xx are retried after a backoff; a 503 may list the
 * events the broker did store (`stored_event_ids`).
 */

import type { ErrorDetail } from "./errors.js";

export const RETRYABLE = new Set([408, 429, 500, 502, 503, 504]);
const RETRY_AFTER_CAP_MS = 600_000;

export interface Verdict {
  delivered: number[];
  rejected: [number, ErrorDetail[]][];
  resend: number[];
  retry: number[];
  tooLarge: boolean;
}

export function parseErrors(status: number, text: string): ErrorDetail[] {
  try {
    const doc = JSON.parse(text) as { errors: { loc?: (string | number)[]; msg: string; type: string }[] };
    return doc.errors.map((e) => ({ loc: e.loc ?? [], msg: String(e.msg), type: String(e.type) }));
  } catch {
    return [{ loc: [], msg: `HTTP ${status}: ${text.slice(0, 200)}`, type: "http_error" }];
  }
}

function eventIndex(error: ErrorDetail, count: number): number | null {
  const [where, field, index] = error.loc;
  if (where === "body" && field === "events" && typeof index === "number" && index >= 0 && index < count) {
    return index;
  }
  return null;
}

function storedIds(text: string): Set<string> {
  try {
    const ids = (JSON.parse(text) as { stored_event_ids?: unknown }).stored_event_ids;
    return new Set(Array.isArray(ids) ? ids.filter((i): i is string => typeof i === "string") : []);
  } catch {
    return new Set();
  }
}

/** The fate of each event of a batch answered `status` (null: no answer at all). */
export function classify(status: number | null, text: string, ids: readonly string[]): Verdict {
  const everyone = ids.map((_, i) => i);
  const verdict: Verdict = { delivered: [], rejected: [], resend: [], retry: [], tooLarge: false };
  if (status === null) return { ...verdict, retry: everyone };
  if (status >= 200 && status < 300) return { ...verdict, delivered: everyone };
  if (RETRYABLE.has(status)) {
    const stored = status === 503 ? storedIds(text) : new Set<string>();
    return {
      ...verdict,
      delivered: everyone.filter((i) => stored.has(ids[i]!)),
      retry: everyone.filter((i) => !stored.has(ids[i]!)),
    };
  }
  const errors = parseErrors(status, text);
  const atFault = new Map<number, ErrorDetail[]>();
  for (const error of errors) {
    const index = eventIndex(error, ids.length);
    if (index !== null) atFault.set(index, [...(atFault.get(index) ?? []), error]);
  }
  if (atFault.size === 0) {
    if (status === 413 && ids.length > 1) return { ...verdict, tooLarge: true, resend: everyone };
    return { ...verdict, rejected: everyone.map((i) => [i, errors]) };
  }
  return {
    ...verdict,
    rejected: [...atFault.entries()].sort((a, b) => a[0] - b[0]),
    resend: everyone.filter((i) => !atFault.has(i)),
  };
}

/** Milliseconds to wait from a `Retry-After` value (delta-seconds or an HTTP date). */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (!value) return null;
  const seconds = Number(value.trim());
  let ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(value) - now;
  if (!Number.isFinite(ms)) return null;
  ms = Math.min(Math.max(ms, 0), RETRY_AFTER_CAP_MS);
  return ms;
}

/** Exponential delays with "equal jitter", never shorter than a `Retry-After`. One per client:
 * when the server is down every batch fails alike, so the whole client pauses. */
export class Backoff {
  attempt = 0;
  constructor(
    private readonly baseMs: number,
    private readonly maxMs: number,
    private readonly random: () => number = Math.random,
  ) {}

  next(retryAfterMs: number | null = null): number {
    const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** this.attempt);
    this.attempt += 1;
    let delay = ceiling / 2 + this.random() * (ceiling / 2);
    if (retryAfterMs !== null) delay = Math.max(delay, retryAfterMs + this.random() * this.baseMs);
    return delay;
  }

  reset(): void {
    this.attempt = 0;
  }
}
