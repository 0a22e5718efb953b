import { test } from "node:test";
import assert from "node:assert/strict";
import { run, RunError } from "../../src/run";

test("run: output collected, a known environment, stdin from input", async () => {
  process.env.RAMROOT_TEST_SECRET = "s3cret";
  try {
    const r = await run("sh", ["-c", 'echo "out $LANG"; echo err >&2; echo "secret=${RAMROOT_TEST_SECRET:-none}"; cat']
      , { input: "from stdin\n" });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "out C\nsecret=none\nfrom stdin\n");
    assert.equal(r.stderr, "err\n");
    assert.equal((await run("sh", ["-c", "echo $X"], { env: { PATH: process.env.PATH, X: "given" } })).stdout, "given\n");
  } finally {
    delete process.env.RAMROOT_TEST_SECRET;
  }
});

test("run: a failure names the command, how it ended and the end of its output", async () => {
  await assert.rejects(run("sh", ["-c", "for i in $(seq 1 30); do echo line$i; done >&2; exit 3"]), (e: RunError) => {
    assert.match(e.message, /^`sh -c .*` exited 3:\nline11\n[^]*line30$/);
    assert.doesNotMatch(e.message, /line10\n/);
    assert.equal(e.result?.exitCode, 3);
    return true;
  });
  assert.equal((await run("sh", ["-c", "exit 4"], { allowFail: true })).exitCode, 4);
  await assert.rejects(run("sh", ["-c", "echo x; exit 1"], { shown: "sh (a secret left out)" }), /^Error: `sh \(a secret left out\)` exited 1:\nx$/);
});

test("run: a timeout stops it; a missing program names its package", async () => {
  const start = Date.now();
  await assert.rejects(run("sleep", ["30"], { timeoutMs: 200, allowFail: true }), /`sleep 30` was stopped after 0.2 s/);
  assert.ok(Date.now() - start < 10_000);
  await assert.rejects(run("mcopy-not-here", []), (e: RunError) => e.notFound && /mcopy-not-here is not installed \(running/.test(e.message));
  const missing = "sbsign";
  if (!(await run("sh", ["-c", `command -v ${missing}`], { allowFail: true })).stdout) {
    await assert.rejects(run(missing, []), /sbsign is not installed: install sbsigntool/);
  }
});
