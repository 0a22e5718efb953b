// Secrets from Pulumi's encrypted config, in their own initramfs layer.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { execFileSync } from "node:child_process";
import { Project } from "./project";
import { parseSecrets, SALT_PATH, writeSecretsLayer } from "../src/image/secrets";

const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const files = (dir: string): string[] => (fs.existsSync(dir) ? fs.readdirSync(dir, { recursive: true }).map((f) => path.join(dir, String(f))).filter((f) => fs.lstatSync(f).isFile()) : []);

test("secrets: in the image with their mode, nowhere else in plaintext, rebuilt alone, per stack", { timeout: 30 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  const root = path.join(p.dir, "system", "root");
  fs.writeFileSync(path.join(p.dir, "system", "secrets"), "file /etc/ramroot/test-secret 0600 root testSecret\npassword root rootPasswordHash\n");
  fs.writeFileSync(
    path.join(root, "etc", "local.d", "00-secret.start"),
    '#!/bin/sh\nf=/etc/ramroot/test-secret\necho "ramroot: secret mode=$(stat -c %a $f) owner=$(stat -c %u:%g $f) sha256=$(sha256sum $f | cut -d" " -f1)"\necho "ramroot: root password field sha256=$(grep ^root: /etc/shadow | cut -d: -f2 | tr -d "\\n" | sha256sum | cut -d" " -f1)"\n',
    { mode: 0o755 },
  );
  const value = `s3cret-${randomBytes(12).toString("hex")}`;
  const salt = randomBytes(32).toString("hex");
  const password = `$6$salt$${randomBytes(16).toString("hex")}`;
  const outputs: string[] = [];
  const run = async (args: string[], opts = {}) => {
    const r = await p.pulumi(args, opts);
    outputs.push(r.stdout, r.stderr);
    return r;
  };
  await run(["stack", "init", "qemu"]);

  await t.test("a declared secret that is not set fails preview, naming the config key", async () => {
    const r = await run(["preview", "--stack", "qemu"], { allowFail: true });
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /declares ramroot:testSecret, which is not set in stack qemu: pulumi config set --secret ramroot:testSecret/);
  });

  await t.test("a stack without a salt for its secrets fails preview, saying how to make one", async () => {
    await run(["config", "set", "--secret", "ramroot:testSecret", value, "--stack", "qemu"]);
    await run(["config", "set", "--secret", "ramroot:rootPasswordHash", password, "--stack", "qemu"]);
    const r = await run(["preview", "--stack", "qemu"], { allowFail: true });
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /system\/secrets declares secrets, and stack qemu has no salt for them .*: pulumi config set --secret ramroot:secretsSalt "\$\(openssl rand -hex 32\)" --stack qemu/);
  });

  await t.test("the guest sees the file with its mode and content, and root's password", async () => {
    await run(["config", "set", "--secret", "ramroot:secretsSalt", salt, "--stack", "qemu"]);
    const r = await run(["up", "--yes", "--stack", "qemu"]);
    assert.match(r.stdout, new RegExp(`ramroot: secret mode=600 owner=0:0 sha256=${sha(value)}`));
    assert.match(r.stdout, new RegExp(`ramroot: root password field sha256=${sha(password)}`));
  });

  await t.test("the value is nowhere in the state, the CLI output, or the store outside the secret layer and the images", async () => {
    const store = path.join(p.dir, ".ramroot", "store");
    const secretBearing = (f: string) => /\/(secrets|uki|disk)\//.test(f);
    for (const f of [...files(path.join(p.dir, ".ramroot", "state")), ...files(store).filter((f) => !secretBearing(f)), ...files(path.join(p.dir, "stacks"))]) {
      const text = fs.readFileSync(f).toString("latin1");
      assert.ok(!text.includes(value) && !text.includes(password) && !text.includes(salt), `a secret value is in ${f}`);
    }
    for (const o of outputs) assert.ok(!o.includes(value) && !o.includes(password) && !o.includes(salt), "a secret value is in the CLI output");
    for (const f of files(store).filter(secretBearing)) assert.equal(fs.statSync(f).mode & 0o777, 0o600, `${f} is readable by others`);
  });

  await t.test("changing the secret: preview names the secret layer, the Uki and what follows; up rebuilds only those", async () => {
    await run(["config", "set", "--secret", "ramroot:testSecret", `${value}-2`, "--stack", "qemu"]);
    assert.deepEqual(await p.previewSteps("qemu"), ["update boot", "update media", "update secrets", "update uki"]);
    const before = JSON.parse((await run(["stack", "output", "--json", "--stack", "qemu"])).stdout);
    const mark = p.journal().length;
    const r = await run(["up", "--yes", "--stack", "qemu"]);
    const built = p.journal().slice(mark).filter((e) => e.event === "built").map((e) => String(e.artifact).split("/")[0]).sort();
    assert.deepEqual(built, ["disk", "release", "secrets", "uki"]);
    assert.match(r.stdout, new RegExp(`ramroot: secret mode=600 owner=0:0 sha256=${sha(`${value}-2`)}`));
    const after = JSON.parse((await run(["stack", "output", "--json", "--stack", "qemu"])).stdout);
    assert.equal(after.buildId, before.buildId, "the build id changed with a secret");
    assert.equal(after.initramfsHash, before.initramfsHash);
  });

  await t.test("production holds its own values: same build, different secrets layer (its system folder given as an absolute path)", async () => {
    await run(["stack", "init", "production"]);
    await run(["config", "set", "ramroot:target", "production", "--stack", "production"]);
    // An absolute ramroot:system once dropped every secret silently (path.join(project, system)).
    await run(["config", "set", "ramroot:system", path.join(p.dir, "system"), "--stack", "production"]);
    await run(["config", "set", "--secret", "ramroot:testSecret", "production value", "--stack", "production"]);
    await run(["config", "set", "--secret", "ramroot:rootPasswordHash", password, "--stack", "production"]);
    await run(["config", "set", "--secret", "ramroot:secretsSalt", randomBytes(32).toString("hex"), "--stack", "production"]);
    const mark = p.journal().length;
    await run(["up", "--yes", "--stack", "production"]);
    const built = p.journal().slice(mark).filter((e) => e.event === "built").map((e) => String(e.artifact).split("/")[0]);
    assert.ok(built.includes("secrets"), `production built no secrets layer: ${built.join(", ")}`);
    const q = JSON.parse((await run(["stack", "output", "--json", "--stack", "qemu"])).stdout);
    const prod = JSON.parse((await run(["stack", "output", "--json", "--stack", "production"])).stdout);
    assert.equal(prod.buildId, q.buildId);
    assert.notEqual(prod.ukiSha256, q.ukiSha256);
  });
});

test("the salt: in the layer (root's, 0400), and the same values under another salt give other bytes", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-salt-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, "rootfs", "etc"), { recursive: true });
  const decls = parseSecrets("file /etc/ramroot/pin 0600 root pin\n", "system/secrets");
  const layer = async (salt: string, out: string) => {
    await writeSecretsLayer({ decls, values: { pin: "1234" }, salt, rootfs: path.join(dir, "rootfs"), compression: "none", out: path.join(dir, out), declFile: "system/secrets" });
    return fs.readFileSync(path.join(dir, out));
  };
  const a = await layer("a".repeat(64), "a.cpio");
  const b = await layer("b".repeat(64), "b.cpio");
  assert.notDeepEqual(a, b);
  // GNU cpio lists what the kernel will unpack.
  const listing = execFileSync("cpio", ["-itv", "--quiet"], { input: a, encoding: "utf8" });
  assert.match(listing, new RegExp(`^-r-------- +1 root +root +65 .* ${SALT_PATH}$`, "m"));
  await assert.rejects(layer("short", "c.cpio"), /ramroot:secretsSalt is shorter than 32 characters/);
});
