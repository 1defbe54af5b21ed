/** A Node app for the exit tests: logs COUNT events, prints their ids and simply ends. */

import { Flywheel } from "../src/index.js";

const [url, apiKey, count, exitTimeoutMs] = process.argv.slice(2);
const fw = new Flywheel({
  url: url!,
  apiKey: apiKey!,
  lingerMs: 60_000,
  exitTimeoutMs: Number(exitTimeoutMs),
});
for (let i = 0; i < Number(count); i++) process.stdout.write(fw.signal(`run-${i}`, "copy") + "\n");
