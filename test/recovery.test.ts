// After any kill of `pulumi up`, the next `npm run up` works and nothing it
// started lives on; a lost passphrase is said to be lost, and it does not live beside the store.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Project } from "./project";

/** pids of live processes whose command line or working folder is inside `dir`. */
function processesIn(dir: string): string[] {
  const out: string[] = [];
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    if (Number(pid) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
      const cwd = fs.readlinkSync(`/proc/${pid}/cwd`);
      if (cmd.includes(dir) || cwd.startsWith(dir)) out.push(`${pid} ${cmd.trim().slice(0, 160)}`);
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return out;
}

const wrapper = (p: Project, args: string[], env: NodeJS.ProcessEnv = p.env) =>
  spawnSync("bash", [path.join(p.dir, "scripts", "pulumi.sh"), "--non-interactive", ...args], { cwd: p.dir, env, encoding: "utf8", timeout: 10 * 60_000 });

test("kill -9 of pulumi in the middle of an up: nothing it started lives on, and the next up works", { timeout: 15 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  assert.equal(wrapper(p, ["stack", "init", "qemu"]).status, 0);
  // The wrapper execs pulumi: the child's pid is pulumi's. Killed once the boot check runs, so
  // that a provider and QEMU are alive.
  const up = spawn("bash", [path.join(p.dir, "scripts", "pulumi.sh"), "--non-interactive", "up", "--yes", "--stack", "qemu"], { cwd: p.dir, env: p.env, stdio: ["ignore", "pipe", "pipe"] });
  let seen = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the boot check did not start:\n${seen}`)), 8 * 60_000);
    up.stdout!.on("data", (d) => {
      seen += d;
      if (/\[bootcheck\] booting/.test(seen)) {
        clearTimeout(timer);
        resolve();
      }
    });
    up.on("exit", () => reject(new Error(`pulumi ended first:\n${seen}`)));
  });
  up.kill("SIGKILL");
  // Within a few seconds the language host, the providers and QEMU are gone.
  let left: string[] = [];
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 500));
    left = processesIn(p.dir);
    if (left.length === 0) break;
  }
  assert.deepEqual(left, [], "processes outlived the killed pulumi");

  const again = wrapper(p, ["up", "--yes", "--stack", "qemu"]);
  assert.equal(again.status, 0, again.stdout + again.stderr);
  assert.match(again.stderr, /ramroot: stack qemu was locked by pulumi \(pid \d+\), which is no longer running: lock removed/);
  assert.match(again.stdout, /ramroot: build [0-9a-f]+ up/);
});

test("Ctrl-C twice while setup.sh runs: it stops at once, nothing it started lives on, and nothing is left behind", { timeout: 15 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  const setup = path.join(p.dir, "system", "setup.sh");
  const original = fs.readFileSync(setup, "utf8");
  fs.writeFileSync(setup, `${original}\necho "ramroot-test: setup.sh sleeping"\nsleep 600 &\nsleep 600\n`);
  assert.equal(wrapper(p, ["stack", "init", "qemu"]).status, 0);
  const up = spawn("bash", [path.join(p.dir, "scripts", "pulumi.sh"), "--non-interactive", "up", "--yes", "--stack", "qemu"], { cwd: p.dir, env: p.env, stdio: ["ignore", "pipe", "pipe"] });
  let seen = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`setup.sh did not start:\n${seen}`)), 8 * 60_000);
    up.stdout!.on("data", (d) => {
      seen += d;
      if (/ramroot-test: setup.sh sleeping/.test(seen)) {
        clearTimeout(timer);
        resolve();
      }
    });
    up.on("exit", () => reject(new Error(`pulumi ended first:\n${seen}`)));
  });
  // What a terminal's Ctrl-C does: SIGINT to the foreground job, once to ask, once more to stop.
  const started = Date.now();
  up.kill("SIGINT");
  await new Promise((r) => setTimeout(r, 500));
  up.kill("SIGINT");
  await new Promise<void>((resolve) => (up.exitCode !== null ? resolve() : up.once("exit", () => resolve())));
  let left: string[] = [];
  for (let i = 0; i < 20; i++) {
    left = processesIn(p.dir);
    const sleeping = fs.readdirSync("/proc").filter((q) => /^\d+$/.test(q)).filter((q) => {
      try {
        return fs.readFileSync(`/proc/${q}/cmdline`, "utf8").replace(/\0/g, " ").trim() === "sleep 600";
      } catch {
        return false;
      }
    });
    left.push(...sleeping.map((q) => `${q} sleep 600 (setup.sh's)`));
    if (left.length === 0) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.deepEqual(left, [], "processes outlived the interrupted up");
  t.diagnostic(`stopped ${((Date.now() - started) / 1000).toFixed(1)} s after the first Ctrl-C`);
  assert.ok(Date.now() - started < 15_000, "setup.sh was not stopped at once");
  // The next up (setup.sh as it was) works, and no temporary of the interrupted one survives it.
  fs.writeFileSync(setup, original);
  const again = wrapper(p, ["up", "--yes", "--stack", "qemu"]);
  assert.equal(again.status, 0, again.stdout + again.stderr);
  const store = path.join(p.dir, ".ramroot", "store");
  assert.deepEqual(fs.readdirSync(store, { recursive: true }).map(String).filter((f) => /\.tmp-|\.setup-/.test(f)), []);
  const mounts = fs.readFileSync("/proc/mounts", "utf8").split("\n").filter((l) => l.includes(p.dir));
  assert.deepEqual(mounts, []);
});

test("the passphrase: made outside .ramroot/, moved out of it, and reported lost rather than replaced", { timeout: 5 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  const config = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-config-"));
  t.after(() => fs.rmSync(config, { recursive: true, force: true }));
  const env: NodeJS.ProcessEnv = { ...p.env, XDG_CONFIG_HOME: config };
  delete env.PULUMI_CONFIG_PASSPHRASE;
  delete env.PULUMI_CONFIG_PASSPHRASE_FILE;
  const passphrase = path.join(config, "ramroot", "passphrase");

  // A stack made through the wrapper: the passphrase is made in the config folder, 0600.
  const init = wrapper(p, ["stack", "init", "qemu"], env);
  assert.equal(init.status, 0, init.stderr);
  assert.ok(fs.existsSync(passphrase));
  assert.equal(fs.statSync(passphrase).mode & 0o777, 0o600);
  assert.ok(!fs.existsSync(path.join(p.dir, ".ramroot", "passphrase")));
  // The wrapper gives every new stack its secrets salt, encrypted.
  const yaml = fs.readFileSync(path.join(p.dir, "stacks", "Pulumi.qemu.yaml"), "utf8");
  assert.match(yaml, /^encryptionsalt: /m);
  assert.match(yaml, /ramroot:secretsSalt:\n\s+secure: /);
  assert.equal(wrapper(p, ["config", "get", "ramroot:secretsSalt", "--stack", "qemu"], env).stdout.trim().length, 64);

  // Lost: the stack is encrypted and the passphrase is gone. Said, and no new one is made.
  const saved = fs.readFileSync(passphrase);
  fs.rmSync(passphrase);
  const lost = wrapper(p, ["preview", "--stack", "qemu"], env);
  assert.notEqual(lost.status, 0);
  assert.match(lost.stderr, new RegExp(`ramroot: the passphrase of the stacks qemu is lost: ${passphrase} does not exist`));
  assert.ok(!fs.existsSync(passphrase), "a new passphrase replaced the lost one");

  // An earlier release's .ramroot/passphrase is moved out of the store's folder.
  fs.writeFileSync(path.join(p.dir, ".ramroot", "passphrase"), saved, { mode: 0o600 });
  const moved = wrapper(p, ["config", "get", "ramroot:secretsSalt", "--stack", "qemu"], env);
  assert.equal(moved.status, 0, moved.stderr);
  assert.ok(!fs.existsSync(path.join(p.dir, ".ramroot", "passphrase")));
  assert.deepEqual(fs.readFileSync(passphrase), saved);
});
