/** The tests' handle on the real service (see run.ts and tests/clients/ts_harness.py). */

export const ACME_KEY = "sdk-test-key-acme-0123456789";
export const SIGNED_KEY = "sdk-test-key-signed-0123456789";
export const SIGNING_SECRET = "sdk-test-signing-secret";
/** A page's key (feedback only, from BROWSER_ORIGIN): see tests/clients/ingest_process.py. */
export const BROWSER_KEY = "sdk-test-key-browser-0123456789";
export const BROWSER_ORIGIN = "https://app.example.com";

const control = process.env.FLYWHEEL_HARNESS;

async function command<T>(name: string, body: object): Promise<T> {
  if (!control) throw new Error("FLYWHEEL_HARNESS is not set: run the tests through run.js");
  const response = await fetch(`${control}/${name}`, {
    method: "POST",
    body: JSON.stringify(body),
    headers: { "content-type": "application/json" },
  });
  const answer = (await response.json()) as T & { error?: string };
  if (!response.ok) throw new Error(`harness ${name}: ${answer.error}`);
  return answer;
}

export class Ingest {
  constructor(
    readonly id: string,
    readonly url: string,
  ) {}

  static async create(options: { settings?: object; apiKeys?: object[]; start?: boolean } = {}): Promise<Ingest> {
    const { id, url } = await command<{ id: string; url: string }>("ingest", {
      settings: options.settings ?? {},
      start: options.start ?? true,
      ...(options.apiKeys ? { api_keys: options.apiKeys } : {}),
    });
    return new Ingest(id, url);
  }

  stop(signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<unknown> {
    return command("stop", { id: this.id, signal });
  }

  start(): Promise<unknown> {
    return command("start", { id: this.id });
  }

  /** How many times each id is on Kafka (once all of `ids` arrived, or after the timeout). */
  async landed(ids: readonly string[], timeoutS = 30): Promise<Map<string, number>> {
    const { counts } = await command<{ counts: Record<string, number> }>("landed", {
      id: this.id,
      ids,
      timeout_s: timeoutS,
    });
    return new Map(Object.entries(counts));
  }
}

export async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
