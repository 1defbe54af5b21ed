/**
 * `Flywheel`: the calls an app makes. Each builds its event (with its `event_id`), queues it
 * and returns at once; delivery runs in the background (see delivery.ts).
 */

import { makeConfig, type Config, type FlywheelOptions } from "./config.js";
import { Delivery, type Stats } from "./delivery.js";
import {
  IMPLICIT_KINDS,
  InvalidEventError,
  editEvent,
  feedbackEvent,
  requireId,
  runEvent,
  type EditOptions,
  type FeedbackOptions,
  type ImplicitKind,
  type Prompt,
  type RunOptions,
} from "./events.js";

export type Thumb = "up" | "down";
/** The metadata key of a `regenerate` signal naming the run that replaced this one. */
export const NEW_RUN_ID_KEY = "new_run_id";
const IMPLICIT = new Set<string>(IMPLICIT_KINDS);

interface NodeProcess {
  on(event: "beforeExit", listener: () => void): unknown;
  off(event: "beforeExit", listener: () => void): unknown;
}

export class Flywheel {
  readonly config: Config;
  private readonly delivery: Delivery;
  private readonly prompts = new Map<string, Prompt>();
  private readonly detach: () => void;

  constructor(options: FlywheelOptions) {
    this.config = makeConfig(options);
    this.delivery = new Delivery(this.config);
    this.detach = this.config.mode === "browser" ? this.watchPage() : this.watchExit();
  }

  /** Record one LLM call; returns its run id (`runId` or a new UUID). */
  logRun(prompt: Prompt, response: string, model: string, options: RunOptions = {}): string {
    const event = runEvent(prompt, response, model, options);
    this.remember(event.run_id, event.prompt);
    this.delivery.enqueue(event);
    return event.run_id;
  }

  /** Thumbs up or down, with an optional comment or corrected answer; returns the event id. */
  thumbs(
    runId: string,
    direction: Thumb,
    extra: { comment?: string; correction?: string } & FeedbackOptions = {},
  ): string {
    const value = direction === "up" ? 1 : direction === "down" ? -1 : null;
    if (value === null) throw new InvalidEventError(`thumbs takes "up" or "down", not ${String(direction)}`);
    const { comment, correction, ...options } = extra;
    return this.put(feedbackEvent(runId, "thumbs", { value, comment, correction }, options));
  }

  /** A 1-5 rating of a run; returns the event id. */
  rate(
    runId: string,
    rating: number,
    extra: { comment?: string; correction?: string } & FeedbackOptions = {},
  ): string {
    if (typeof rating !== "number" || !(rating >= 1 && rating <= 5)) {
      throw new InvalidEventError(`a rating is a number from 1 to 5, not ${String(rating)}`);
    }
    const { comment, correction, ...options } = extra;
    return this.put(feedbackEvent(runId, "rating", { value: rating, comment, correction }, options));
  }

  /** The user rewrote the model's answer. `prompt` may be left out for a run this client
   * logged recently. Returns the event id. */
  edit(
    runId: string,
    change: { original: string; final: string; prompt?: Prompt } & EditOptions,
  ): string {
    const { original, final, prompt, ...options } = change;
    const known = prompt ?? this.prompts.get(runId);
    if (known === undefined) {
      throw new InvalidEventError(`edit() needs prompt: run ${runId} is not one this client logged recently`);
    }
    return this.put(editEvent(runId, known, original, final, options));
  }

  /** The user regenerated `runId`'s answer and got `newRunId` (log that run with
   * `parentRunId: runId`). Returns the event id. */
  regenerated(runId: string, newRunId: string, options: FeedbackOptions = {}): string {
    requireId("newRunId", newRunId);
    const metadata = { ...options.metadata, [NEW_RUN_ID_KEY]: newRunId };
    return this.put(feedbackEvent(runId, "regenerate", {}, { ...options, metadata }));
  }

  /** An implicit signal (copy, abandon, dwell with `value` ms, ...); returns the event id. */
  signal(runId: string, kind: ImplicitKind, value?: number, options: FeedbackOptions = {}): string {
    if (!IMPLICIT.has(kind)) {
      throw new InvalidEventError(`signal() takes an implicit kind (${IMPLICIT_KINDS.join(", ")}), not ${String(kind)}`);
    }
    if (kind === "dwell") {
      if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
        throw new InvalidEventError(`dwell needs a value in milliseconds >= 0, not ${String(value)}`);
      }
    } else if (value !== undefined) {
      throw new InvalidEventError(`a ${kind} signal takes no value`);
    }
    return this.put(feedbackEvent(runId, kind, value === undefined ? {} : { value }, options));
  }

  /** Send what is queued now; true when all of it was delivered (or refused) in time. */
  flush(timeoutMs = 10_000): Promise<boolean> {
    return this.delivery.flush(timeoutMs);
  }

  /** Deliver what is queued within `timeoutMs`, then stop; true when nothing was left.
   * Resolves within the timeout even when the server is down. */
  async close(timeoutMs = 5_000): Promise<boolean> {
    this.detach();
    return this.delivery.close(timeoutMs);
  }

  /** With the queue full new events are dropped; an app that would rather wait awaits this. */
  waitForRoom(timeoutMs = 10_000): Promise<boolean> {
    return this.delivery.waitForRoom(timeoutMs);
  }

  stats(): Stats {
    return { queued: this.delivery.queued, ...this.delivery.stats };
  }

  /** Browser mode: send what is queued by `sendBeacon` now (done on page hide by itself). */
  beacon(): void {
    this.delivery.beacon();
  }

  private put(event: Parameters<Delivery["enqueue"]>[0]): string {
    this.delivery.enqueue(event);
    return event.event_id;
  }

  private remember(runId: string, prompt: Prompt): void {
    if (!this.config.rememberRuns) return;
    this.prompts.delete(runId);
    this.prompts.set(runId, prompt);
    if (this.prompts.size > this.config.rememberRuns) {
      this.prompts.delete(this.prompts.keys().next().value as string);
    }
  }

  /** Node: when the event loop runs dry with events queued, deliver them (bounded). */
  private watchExit(): () => void {
    const proc = (globalThis as { process?: NodeProcess }).process;
    const timeout = this.config.exitTimeoutMs;
    if (timeout === null || typeof proc?.on !== "function") return () => {};
    const onBeforeExit = (): void => {
      if (this.delivery.queued) void this.close(timeout);
    };
    proc.on("beforeExit", onBeforeExit);
    return () => proc.off("beforeExit", onBeforeExit);
  }

  /** Browser: the page may be gone the next moment it is hidden; send by beacon then. */
  private watchPage(): () => void {
    const page = globalThis as {
      addEventListener?: (type: string, listener: () => void) => void;
      removeEventListener?: (type: string, listener: () => void) => void;
      document?: { visibilityState?: string };
    };
    if (typeof page.addEventListener !== "function") return () => {};
    const onHide = (): void => {
      if (page.document?.visibilityState === "hidden") this.beacon();
    };
    const onPageHide = (): void => this.beacon();
    page.addEventListener("visibilitychange", onHide);
    page.addEventListener("pagehide", onPageHide);
    return () => {
      page.removeEventListener?.("visibilitychange", onHide);
      page.removeEventListener?.("pagehide", onPageHide);
    };
  }
}
