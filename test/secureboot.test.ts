// Secure Boot end to end: the boot check's enforcing firmware (src/boot/qemu.ts) on both
// architectures with a small UKI (the test system's kernel and stub, a busybox /init that prints
// a marker and powers off): signed with the key in db it boots; unsigned, signed by another
// key, or with one byte of .cmdline changed after signing, the firmware refuses it and the
// check fails at once naming Secure Boot; the production check (assertSignedBy) agrees. Then
// the qemu stack under the real Pulumi CLI: signed as a step of its own, booted (health report,
// power-off) under enforcing firmware; a new key re-signs and re-boots, nothing else is rebuilt,
// and the firmware refuses that key's image; the key is in no state, log or store file.
//
// Debian's snakeoil key is in the db of OVMF_VARS_4M.snakeoil.fd and AAVMF_VARS.snakeoil.fd.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createPrivateKey } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { buildUki, inspectUki, kernelRelease } from "../src/image/uki";
import { makeEspImage, type Arch } from "../src/boot/bootmedia";
import { bootCheck, BootCheckError, qemuCommand, secureBootVarsProblem } from "../src/boot/qemu";
import { assertSignedBy, signUki, verifyUki } from "../src/image/sign";
import { Project, repo } from "./project";

const SNAKEOIL = { key: "/usr/share/ovmf/PkKek-1-snakeoil.key", cert: "/usr/share/ovmf/PkKek-1-snakeoil.pem", passphrase: "snakeoil" };
const MARKER = "ramroot-secureboot-init";
const REFUSED = /Secure Boot: the firmware refused to run the UKI/;

let tmp: string;
const other = () => ({ key: path.join(tmp, "other.key"), cert: path.join(tmp, "other.pem") });

function testsys(arch: Arch): string {
  return execFileSync("bash", [path.join(repo, "scripts", "testsys.sh"), arch], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim().split("\n").pop()!;
}

// Every form in which the key could leak: its PEM lines as stored (encrypted) and decrypted
// (what src/image/sign.ts hands to sbsign), and its DER encodings.
function secretsOf(file: string, passphrase?: string): Buffer[] {
  const pem = fs.readFileSync(file);
  const k = createPrivateKey({ key: pem, passphrase });
  const decrypted = k.export({ type: "pkcs8", format: "pem" }).toString();
  const lines = [pem.toString(), decrypted].flatMap((t) => t.split("\n")).filter((l) => l.length >= 32 && !l.startsWith("-----")).map((l) => Buffer.from(l));
  return [k.export({ type: "pkcs8", format: "der" }), k.export({ type: "pkcs1", format: "der" }), ...lines];
}

function holdsNone(haystack: Buffer, secrets: Buffer[], what: string): void {
  for (const s of secrets) assert.equal(haystack.indexOf(s), -1, `${what} holds a piece of the private key`);
}

function filesUnder(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-secureboot-"));
  execFileSync("openssl", ["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", other().key, "-out", other().cert, "-subj", "/CN=not in db", "-days", "30"], { stdio: "pipe" });
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

for (const arch of ["x86_64", "aarch64"] as Arch[]) {
  describe(`${arch}: enforcing firmware in the boot check`, () => {
    const dir = () => path.join(tmp, arch);
    const file = (name: string) => path.join(dir(), name);
    let cmdlineOffset = 0;

    before(async () => {
      fs.mkdirSync(dir());
      const sys = testsys(arch);
      const root = file("root");
      fs.mkdirSync(path.join(root, "bin"), { recursive: true });
      fs.chmodSync(root, 0o755);
      fs.copyFileSync(path.join(sys, "bin", "busybox"), path.join(root, "bin", "busybox"));
      fs.chmodSync(path.join(root, "bin", "busybox"), 0o755);
      fs.writeFileSync(path.join(root, "init"), `#!/bin/busybox sh\n/bin/busybox echo ${MARKER}-$(/bin/busybox uname -m)\n/bin/busybox poweroff -f\n`, { mode: 0o755 });
      execFileSync("sh", ["-c", `cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible | gzip -n > "$2"`, "sh", root, file("initrd.gz")]);
      const kernel = path.join(sys, "boot", "vmlinuz");
      const stub = path.join(sys, "usr/lib/systemd/boot/efi", arch === "x86_64" ? "linuxx64.efi.stub" : "linuxaa64.efi.stub");
      const console_ = arch === "x86_64" ? "ttyS0" : "ttyAMA0";
      await buildUki({ stub, linux: kernel, initrds: [file("initrd.gz")], cmdline: `console=${console_} rdinit=/init`, uname: await kernelRelease(kernel) }, file("unsigned.efi"));
      await signUki(file("unsigned.efi"), file("signed.efi"), { key: fs.readFileSync(SNAKEOIL.key), passphrase: SNAKEOIL.passphrase, cert: fs.readFileSync(SNAKEOIL.cert) });
      await signUki(file("unsigned.efi"), file("other.efi"), { key: fs.readFileSync(other().key), cert: fs.readFileSync(other().cert) });
      // One byte of .cmdline changed after signing ("console=" becomes "Console=").
      cmdlineOffset = (await inspectUki(file("signed.efi"))).sections.find((s) => s.name === ".cmdline")!.offset;
      const buf = fs.readFileSync(file("signed.efi"));
      buf[cmdlineOffset] ^= 0x20;
      fs.writeFileSync(file("modified.efi"), buf);
      for (const n of ["signed", "unsigned", "other", "modified"]) await makeEspImage({ efi: file(`${n}.efi`), arch, out: file(`${n}.img`) });
    });

    const boot = (name: string) => bootCheck({ arch, disk: file(`${name}.img`), marker: `${MARKER}-${arch === "x86_64" ? "x86_64" : "aarch64"}`, timeoutMs: 240_000, secureBoot: {} });

    test("signed with the key in db: boots", async (t) => {
      const r = await boot("signed");
      t.diagnostic(`${arch} signed: marker after ${r.seconds.toFixed(1)} s`);
      // The firmware really enforced: the stub says so, and the kernel found Secure Boot on.
      assert.match(r.console, /Secure boot enabled|UEFI Secure Boot is enabled/i, `the kernel did not see Secure Boot enabled:\n${r.console.slice(-3000)}`);
    });

    for (const [name, why] of [["unsigned", "not signed"], ["other", "signed by a key not in db"], ["modified", "one byte of .cmdline changed after signing"]] as const) {
      test(`${why}: the firmware refuses it, the check fails at once naming Secure Boot`, async (t) => {
        const t0 = Date.now();
        const err = await boot(name).then(() => undefined, (e) => e);
        t.diagnostic(`${arch} ${name}: failed after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        assert.ok(err instanceof BootCheckError, `expected a refusal, got ${err ? err.message : "a boot"}`);
        assert.match(err.message, REFUSED);
        assert.match(err.message, /Access Denied|Security Violation/, "the firmware's own words are in the error");
        assert.ok(Date.now() - t0 < 120_000, "the check waited for its timeout instead of failing at the refusal");
      });
    }

    test("ramroot qemu --secure-boot boots the signed disk under the same firmware; a store in Setup Mode is refused", () => {
      const r = spawnSync(path.join(repo, "bin", "ramroot"), ["qemu", "--disk", file("signed.img"), "--arch", arch, "--secure-boot"], { encoding: "utf8", input: "", timeout: 240_000 });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`${MARKER}-${arch}`));
      assert.match(r.stderr, arch === "x86_64" ? /smm=on .*OVMF_CODE_4M\.secboot\.fd/ : /AAVMF_CODE\.snakeoil\.fd/);
      assert.match(r.stderr, /Secure Boot enforced/);
      const plain = arch === "x86_64" ? "/usr/share/OVMF/OVMF_VARS_4M.fd" : "/usr/share/AAVMF/AAVMF_VARS.fd";
      const bad = spawnSync(path.join(repo, "bin", "ramroot"), ["qemu", "--disk", file("signed.img"), "--arch", arch, "--vars", plain], { encoding: "utf8", input: "", timeout: 60_000 });
      assert.equal(bad.status, 1);
      assert.match(bad.stderr, new RegExp(`Secure Boot: the UEFI variable store ${plain} holds no Platform Key`));
    });

    test("the production check (assertSignedBy) agrees with the firmware", async () => {
      const snake = fs.readFileSync(SNAKEOIL.cert, "utf8");
      const v = await assertSignedBy(file("signed.efi"), snake);
      assert.ok(v.ok);
      await assert.rejects(assertSignedBy(file("unsigned.efi"), snake), /Secure Boot: .* does not verify against ramroot:secureBootCert .*it is not signed.*nothing was sent/s);
      await assert.rejects(assertSignedBy(file("other.efi"), snake), /signed by CN=not in db, which is not .*nothing was sent/s);
      await assert.rejects(assertSignedBy(file("modified.efi"), snake), /modified after it was signed/);
      await assert.rejects(assertSignedBy(file("missing.efi"), snake), /does not exist: build it first\); nothing was sent/);
      await assert.rejects(assertSignedBy(file("signed.efi"), "not a certificate"), /ramroot:secureBootCert is not an X.509 certificate/);
      assert.ok((await verifyUki(file("other.efi"), fs.readFileSync(other().cert))).ok, "the other key's image does verify against its own certificate");
    });
  });
}

test("qemuCommand with secureBoot: Secure Boot code, SMM on x86_64, the given variable store as pflash unit 1", () => {
  const x = qemuCommand({ arch: "x86_64", disk: "d.img", secureBoot: true, firmwareVars: "/tmp/v.fd" }).args.join(" ");
  assert.match(x, /-M q35,smm=on -global driver=cfi\.pflash01,property=secure,value=on /);
  assert.match(x, /if=pflash,format=raw,unit=0,readonly=on,file=\/usr\/share\/OVMF\/OVMF_CODE_4M\.secboot\.fd -drive if=pflash,format=raw,unit=1,file=\/tmp\/v\.fd /);
  assert.doesNotMatch(x, /OVMF_CODE_4M\.fd|snapshot=on/);
  const a = qemuCommand({ arch: "aarch64", disk: "d.img", secureBoot: true, firmwareVars: "/tmp/v.fd" }).args.join(" ");
  assert.match(a, /unit=0,readonly=on,file=\/usr\/share\/AAVMF\/AAVMF_CODE\.snakeoil\.fd -drive if=pflash,format=raw,unit=1,file=\/tmp\/v\.fd /);
  assert.doesNotMatch(a, /-bios/);
  assert.throws(() => qemuCommand({ arch: "x86_64", disk: "d.img", secureBoot: true }), /Secure Boot needs a writable copy of a variable store/);
  // Without it, nothing of the above.
  assert.doesNotMatch(qemuCommand({ arch: "x86_64", disk: "d.img" }).args.join(" "), /smm=on|secboot/);
});

test("a variable store that would not enforce (no Platform Key: Setup Mode) is refused before booting", async () => {
  assert.equal(await secureBootVarsProblem("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"), undefined);
  assert.equal(await secureBootVarsProblem("/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd"), undefined);
  for (const [arch, vars] of [["x86_64", "/usr/share/OVMF/OVMF_VARS_4M.fd"], ["aarch64", "/usr/share/AAVMF/AAVMF_VARS.fd"]] as const) {
    assert.match((await secureBootVarsProblem(vars))!, /holds no Platform Key \(PK\), so the firmware is in Setup Mode and runs any image/);
    const t0 = Date.now();
    await assert.rejects(bootCheck({ arch, disk: path.join(tmp, arch, "unsigned.img"), marker: "never", secureBoot: { vars } }), /^Error: Secure Boot: the UEFI variable store .* holds no Platform Key/);
    assert.ok(Date.now() - t0 < 5000, "qemu was started");
  }
  // The snakeoil store with its SecureBootEnable byte turned off (the last one of the name).
  const off = path.join(tmp, "vars-disabled.fd");
  const b = fs.readFileSync("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd");
  const name = Buffer.from("SecureBootEnable\0", "utf16le");
  const at = b.lastIndexOf(name);
  b[at + name.length] = 0;
  fs.writeFileSync(off, b);
  assert.match((await secureBootVarsProblem(off))!, /has Secure Boot disabled \(SecureBootEnable is 0\)/);
});

// The qemu stack (the example system, aarch64) under the real CLI: a throw-away project copy.
test("the qemu stack signs its UKI as its own step and boots it under enforcing firmware", { timeout: 30 * 60_000 }, async (t) => {
  const p = Project.create("ramroot-secureboot-stack-");
  t.after(() => p.remove());
  const logs: string[] = [];
  const run = async (args: string[], allowFail = false) => {
    const r = await p.pulumi(args, { allowFail });
    logs.push(r.stdout, r.stderr);
    return r;
  };
  const outputs = async () => JSON.parse((await run(["stack", "output", "--json", "--stack", "qemu"])).stdout);
  const builtSince = (mark: number) => p.journal().slice(mark).filter((e) => e.event === "built").map((e) => String(e.artifact)).sort();

  await t.test("preview names the signing step; up signs and boots under Secure Boot", async () => {
    await run(["stack", "init", "qemu"]);
    await run(["config", "set", "ramroot:secureBootCert", "--stack", "qemu", "--", fs.readFileSync(SNAKEOIL.cert, "utf8")]);
    await run(["config", "set", "--secret", "ramroot:secureBootKey", "--stack", "qemu", "--", fs.readFileSync(SNAKEOIL.key, "utf8")]);
    await run(["config", "set", "--secret", "ramroot:secureBootKeyPassphrase", "--stack", "qemu", "--", SNAKEOIL.passphrase]);
    assert.deepEqual(await p.previewSteps("qemu"), ["create boot", "create goprograms", "create initramfs", "create media", "create rootfs", "create signed", "create uki"]);
    const t0 = Date.now();
    const r = await run(["up", "--yes", "--stack", "qemu"]);
    t.diagnostic(`first up (build, sign, boot): ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    assert.match(r.stdout, /with Secure Boot enforced/);
    assert.match(r.stdout, /\[signeduki\] signed [0-9a-f]{64}\.efi \(UKI [0-9a-f]{64}\.efi\): Authenticode SHA-256 [0-9a-f]{16}, by C=US, .*O=SnakeOil, sha256 [0-9a-f]{16}/);
    const o = await outputs();
    assert.notEqual(o.signedUkiSha256, o.ukiSha256);
    assert.ok((await verifyUki(o.signedUkiPath, fs.readFileSync(SNAKEOIL.cert))).ok);
    assert.ok(!(await verifyUki(o.ukiPath, fs.readFileSync(SNAKEOIL.cert))).ok, "the unsigned UKI stays unsigned");
    assert.match(o.bootHealth, /ramroot-health: result ok/);
    // The boot record is for the bytes that booted: the signed ones.
    const record = JSON.parse(fs.readFileSync(path.join(p.dir, ".ramroot", "store", "booted", `${o.signedUkiSha256}.json`), "utf8"));
    assert.equal(record.secureBoot, true);
  });

  await t.test("production, signing with the same key, takes the very signed bytes the qemu stack booted", async () => {
    await run(["stack", "init", "production"]);
    await run(["config", "set", "ramroot:target", "production", "--stack", "production"]);
    await run(["config", "set", "ramroot:secureBootCert", "--stack", "production", "--", fs.readFileSync(SNAKEOIL.cert, "utf8")]);
    await run(["config", "set", "--secret", "ramroot:secureBootKey", "--stack", "production", "--", fs.readFileSync(SNAKEOIL.key, "utf8")]);
    await run(["config", "set", "--secret", "ramroot:secureBootKeyPassphrase", "--stack", "production", "--", SNAKEOIL.passphrase]);
    assert.deepEqual(await p.previewSteps("production"), ["create goprograms", "create initramfs", "create rootfs", "create signed", "create uki"]);
    const mark = p.journal().length;
    await run(["up", "--yes", "--stack", "production"]);
    assert.deepEqual(builtSince(mark), [], "production built what the qemu stack had built");
    const prod = JSON.parse((await run(["stack", "output", "--json", "--stack", "production"])).stdout);
    const q = await outputs();
    assert.equal(prod.signedUkiSha256, q.signedUkiSha256);
    assert.equal(prod.signedUkiPath, q.signedUkiPath);
  });

  await t.test("a new key: preview and up change only the signing step and what follows; the firmware refuses that key", async () => {
    const before = await outputs();
    await run(["config", "rm", "ramroot:secureBootKeyPassphrase", "--stack", "qemu"]);
    await run(["config", "set", "ramroot:secureBootCert", "--stack", "qemu", "--", fs.readFileSync(other().cert, "utf8")]);
    await run(["config", "set", "--secret", "ramroot:secureBootKey", "--stack", "qemu", "--", fs.readFileSync(other().key, "utf8")]);
    assert.deepEqual(await p.previewSteps("qemu"), ["update boot", "update media", "update signed"]);
    const mark = p.journal().length;
    const r = await run(["up", "--yes", "--stack", "qemu"], true);
    assert.notEqual(r.code, 0, "the boot check passed an image signed by a key that is not in db");
    assert.match(r.stdout + r.stderr, REFUSED);
    const built = builtSince(mark);
    assert.equal(built.length, 2, `built: ${built.join(", ")}`);
    assert.match(built[0], /^disk\//);
    assert.match(built[1], /^uki\/[0-9a-f]{64}\.efi$/);
    assert.ok(!built.includes(path.relative(path.join(p.dir, ".ramroot", "store"), before.ukiPath)), "the unsigned UKI was rebuilt");
    assert.equal(p.journal().slice(mark).filter((e) => e.event === "booted").length, 0);
    const after_ = await outputs();
    assert.equal(after_.ukiSha256, before.ukiSha256);
    assert.equal(after_.initramfsHash, before.initramfsHash);
  });

  await t.test("bad Secure Boot config stops the preview, naming the key to set", async () => {
    // The other key with the snakeoil certificate: not that certificate's key.
    await run(["config", "set", "ramroot:secureBootCert", "--stack", "qemu", "--", fs.readFileSync(SNAKEOIL.cert, "utf8")]);
    let r = await run(["preview", "--stack", "qemu"], true);
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /ramroot:secureBootKey: the signing key does not belong to the certificate/);
    await run(["config", "rm", "ramroot:secureBootCert", "--stack", "qemu"]);
    r = await run(["preview", "--stack", "qemu"], true);
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /ramroot:secureBootKey is set in stack qemu, ramroot:secureBootCert is not/);
    await run(["config", "set", "ramroot:secureBootCert", "--stack", "qemu", "--", "db.pem"]);
    r = await run(["preview", "--stack", "qemu"], true);
    assert.match(r.stdout + r.stderr, /ramroot:secureBootCert is neither a PEM certificate .* nor a file that can be read/);
  });

  await t.test("the keys are in no state, log or store file", async () => {
    const exported = await run(["stack", "export", "--stack", "qemu"]);
    const secrets = [...secretsOf(SNAKEOIL.key, SNAKEOIL.passphrase), ...secretsOf(other().key), Buffer.from(`"${SNAKEOIL.passphrase}"`)];
    holdsNone(Buffer.from(exported.stdout), secrets, "pulumi stack export");
    // The key is there, as the engine's ciphertext, in the signing step's inputs and outputs.
    const signedRes = JSON.parse(exported.stdout).deployment.resources.find((r: any) => r.type === "pulumi-nodejs:dynamic/ramroot:SignedUki");
    assert.ok(signedRes?.inputs?.key?.ciphertext && signedRes?.outputs?.key?.ciphertext, `the key is not kept as a secret: ${JSON.stringify(signedRes?.inputs?.key)?.slice(0, 80)}`);
    holdsNone(Buffer.from(logs.join("\n")), secrets, "the CLI's output");
    let n = 0;
    for (const f of filesUnder(path.join(p.dir, ".ramroot"))) {
      holdsNone(fs.readFileSync(f), secrets, f);
      n++;
    }
    t.diagnostic(`${n} files under .ramroot (store, state, persistence disks) hold no piece of either key`);
    assert.ok(n > 20);
  });
});
