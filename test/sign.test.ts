// Secure Boot's engine-free core: signUki and verifyUki with a throw-away key (openssl), checked
// against sbverify; the key kept out of every file, temporary and error; the enrollment files
// against openssl and efitools' cert-to-efi-sig-list; `ramroot inspect --cert` and `ramroot
// secureboot keys` as a user runs them. The firmware's side (signed UKIs booting under OVMF and
// AAVMF, unsigned and modified ones refused) is in test/uki.test.ts.
//
// Needs sbsigntool, efitools, openssl, GNU cpio and systemd-boot-efi (npm run setup).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { buildUki } from "../src/image/uki";
import { authenticodeDigest, readSignatures } from "../src/image/authenticode";
import { efiSignatureList, EFI_CERT_X509_GUID, guidBytes, ownerFor, signUki, verifyUki, writeEnrollmentFiles } from "../src/image/sign";
import { repo } from "./project";
import { deployImage } from "../src/deploy/deploy";

const STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const ramroot = (...args: string[]) => spawnSync(path.join(repo, "bin", "ramroot"), args, { encoding: "utf8" });
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

let tmp: string;
let unsigned: string;
const key = () => fs.readFileSync(path.join(tmp, "key.pem"));
const cert = () => fs.readFileSync(path.join(tmp, "cert.pem"));

// A self-signed RSA certificate and its key, made by openssl.
function keypair(dir: string, cn: string, extra: string[] = ["-newkey", "rsa:2048"]): void {
  execFileSync("openssl", ["req", "-new", "-x509", ...extra, "-nodes", "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"), "-subj", `/CN=${cn}`, "-days", "2"], { stdio: "pipe" });
}

// Every form in which the key's secret could leak: its DER encodings, its PEM lines, and the
// private exponent and primes as bytes.
function secretsOf(pem: Buffer): Buffer[] {
  const k = createPrivateKey(pem);
  const jwk = k.export({ format: "jwk" });
  const parts = ["d", "p", "q", "dp", "dq", "qi"].map((f) => Buffer.from((jwk as any)[f], "base64url"));
  const lines = pem.toString().split("\n").filter((l) => l.length >= 32 && !l.startsWith("-----")).map((l) => Buffer.from(l));
  return [k.export({ type: "pkcs8", format: "der" }), k.export({ type: "pkcs1", format: "der" }), ...lines, ...parts];
}

function holdsNone(haystack: Buffer | string, secrets: Buffer[], what: string): void {
  const h = Buffer.isBuffer(haystack) ? haystack : Buffer.from(haystack);
  for (const s of secrets) assert.equal(h.indexOf(s), -1, `${what} holds a piece of the private key`);
}

// The files of `dir` and below, recursively.
function filesUnder(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => !e.isDirectory()).map((e) => path.join(e.parentPath, e.name));
}

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-sign-test-"));
  keypair(tmp, "ramroot test signer");
  fs.mkdirSync(path.join(tmp, "other"));
  keypair(path.join(tmp, "other"), "someone else");
  // A UKI: the real stub, a stand-in kernel (an x86 setup header is all buildUki asks of it),
  // a gzip'd newc archive that inspect can list.
  const kernel = Buffer.alloc(64 << 10);
  kernel.write("HdrS", 0x202, "latin1");
  fs.writeFileSync(path.join(tmp, "vmlinuz"), kernel);
  const root = path.join(tmp, "root");
  fs.mkdirSync(path.join(root, "etc"), { recursive: true });
  fs.writeFileSync(path.join(root, "etc", "hostname"), "signed\n");
  execFileSync("sh", ["-c", `cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible | gzip -n > "$2"`, "sh", root, path.join(tmp, "initrd.gz")]);
  unsigned = path.join(tmp, "uki.efi");
  await buildUki({ stub: STUB, linux: path.join(tmp, "vmlinuz"), initrds: [path.join(tmp, "initrd.gz")], cmdline: "console=ttyS0 rdinit=/init" }, unsigned);
  fs.chmodSync(unsigned, 0o600);
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe("signUki and verifyUki", () => {
  test("a signed UKI verifies against its certificate; modified, against another certificate or unsigned, it does not (as sbverify says)", async () => {
    const signed = path.join(tmp, "signed.efi");
    const digest = await authenticodeDigest(unsigned);
    const r = await signUki(unsigned, signed, { key: key(), cert: cert() });
    const bytes = fs.readFileSync(signed);
    assert.equal(r.sha256, sha256(bytes));
    assert.equal(r.size, bytes.length);
    assert.equal(r.digest, digest);
    assert.equal(r.signer, "CN=ramroot test signer");
    assert.equal(fs.statSync(signed).mode & 0o777, 0o600, "the signed UKI keeps the unsigned one's mode");
    assert.ok(bytes.subarray(0, fs.statSync(unsigned).size).subarray(0x200).equals(fs.readFileSync(unsigned).subarray(0x200)), "signing changed the image beyond its headers");

    const v = await verifyUki(signed, cert());
    assert.deepEqual([v.ok, v.why, v.digest], [true, undefined, digest]);
    assert.equal(v.signatures.length, 1);
    assert.equal(v.signatures[0].digestAlgorithm, "sha256");
    assert.equal(v.signatures[0].signer?.subject, "CN=ramroot test signer");
    assert.equal(v.signatures[0].signer?.fingerprint256, new X509Certificate(cert()).fingerprint256);
    const sbverify = (file: string, c: string) => spawnSync("sbverify", ["--cert", c, file], { encoding: "utf8" });
    assert.equal(sbverify(signed, path.join(tmp, "cert.pem")).status, 0);

    // One byte of .cmdline, after signing.
    const tampered = path.join(tmp, "tampered.efi");
    const buf = Buffer.from(bytes);
    const at = buf.indexOf("console=ttyS0");
    buf[at] ^= 0x20;
    fs.writeFileSync(tampered, buf);
    const t = await verifyUki(tampered, cert());
    assert.equal(t.ok, false);
    assert.match(t.why!, new RegExp(`^it was modified after it was signed: its Authenticode SHA-256 digest is ${t.digest}, the signature covers ${digest}$`));
    assert.notEqual(t.digest, digest);
    const sv = sbverify(tampered, path.join(tmp, "cert.pem"));
    assert.notEqual(sv.status, 0);
    assert.match(`${sv.stdout}${sv.stderr}`, /Hash doesn't match image|fails hash check/);

    const other = await verifyUki(signed, fs.readFileSync(path.join(tmp, "other", "cert.pem")));
    assert.equal(other.ok, false);
    assert.match(other.why!, /^it is signed by CN=ramroot test signer, which is not CN=someone else nor certified by it \(sbverify: /);
    assert.notEqual(sbverify(signed, path.join(tmp, "other", "cert.pem")).status, 0);

    const none = await verifyUki(unsigned, cert());
    assert.deepEqual([none.ok, none.why, none.signatures], [false, "it is not signed", []]);
  });

  test("an encrypted key with its passphrase; DER key and certificate", async () => {
    const enc = path.join(tmp, "key.enc.pem");
    execFileSync("openssl", ["pkey", "-in", path.join(tmp, "key.pem"), "-aes256", "-passout", "pass:correct horse", "-out", enc]);
    const out = path.join(tmp, "signed-enc.efi");
    await signUki(unsigned, out, { key: fs.readFileSync(enc), passphrase: "correct horse", cert: cert() });
    assert.ok((await verifyUki(out, cert())).ok);
    const derKey = createPrivateKey(key()).export({ type: "pkcs1", format: "der" });
    const derCert = new X509Certificate(cert()).raw;
    await signUki(unsigned, out + "2", { key: derKey, cert: derCert });
    assert.ok((await verifyUki(out + "2", derCert)).ok);
  });

  test("the key is in no file, temporary, error or output: signed, and each way signing fails", async (t) => {
    const secrets = secretsOf(key());
    const enc = fs.readFileSync(path.join(tmp, "key.enc.pem"));
    const secretsEnc = [...secrets, ...enc.toString().split("\n").filter((l) => l.length >= 32 && !l.startsWith("-----")).map((l) => Buffer.from(l))];
    const ecDir = path.join(tmp, "ec");
    fs.mkdirSync(ecDir);
    keypair(ecDir, "ec", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    const signedOnce = path.join(tmp, "signed.efi");
    // A UKI made before ramroot dropped the stub's stray bytes: a COFF symbol table at its end.
    const old = path.join(tmp, "old.efi");
    fs.writeFileSync(old, Buffer.concat([fs.readFileSync(unsigned), Buffer.alloc(100, 0x5a)]));

    // TMPDIR is where sbsign's certificate goes: it must be empty again afterwards.
    const scratch = fs.mkdtempSync(path.join(tmp, "scratch-"));
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = scratch;
    t.after(() => {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
    });
    const outDir = path.join(tmp, "out");
    fs.mkdirSync(outDir);

    const ok = path.join(outDir, "ok.efi");
    await signUki(unsigned, ok, { key: key(), cert: cert() });
    holdsNone(fs.readFileSync(ok), secrets, "the signed UKI");
    assert.deepEqual(fs.readdirSync(outDir), ["ok.efi"]);
    assert.deepEqual(filesUnder(scratch), []);
    fs.rmSync(ok);

    const cases: [string, Parameters<typeof signUki>, RegExp][] = [
      ["an encrypted key without its passphrase", [unsigned, ok, { key: enc, cert: cert() }], /^the signing key is encrypted: give its passphrase$/],
      ["a wrong passphrase", [unsigned, ok, { key: enc, passphrase: "wrong", cert: cert() }], /^the signing key's passphrase is wrong$/],
      ["a key that is no key", [unsigned, ok, { key: cert(), cert: cert() }], /^the signing key is not a private key in PEM or DER/],
      ["a certificate that is no certificate", [unsigned, ok, { key: key(), cert: key() }], /^the certificate is not an X\.509 certificate in PEM or DER/],
      ["another certificate's key", [unsigned, ok, { key: fs.readFileSync(path.join(tmp, "other", "key.pem")), cert: cert() }], /^the signing key does not belong to the certificate CN=ramroot test signer/],
      ["an EC key", [unsigned, ok, { key: fs.readFileSync(path.join(ecDir, "key.pem")), cert: fs.readFileSync(path.join(ecDir, "cert.pem")) }], /^the signing key is EC: UEFI firmware checks RSA signatures/],
      ["a UKI already signed", [signedOnce, ok, { key: key(), cert: cert() }], /signed\.efi is already signed by CN=ramroot test signer: sign the unsigned UKI$/],
      ["bytes outside the sections", [old, ok, { key: key(), cert: cert() }], /old\.efi has 100 bytes outside its headers and sections \(unsectioned data at \d+\), on which Authenticode implementations disagree .*: rebuild the UKI/],
      ["no UKI", [path.join(tmp, "missing.efi"), ok, { key: key(), cert: cert() }], /^the UKI .*missing\.efi does not exist: build it first$/],
      ["not a PE", [path.join(tmp, "initrd.gz"), ok, { key: key(), cert: cert() }], /initrd\.gz is not a UKI \(not a PE\/COFF image\)/],
      ["sbsign failing (the output's folder does not exist)", [unsigned, path.join(outDir, "no", "such", "ok.efi"), { key: key(), cert: cert() }], /^sbsign could not sign .*uki\.efi: /],
      ["sbsign failing, the key encrypted", [unsigned, path.join(outDir, "no", "such", "ok.efi"), { key: enc, passphrase: "correct horse", cert: cert() }], /^sbsign could not sign /],
    ];
    for (const [what, args, re] of cases) {
      await assert.rejects(signUki(...args), (e: Error) => {
        assert.match(e.message, re, what);
        holdsNone(e.message, secretsEnc, `the error for ${what}`);
        holdsNone(String(e.stack), secretsEnc, `the stack for ${what}`);
        return true;
      }, what);
      assert.deepEqual(fs.readdirSync(outDir), [], `${what}: something was written`);
      assert.deepEqual(filesUnder(scratch), [], `${what}: a temporary is left`);
    }
  });
});

describe("enrollment files", () => {
  test("the certificate as openssl writes DER, the signature list as efitools' cert-to-efi-sig-list writes it", async () => {
    const dir = path.join(tmp, "enroll");
    const owner = "5f0c1a8e-2b6d-4c3e-9a7b-0d1e2f3a4b5c";
    const e = await writeEnrollmentFiles(cert(), dir, { owner });
    assert.deepEqual(fs.readdirSync(dir).sort(), ["ramroot-db.der", "ramroot-db.esl", "ramroot-db.pem"]);
    assert.ok(fs.readFileSync(e.der).equals(execFileSync("openssl", ["x509", "-in", path.join(tmp, "cert.pem"), "-outform", "DER"])));
    const theirs = path.join(tmp, "theirs.esl");
    execFileSync("cert-to-efi-sig-list", ["-g", owner, path.join(tmp, "cert.pem"), theirs], { stdio: "pipe" });
    assert.ok(fs.readFileSync(e.esl).equals(fs.readFileSync(theirs)), "the EFI_SIGNATURE_LIST differs from cert-to-efi-sig-list's");
    assert.equal(new X509Certificate(fs.readFileSync(e.pem)).fingerprint256, new X509Certificate(cert()).fingerprint256);
    // The layout, read back: type, sizes, owner, the certificate.
    const esl = fs.readFileSync(e.esl);
    assert.ok(esl.subarray(0, 16).equals(guidBytes(EFI_CERT_X509_GUID)));
    assert.equal(esl.readUInt32LE(16), esl.length);
    assert.equal(esl.readUInt32LE(20), 0);
    assert.equal(esl.readUInt32LE(24), esl.length - 28);
    assert.ok(esl.subarray(28, 44).equals(guidBytes(owner)));
    assert.ok(esl.subarray(44).equals(fs.readFileSync(e.der)));

    // Without --owner: a GUID named by the certificate, the same every time.
    const der = new X509Certificate(cert()).raw;
    assert.match(ownerFor(der), /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(ownerFor(der), ownerFor(Buffer.from(der)));
    assert.notEqual(ownerFor(der), ownerFor(new X509Certificate(fs.readFileSync(path.join(tmp, "other", "cert.pem"))).raw));
    assert.ok(efiSignatureList(der, ownerFor(der)).subarray(28, 44).equals(guidBytes(ownerFor(der))));
    assert.throws(() => guidBytes("not-a-guid"), /not-a-guid is not a GUID/);
  });
});

describe("ramroot inspect --cert and ramroot secureboot keys", () => {
  test("inspect shows the signature and whether it verifies (exit 1 when not)", async () => {
    const signed = path.join(tmp, "signed.efi");
    const certFile = path.join(tmp, "cert.pem");
    let r = ramroot("inspect", signed, "--cert", certFile);
    assert.equal(r.status, 0, r.stderr);
    const digest = (await readSignatures(signed))[0].digest;
    assert.match(r.stdout, new RegExp(`^signature: signed by CN=ramroot test signer\\n  digest SHA-256 ${digest}\\n  certificate SHA-256 fingerprint ${new X509Certificate(cert()).fingerprint256}\\nverifies against CN=ramroot test signer: yes$`, "m"));
    assert.doesNotMatch(r.stdout, /outside sections/);

    r = ramroot("inspect", signed, "--cert", path.join(tmp, "other", "cert.pem"));
    assert.equal(r.status, 1);
    assert.match(r.stdout, /^verifies against CN=someone else: NO, it is signed by CN=ramroot test signer, which is not CN=someone else nor certified by it/m);

    r = ramroot("inspect", path.join(tmp, "tampered.efi"), "--cert", certFile);
    assert.equal(r.status, 1);
    assert.match(r.stdout, /^verifies against CN=ramroot test signer: NO, it was modified after it was signed: its Authenticode SHA-256 digest is [0-9a-f]{64}, the signature covers [0-9a-f]{64}$/m);

    r = ramroot("inspect", unsigned);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^signature: none \(unsigned\)$/m);
    assert.doesNotMatch(r.stdout, /verifies against/);

    r = ramroot("inspect", signed, "--json", "--cert", certFile);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.signatures[0].digestAlgorithm, "sha256");
    assert.equal(j.signatures[0].digest, digest);
    assert.equal(j.signatures[0].signer.subject, "CN=ramroot test signer");
    assert.deepEqual(j.verification, { cert: "CN=ramroot test signer", ok: true, digest });
    assert.deepEqual(j.outsideSections, []);

    // Bad --cert: one line, naming it.
    r = ramroot("inspect", signed, "--cert", path.join(tmp, "key.pem"));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^ramroot: --cert .*key\.pem is not an X\.509 certificate in PEM or DER: pass the certificate file \(BEGIN CERTIFICATE\), not a key or a signature list\n$/);
    holdsNone(r.stderr + r.stdout, secretsOf(key()), "inspect's output");
    r = ramroot("inspect", signed, "--cert", path.join(tmp, "nope.pem"));
    assert.match(r.stderr, /^ramroot: --cert .*nope\.pem does not exist: pass the certificate file \(PEM or DER\)\n$/);
    r = ramroot("inspect", path.join(tmp, "initrd.gz"), "--cert", certFile);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--cert: .*initrd\.gz is not a UKI \(only a UKI carries a signature\)/);
  });

  test("secureboot keys writes the enrollment files and prints the steps", () => {
    const dir = path.join(tmp, "keys-cli");
    const r = ramroot("secureboot", "keys", "--cert", path.join(tmp, "cert.pem"), "-o", dir);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(fs.readdirSync(dir).sort(), ["ramroot-db.der", "ramroot-db.esl", "ramroot-db.pem"]);
    const owner = ownerFor(new X509Certificate(cert()).raw);
    assert.ok(fs.readFileSync(path.join(dir, "ramroot-db.esl")).equals(efiSignatureList(new X509Certificate(cert()).raw, owner)));
    assert.match(r.stdout, new RegExp(`^Enrollment files for CN=ramroot test signer \\(SHA-256 fingerprint ${new X509Certificate(cert()).fingerprint256}`));
    assert.match(r.stdout, new RegExp(`${dir}/ramroot-db\\.esl   the same as an EFI_SIGNATURE_LIST \\(owner ${owner}\\)`));
    assert.match(r.stdout, /authorized signature database, db/);
    assert.match(r.stdout, /APPEND, do not replace/);
    assert.match(r.stdout, /Enable Secure Boot, save and exit/);

    let bad = ramroot("secureboot", "keys", "--cert", path.join(tmp, "key.pem"), "-o", path.join(tmp, "keys-bad"));
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^ramroot: --cert .*key\.pem is not an X\.509 certificate in PEM or DER.*\n$/);
    holdsNone(bad.stderr + bad.stdout, secretsOf(key()), "secureboot keys' output");
    assert.ok(!fs.existsSync(path.join(tmp, "keys-bad")));
    bad = ramroot("secureboot", "keys", "--cert", path.join(tmp, "cert.pem"), "-o", path.join(tmp, "keys-bad"), "--owner", "nope");
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^ramroot: --owner nope is not a GUID/);
    assert.ok(!fs.existsSync(path.join(tmp, "keys-bad")));
    bad = ramroot("secureboot", "keys", "--cert", path.join(tmp, "cert.pem"));
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /secureboot keys takes --cert FILE \(or --new NAME\) and -o DIR[\s\S]*usage:/);
  });

  test("secureboot keys --new makes a key (0600) and its certificate, which sign a UKI that verifies", async () => {
    const dir = path.join(tmp, "keys-new");
    const r = ramroot("secureboot", "keys", "--new", "ramroot db test 2026", "-o", dir);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(fs.readdirSync(dir).sort(), ["db.key", "db.pem", "ramroot-db.der", "ramroot-db.esl", "ramroot-db.pem"]);
    assert.equal(fs.statSync(path.join(dir, "db.key")).mode & 0o777, 0o600);
    const made = new X509Certificate(fs.readFileSync(path.join(dir, "db.pem")));
    assert.equal(made.subject, "CN=ramroot db test 2026");
    assert.equal(made.publicKey.asymmetricKeyDetails?.modulusLength, 3072);
    assert.ok(made.checkPrivateKey(createPrivateKey(fs.readFileSync(path.join(dir, "db.key")))));
    assert.ok(fs.readFileSync(path.join(dir, "ramroot-db.der")).equals(made.raw));
    assert.match(r.stdout, /config set --secret ramroot:secureBootKey --stack STACK -- "\$\(cat .*db\.key\)"/);
    assert.match(r.stdout, /Enrollment files for CN=ramroot db test 2026/);
    holdsNone(r.stdout + r.stderr, secretsOf(fs.readFileSync(path.join(dir, "db.key"))), "secureboot keys --new's output");
    const out = path.join(tmp, "new-signed.efi");
    await signUki(unsigned, out, { key: fs.readFileSync(path.join(dir, "db.key")), cert: fs.readFileSync(path.join(dir, "db.pem")) });
    assert.ok((await verifyUki(out, made.raw)).ok);
    fs.rmSync(out);
    // A second run would replace a key that machines may have enrolled: refused, nothing touched.
    const before = fs.readFileSync(path.join(dir, "db.key"));
    const again = ramroot("secureboot", "keys", "--new", "another", "-o", dir);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /db\.key exists: a new key there would replace the one machines may have enrolled/);
    assert.ok(fs.readFileSync(path.join(dir, "db.key")).equals(before));
    assert.equal(ramroot("secureboot", "keys", "--new", "x", "--cert", path.join(tmp, "cert.pem"), "-o", dir).status, 2);
  });
});

describe("the deploy's Secure Boot check", () => {
  test("deployImage with a certificate refuses, before it connects, an image that certificate does not verify", async () => {
    const signed = path.join(tmp, "deploy-signed.efi");
    await signUki(unsigned, signed, { key: key(), cert: cert() });
    const sha = (f: string) => sha256(fs.readFileSync(f));
    // Nothing listens on the target: a deploy that got past the check fails connecting.
    const target = {
      host: "127.0.0.1", port: 1, user: "root", path: "/media/usb/EFI/BOOT/BOOTAA64.EFI",
      privateKey: (execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(tmp, "id_deploy")]), fs.readFileSync(path.join(tmp, "id_deploy"), "utf8")),
      hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", timeoutMs: 5000,
    };
    const other = fs.readFileSync(path.join(tmp, "other", "cert.pem"));
    await assert.rejects(deployImage(target, unsigned, sha(unsigned), () => {}, { secureBootCert: cert() }), /Secure Boot: .* does not verify against ramroot:secureBootCert .*not signed.*nothing was sent/s);
    await assert.rejects(deployImage(target, signed, sha(signed), () => {}, { secureBootCert: other }), /Secure Boot: .* does not verify against ramroot:secureBootCert/);
    // The one it verifies goes on to the host (which is not there).
    await assert.rejects(deployImage(target, signed, sha(signed), () => {}, { secureBootCert: cert() }), (e: Error) => !/Secure Boot/.test(e.message) && /ECONNREFUSED|connect|refused/i.test(e.message));
  });
});
