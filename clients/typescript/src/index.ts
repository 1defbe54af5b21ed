/**
 * Flywheel's TypeScript SDK: log runs, feedback and edits from an LLM app, in Node or a
 * browser. Calls return at once; events are batched, retried with backoff, signed (Node),
 * flushed when the process runs dry or the page is hidden. Every event has its `event_id`
 * from the moment it is made, so a retry never duplicates it downstream. No dependencies
 * beyond the platform's fetch, WebCrypto and CompressionStream.
 */

export { Flywheel, NEW_RUN_ID_KEY, type Thumb } from "./client.js";
export type { FlywheelOptions, Mode } from "./config.js";
export type { Stats } from "./delivery.js";
export { ClientConfigError, EventsDropped, type DropReason, type ErrorDetail } from "./errors.js";
export {
  FEEDBACK_KINDS,
  IMPLICIT_KINDS,
  InvalidEventError,
  type ChatMessage,
  type EditEvent,
  type EditOptions,
  type Event,
  type FeedbackEvent,
  type FeedbackKind,
  type FeedbackOptions,
  type ImplicitKind,
  type Prompt,
  type RunEvent,
  type RunOptions,
  type TokenUsage,
} from "./events.js";
export { trackCopy, trackDwell, trackRegenerate, watchAbandon } from "./browser.js";
