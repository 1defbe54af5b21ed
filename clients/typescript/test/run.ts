/**
 * Runs the SDK's tests against the real service: starts the Python harness (a Kafka broker and
 * ingest processes on demand, tests/clients/ts_harness.py), then `node --test` over the
 * compiled tests with the harness's control URL in FLYWHEEL_HARNESS. Fails when no test ran.
 */

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { readdirSync } from "node:fs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../../..");
const python = process.env.FLYWHEEL_PYTHON ?? join(root, ".venv/bin/python");

async function startHarness(): Promise<{ control: string; stop: () => void }> {
  const harness = spawn(python, [join(root, "tests/clients/ts_harness.py")], {
    cwd: root,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: harness.stdout });
  const control = await new Promise<string>((ok, fail) => {
    harness.once("exit", (code) => fail(new Error(`harness exited with ${code}`)));
    lines.once("line", (line) => ok((JSON.parse(line) as { control: string }).control));
  });
  return { control, stop: () => harness.stdin.end() };
}

async function main(): Promise<number> {
  const { control, stop } = await startHarness();
  const tap = join(mkdtempSync(join(tmpdir(), "fw-ts-")), "report.tap");
  const files = readdirSync(here)
    .filter((f) => f.endsWith(".test.js"))
    .map((f) => join(here, f));
  const args = [
    "--test",
    "--test-concurrency=1",
    "--test-reporter=spec",
    "--test-reporter-destination=stdout",
    "--test-reporter=tap",
    `--test-reporter-destination=${tap}`,
    ...process.argv.slice(2),
    ...files,
  ];
  const code = await new Promise<number>((ok) => {
    const node = spawn(process.execPath, args, {
      stdio: "inherit",
      env: { ...process.env, FLYWHEEL_HARNESS: control },
    });
    node.once("exit", (c) => ok(c ?? 1));
  });
  stop();
  const report = readFileSync(tap, "utf8");
  const passed = Number(/^# pass (\d+)$/m.exec(report)?.[1] ?? 0);
  if (code === 0 && passed === 0) {
    console.error("no test passed: a run in which nothing ran is a failure");
    return 1;
  }
  return code;
}

process.exit(await main());
