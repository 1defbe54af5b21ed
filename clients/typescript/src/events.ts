/**
 * The events a client sends, exactly as `POST /v1/events` takes them, and their builders.
 *
 * The wire types mirror the ingest's request models (which mirror `schemas/*.avsc`);
 * `tests/clients/test_typescript_models.py` checks them against the ingest's OpenAPI document
 * so they cannot drift. Builders only refuse what can never be valid (a rating of 7); the
 * server judges the rest and names the field of an event it refuses.
 *
 * Every event gets its `event_id` here, before it is queued: retries resend the same id, so
 * downstream deduplication by id makes them harmless.
 */

export const FEEDBACK_KINDS = [
  "thumbs",
  "rating",
  "helpful",
  "comment",
  "correction",
  "copy",
  "regenerate",
  "rephrase",
  "follow_up",
  "abandon",
  "cite_click",
  "accept",
  "reject",
  "revert",
  "early_stop",
  "delete_conversation",
  "escalate",
  "dwell",
] as const;
/** Every kind of the Feedback schema (less `unknown`, which only readers use). */
export type FeedbackKind = (typeof FEEDBACK_KINDS)[number];

export const IMPLICIT_KINDS = [
  "copy",
  "regenerate",
  "rephrase",
  "follow_up",
  "abandon",
  "cite_click",
  "accept",
  "reject",
  "revert",
  "early_stop",
  "delete_conversation",
  "escalate",
  "dwell",
] as const;
/** What the user did rather than said: `signal()` sends these. */
export type ImplicitKind = (typeof IMPLICIT_KINDS)[number];

export interface ChatMessage {
  role: string;
  content: string;
}
export interface TokenUsage {
  prompt: number;
  completion: number;
}
/** Plain text, or chat messages in order. */
export type Prompt = string | readonly ChatMessage[];
type WirePrompt = string | ChatMessage[];

interface WireEvent {
  event_id: string;
  /** Epoch milliseconds, client clock. */
  occurred_at: number;
  run_id: string;
  metadata?: Record<string, string>;
}

export interface RunEvent extends WireEvent {
  type: "run";
  prompt: WirePrompt;
  response: string;
  model: string;
  model_version?: string;
  feature?: string;
  system_prompt_hash?: string;
  tokens?: TokenUsage;
  cost_usd?: number;
  latency_ms?: number;
  session_id?: string;
  thread_id?: string;
  user_id?: string;
  trace_id?: string;
  parent_run_id?: string;
}

export interface FeedbackEvent extends WireEvent {
  type: "feedback";
  kind: FeedbackKind;
  value?: number;
  comment?: string;
  correction?: string;
  user_id?: string;
  session_id?: string;
  prompt?: WirePrompt;
  response?: string;
  model?: string;
  feature?: string;
}

export interface EditEvent extends WireEvent {
  type: "edit";
  prompt: WirePrompt;
  original: string;
  final: string;
  surface?: string;
  time_to_edit_ms?: number;
  user_id?: string;
  model?: string;
  model_version?: string;
  feature?: string;
}

export type Event = RunEvent | FeedbackEvent | EditEvent;

interface Common {
  /** A Date or epoch milliseconds (default: now). */
  occurredAt?: Date | number;
  metadata?: Record<string, string>;
}

export interface RunOptions extends Common {
  /** Default: a new UUID, returned by `logRun`. */
  runId?: string;
  modelVersion?: string;
  feature?: string;
  systemPromptHash?: string;
  tokens?: TokenUsage;
  costUsd?: number;
  latencyMs?: number;
  sessionId?: string;
  threadId?: string;
  userId?: string;
  traceId?: string;
  /** Set on a regeneration: the run the user regenerated away from. */
  parentRunId?: string;
}

export interface FeedbackOptions extends Common {
  userId?: string;
  sessionId?: string;
  /** prompt, response, model, feature: inline copies of the run, for apps that log no runs. */
  prompt?: Prompt;
  response?: string;
  model?: string;
  feature?: string;
}

export interface EditOptions extends Common {
  surface?: string;
  timeToEditMs?: number;
  userId?: string;
  model?: string;
  modelVersion?: string;
  feature?: string;
}

/** A call's arguments can never make a valid event (e.g. a rating of 7). */
export class InvalidEventError extends Error {
  override name = "InvalidEventError";
}

/** camelCase option -> wire field. */
const WIRE_NAMES: Record<string, string> = {
  runId: "run_id",
  modelVersion: "model_version",
  systemPromptHash: "system_prompt_hash",
  costUsd: "cost_usd",
  latencyMs: "latency_ms",
  sessionId: "session_id",
  threadId: "thread_id",
  userId: "user_id",
  traceId: "trace_id",
  parentRunId: "parent_run_id",
  timeToEditMs: "time_to_edit_ms",
};

export function newEventId(): string {
  return globalThis.crypto.randomUUID();
}

function epochMs(value: Date | number | undefined): number {
  if (value === undefined) return Date.now();
  if (value instanceof Date) return value.getTime();
  if (Number.isInteger(value)) return value;
  throw new InvalidEventError(`occurredAt must be a Date or epoch ms, not ${String(value)}`);
}

export function requireId(name: string, value: unknown): string {
  if (typeof value !== "string" || value.length === 0) {
    throw new InvalidEventError(`${name} must be a non-empty string, not ${String(value)}`);
  }
  return value;
}

function copyPrompt(prompt: Prompt): WirePrompt {
  // Copied now: the event is encoded later, and the caller may change its array meanwhile.
  return typeof prompt === "string" ? prompt : prompt.map((m) => ({ role: m.role, content: m.content }));
}

function applyOptions(event: Record<string, unknown>, options: object): void {
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined || key === "occurredAt" || key === "runId") continue;
    if ((key === "costUsd" || key === "latencyMs") && !(Number.isFinite(value) && value >= 0)) {
      throw new InvalidEventError(`${key} must be a finite number >= 0, not ${String(value)}`);
    }
    const wire = WIRE_NAMES[key] ?? key;
    event[wire] =
      key === "prompt"
        ? copyPrompt(value as Prompt)
        : key === "metadata" || key === "tokens"
          ? { ...(value as object) }
          : value;
  }
}

export function runEvent(
  prompt: Prompt,
  response: string,
  model: string,
  options: RunOptions,
): RunEvent {
  const event: Record<string, unknown> = {
    type: "run",
    event_id: newEventId(),
    occurred_at: epochMs(options.occurredAt),
    run_id: requireId("runId", options.runId ?? newEventId()),
    prompt: copyPrompt(prompt),
    response,
    model: requireId("model", model),
  };
  applyOptions(event, options);
  return event as unknown as RunEvent;
}

export function feedbackEvent(
  runId: string,
  kind: FeedbackKind,
  fields: { value?: number; comment?: string | undefined; correction?: string | undefined },
  options: FeedbackOptions,
): FeedbackEvent {
  const event: Record<string, unknown> = {
    type: "feedback",
    event_id: newEventId(),
    occurred_at: epochMs(options.occurredAt),
    run_id: requireId("runId", runId),
    kind,
  };
  if (fields.value !== undefined) event.value = fields.value;
  if (fields.comment !== undefined) event.comment = fields.comment;
  if (fields.correction !== undefined) event.correction = fields.correction;
  applyOptions(event, options);
  return event as unknown as FeedbackEvent;
}

export function editEvent(
  runId: string,
  prompt: Prompt,
  original: string,
  final: string,
  options: EditOptions,
): EditEvent {
  const event: Record<string, unknown> = {
    type: "edit",
    event_id: newEventId(),
    occurred_at: epochMs(options.occurredAt),
    run_id: requireId("runId", runId),
    prompt: copyPrompt(prompt),
    original,
    final,
  };
  applyOptions(event, options);
  return event as unknown as EditEvent;
}
