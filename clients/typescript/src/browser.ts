/**
 * Signals only a browser sees: copies, dwell time, abandons and regenerate clicks, each sent
 * as an implicit signal. They come at page hide too, so each helper hands what it queued to
 * `sendBeacon` right away rather than waiting for a batch that the page will not live to send.
 */

import type { Flywheel } from "./client.js";

interface Target {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

interface Page extends Target {
  document?: { visibilityState?: string };
}

function page(): Page | null {
  const g = globalThis as unknown as Partial<Page>;
  return typeof g.addEventListener === "function" ? (g as Page) : null;
}

/** A `copy` signal each time the user copies from `element`. Returns the un-tracker. */
export function trackCopy(fw: Flywheel, runId: string, element: Target): () => void {
  const onCopy = (): void => {
    fw.signal(runId, "copy");
  };
  element.addEventListener("copy", onCopy);
  return () => element.removeEventListener("copy", onCopy);
}

/** A `regenerate` signal when `button` is clicked (log the new run with `parentRunId`). */
export function trackRegenerate(fw: Flywheel, runId: string, button: Target): () => void {
  const onClick = (): void => {
    fw.signal(runId, "regenerate");
  };
  button.addEventListener("click", onClick);
  return () => button.removeEventListener("click", onClick);
}

/** Time the answer was visible: counted while the page is visible, sent once as `dwell`
 * (milliseconds) by `stop()` or when the page goes away. */
export function trackDwell(fw: Flywheel, runId: string, now: () => number = Date.now): { stop(): void } {
  const p = page();
  let visibleSince: number | null = p?.document?.visibilityState === "hidden" ? null : now();
  let total = 0;
  let done = false;
  const pause = (): void => {
    if (visibleSince !== null) total += now() - visibleSince;
    visibleSince = null;
  };
  const onVisibility = (): void => {
    if (p?.document?.visibilityState === "hidden") pause();
    else if (visibleSince === null) visibleSince = now();
  };
  const stop = (): void => {
    if (done) return;
    done = true;
    pause();
    p?.removeEventListener("visibilitychange", onVisibility);
    p?.removeEventListener("pagehide", onPageHide);
    fw.signal(runId, "dwell", total);
  };
  const onPageHide = (): void => {
    stop();
    fw.beacon();
  };
  p?.addEventListener("visibilitychange", onVisibility);
  p?.addEventListener("pagehide", onPageHide);
  return { stop };
}

/** An `abandon` signal if the page goes away before `settle()` (the user accepted, copied,
 * rated or otherwise finished with the answer). */
export function watchAbandon(fw: Flywheel, runId: string): { settle(): void } {
  const p = page();
  const onPageHide = (): void => {
    p?.removeEventListener("pagehide", onPageHide);
    fw.signal(runId, "abandon");
    fw.beacon();
  };
  p?.addEventListener("pagehide", onPageHide);
  return { settle: () => p?.removeEventListener("pagehide", onPageHide) };
}
