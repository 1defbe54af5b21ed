/**
 * The request on the wire: the batch body, gzip and the v2 signature.
 *
 * Signing (v2): `X-Flywheel-Timestamp: <unix seconds>` and
 * `X-Flywheel-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>\n<METHOD>\n<path>\n" + body)>`
 * over the exact bytes sent (the gzipped ones when compressed); each attempt is signed afresh.
 */

import type { Config } from "./config.js";

const encoder = new TextEncoder();

/** One queued event, encoded once. */
export interface Encoded {
  id: string;
  json: string;
  bytes: number;
}

export const BATCH_OVERHEAD = '{"events":[]}'.length;

export function encode(id: string, event: object): Encoded {
  const json = JSON.stringify(event);
  return { id, json, bytes: encoder.encode(json).byteLength };
}

export function batchBody(batch: readonly Encoded[]): string {
  return `{"events":[${batch.map((e) => e.json).join(",")}]}`;
}

async function gzip(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as BlobPart]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function hex(buffer: ArrayBuffer): string {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The `X-Flywheel-Signature` value (v2) of a request. */
export async function sign(
  secret: string,
  timestamp: string,
  method: string,
  path: string,
  body: Uint8Array,
): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const head = encoder.encode(`${timestamp}\n${method.toUpperCase()}\n${path}\n`);
  const message = new Uint8Array(head.byteLength + body.byteLength);
  message.set(head, 0);
  message.set(body, head.byteLength);
  return "sha256=" + hex(await crypto.subtle.sign("HMAC", key, message));
}

/** The body as sent and its headers. */
export async function prepare(
  body: string,
  config: Config,
  now: () => number = Date.now,
): Promise<{ body: Uint8Array; headers: Record<string, string> }> {
  let bytes: Uint8Array = encoder.encode(body);
  const headers: Record<string, string> =
    config.mode === "browser"
      ? { "content-type": "text/plain;charset=UTF-8" } // a CORS simple request: no preflight
      : { authorization: `Bearer ${config.apiKey}`, "content-type": "application/json" };
  if (config.gzipMinBytes !== null && bytes.byteLength >= config.gzipMinBytes) {
    bytes = await gzip(bytes);
    headers["content-encoding"] = "gzip";
  }
  if (config.signingSecret !== null) {
    const timestamp = (now() / 1000).toFixed(3);
    headers["x-flywheel-timestamp"] = timestamp;
    headers["x-flywheel-signature"] = await sign(
      config.signingSecret,
      timestamp,
      "POST",
      config.eventsPath,
      bytes,
    );
  }
  return { body: bytes, headers };
}
