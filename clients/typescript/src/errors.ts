/**
 * The client's errors. Calls throw only for wrong arguments (`InvalidEventError`, in
 * events.ts) or wrong settings (`ClientConfigError`); delivery never throws: what cannot be
 * delivered is handed to `onError` as an `EventsDropped` and counted in `stats()`.
 */

/** Why events were dropped: refused by the server (4xx, never retried); the in-memory queue
 * was full; the client closed before they were delivered. */
export type DropReason = "rejected" | "overflow" | "closed";

/** One error the server gave: the path of the wrong field, e.g. `["body","events",3,"kind"]`. */
export interface ErrorDetail {
  loc: (string | number)[];
  msg: string;
  type: string;
}

/** A setting is wrong; retrying will not help. */
export class ClientConfigError extends Error {
  override name = "ClientConfigError";
}

/** Events that will never be delivered, and why. */
export class EventsDropped extends Error {
  override name = "EventsDropped";
  constructor(
    readonly reason: DropReason,
    readonly eventIds: readonly string[],
    readonly status: number | null = null,
    readonly errors: readonly ErrorDetail[] = [],
  ) {
    const where = errors
      .slice(0, 3)
      .map((e) => `${e.loc.join(".")}: ${e.msg}`)
      .join("; ");
    super(
      `${eventIds.length} event(s) dropped (${reason}` +
        (status !== null ? `, HTTP ${status}` : "") +
        (where ? `: ${where}` : "") +
        ")",
    );
  }
}
