// Secure Boot: signing a UKI (Authenticode, SHA-256) with a PEM or DER key and certificate,
// checking a signed UKI against a certificate, and the files a firmware setup screen enrolls.
//
// The signer is sbsign (Debian's sbsigntool 0.9.4), not an Authenticode writer of our own:
// - it is the signer the firmware is known to accept: a UKI signed by it boots under OVMF and
//   AAVMF with Secure Boot enforced (test/uki.test.ts boots both architectures), and it is what
//   ukify, mkosi and Debian's own signing use;
// - ramroot's UKIs hold nothing outside their headers and sections (src/image/pe.ts), so sbsign,
//   osslsigncode, sbverify, EDK2 and src/image/authenticode.ts compute one digest for them; the tests
//   sign each architecture's UKI with sbsign and with osslsigncode and compare (measured
//   before that change: osslsigncode computed another digest than sbsign/sbverify for both
//   architectures, x86_64 FA4DA237... against DC19EE07..., so its signatures were refused);
// - writing PKCS#7 SignedData ourselves would mean DER encoding of the SpcIndirectDataContent,
//   signed attributes and certificate set, an RSA signature and a second implementation to
//   keep in step with the firmware's, for nothing the tool does not do already.
// Its cost: sbsign reads the key only from a file name (or an OpenSSL engine). The key is never
// written anywhere: it is decrypted here (a passphrase is Node's business, so sbsign never
// prompts) and handed over on a pipe, `cat | sbsign --key /dev/stdin` (Node's child stdio are
// sockets, which OpenSSL cannot open by name; cat turns the socket into a pipe). The key never
// appears in an argument, a file, an error or a log line.
import { createHash, createPrivateKey, KeyObject, X509Certificate } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { authenticodeDigest, AuthenticodeSignature, outsideSections, readPe, readSignatures } from "./authenticode";
import { run } from "../run";
import { writeFileAtomic } from "../store";

export interface SigningKey {
  /** The private key, PEM or DER (PKCS#8, PKCS#1), RSA. */
  key: string | Buffer;
  /** The key's passphrase, when it is encrypted. */
  passphrase?: string;
  /** The certificate that goes with the key (and into the firmware's db), PEM or DER. */
  cert: string | Buffer;
}

export interface Signed {
  sha256: string;
  size: number;
  /** The Authenticode SHA-256 digest the signature covers, hex. */
  digest: string;
  /** The signing certificate's subject. */
  signer: string;
}

/** Reads a certificate in PEM or DER, or says what it is not. */
export function readCertificate(cert: string | Buffer, what = "the certificate"): X509Certificate {
  try {
    return new X509Certificate(cert);
  } catch {
    throw new Error(`${what} is not an X.509 certificate in PEM or DER: pass the certificate file (BEGIN CERTIFICATE), not a key or a signature list`);
  }
}

/**
 * Signs the UKI `input` into `output` (written under a temporary name and renamed; the mode of
 * `input`). Refuses a UKI that is already signed, one with bytes outside its sections (made
 * before those were dropped: rebuild it), a key that is not RSA or not the certificate's.
 */
export async function signUki(input: string, output: string, k: SigningKey): Promise<Signed> {
  const { cert, key } = checkSigningKey(k);

  const { pe } = await readPe(input).catch((e: NodeJS.ErrnoException) => {
    throw new Error(e.code === "ENOENT" ? `the UKI ${input} does not exist: build it first` : e.code ? `the UKI ${input}: ${e.message}` : `${input} is not a UKI (not a PE/COFF image): pass the .efi file that ramroot uki or the Uki resource wrote`);
  });
  if (pe.security.size > 0) {
    const [sig] = await readSignatures(input).catch(() => []);
    throw new Error(`${input} is already signed${sig?.signer ? ` by ${sig.signer.subject}` : ""}: sign the unsigned UKI`);
  }
  const outside = await outsideSections(input);
  if (outside.length) {
    const n = outside.reduce((a, o) => a + o.size, 0);
    throw new Error(`${input} has ${n} bytes outside its headers and sections (${outside.map((o) => `${o.what} at ${o.offset}`).join(", ")}), on which Authenticode implementations disagree (the firmware may refuse the signature): rebuild the UKI with this ramroot, which leaves none`);
  }
  const digest = await authenticodeDigest(input, "sha256");

  const work = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-sign-"));
  // Written where it is told: the caller makes it atomic (Store.put, writeAtomically).
  const der = key.export({ type: "pkcs8", format: "der" });
  const pem = Buffer.concat([Buffer.from("-----BEGIN PRIVATE KEY-----\n"), Buffer.from(der.toString("base64").replace(/.{64}/g, "$&\n").replace(/\n?$/, "\n")), Buffer.from("-----END PRIVATE KEY-----\n")]);
  der.fill(0);
  try {
    const certFile = path.join(work, "cert.pem");
    await fs.writeFile(certFile, cert.toString());
    const r = await run("sh", ["-c", 'cat | sbsign --key /dev/stdin --cert "$1" --output "$2" "$3"', "sh", certFile, output, input], { input: pem, allowFail: true, shown: `sbsign --key (on a pipe) --cert ${certFile} ${input}` });
    if (r.exitCode !== 0) {
      if (r.exitCode === 127) throw new Error(`sbsign is not installed: apt-get install sbsigntool (npm run setup does)`);
      throw new Error(`sbsign could not sign ${input}: ${lastLines(redact(r.stderr + r.stdout, pem))}`);
    }
    // What was written covers what was read, and nothing else came with it.
    const sigs = await readSignatures(output);
    if (sigs.length !== 1 || sigs[0].digest !== digest || sigs[0].digestAlgorithm !== "sha256") throw new Error(`sbsign wrote a signature that does not cover ${input} (digest ${sigs[0]?.digest ?? "none"}, expected ${digest})`);
    if ((await authenticodeDigest(output, "sha256")) !== digest) throw new Error(`sbsign changed ${input} beyond adding a signature`);
    if ((await outsideSections(output)).length) throw new Error(`sbsign left bytes outside the sections of the signed ${input}`);
    await fs.chmod(output, (await fs.stat(input)).mode & 0o777);
    const whole = createHash("sha256");
    let size = 0;
    const fh = await fs.open(output, "r");
    try {
      for await (const chunk of fh.createReadStream({ highWaterMark: 4 << 20, autoClose: false })) {
        whole.update(chunk as Buffer);
        size += (chunk as Buffer).length;
      }
    } finally {
      await fh.close();
    }
    return { sha256: whole.digest("hex"), size, digest, signer: oneLine(cert.subject) };
  } catch (e) {
    await fs.rm(output, { force: true });
    throw e;
  } finally {
    pem.fill(0);
    await fs.rm(work, { recursive: true, force: true });
  }
}

/**
 * The key and certificate as signUki takes them, or an error saying what is wrong (not a key,
 * encrypted without a passphrase, a wrong passphrase, not RSA, not the certificate's key). The
 * message never holds the key. Cheap: what the preview runs.
 */
export function checkSigningKey(k: SigningKey): { cert: X509Certificate; key: KeyObject } {
  const cert = readCertificate(k.cert);
  const key = readKey(k);
  if (key.asymmetricKeyType !== "rsa") {
    throw new Error(`the signing key is ${key.asymmetricKeyType?.toUpperCase() ?? "not RSA"}: UEFI firmware checks RSA signatures (the UEFI specification requires RSA-2048 support), use an RSA key`);
  }
  if (!cert.checkPrivateKey(key)) throw new Error(`the signing key does not belong to the certificate ${oneLine(cert.subject)}: pass the certificate made for this key`);
  return { cert, key };
}

export interface Verification {
  /** True when the UKI is unmodified since it was signed and its signature verifies against the certificate. */
  ok: boolean;
  /** Why not, when not. */
  why?: string;
  /** The file's Authenticode SHA-256 digest, hex. */
  digest: string;
  signatures: AuthenticodeSignature[];
}

/**
 * Checks the signed UKI `file` against `cert` (PEM or DER): that a signature covers the file's
 * Authenticode digest as computed here (as EDK2 does), and that sbverify verifies the signature
 * with `cert` as the trusted certificate (the signer, or a certificate above it: what a db
 * entry is to the firmware).
 */
export async function verifyUki(file: string, cert: string | Buffer): Promise<Verification> {
  const trusted = readCertificate(cert);
  const signatures = await readSignatures(file);
  const digest = await authenticodeDigest(file, "sha256");
  if (!signatures.length) return { ok: false, why: "it is not signed", digest, signatures };
  const computed: Record<string, string> = { sha256: digest };
  for (const s of signatures) computed[s.digestAlgorithm] ??= await authenticodeDigest(file, s.digestAlgorithm).catch(() => "");
  if (!signatures.some((s) => s.digest === computed[s.digestAlgorithm])) {
    const s = signatures[0];
    return { ok: false, why: `it was modified after it was signed: its Authenticode ${algName(s.digestAlgorithm)} digest is ${computed[s.digestAlgorithm]}, the signature covers ${s.digest}`, digest, signatures };
  }
  const work = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-verify-"));
  try {
    const certFile = path.join(work, "cert.pem");
    await fs.writeFile(certFile, trusted.toString());
    const r = await run("sbverify", ["-v", "--cert", certFile, file], { allowFail: true });
    if (r.exitCode === 0) return { ok: true, digest, signatures };
    const out = r.stderr + r.stdout;
    const detail = /Verify error: (.*)/.exec(out)?.[1] ?? (/Hash doesn't match image/.test(out) ? "the image does not match its signature" : lastLines(out));
    const signer = signatures[0].signer;
    const by = signer && signer.fingerprint256 !== trusted.fingerprint256 ? `it is signed by ${signer.subject}, which is not ${oneLine(trusted.subject)} nor certified by it` : `its signature does not verify against ${oneLine(trusted.subject)}`;
    return { ok: false, why: `${by} (sbverify: ${detail})`, digest, signatures };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

/**
 * The production deploy's check, before any byte is sent: throws unless the UKI at `ukiPath` is
 * signed, unmodified since, and its signature verifies against `certPem` (the stack's
 * ramroot:secureBootCert, PEM or DER), which is what the host's firmware will check against its
 * db. Resolves with the verification (the Authenticode digest and the signatures) when it holds.
 */
export async function assertSignedBy(ukiPath: string, certPem: string | Buffer): Promise<Verification> {
  const cert = readCertificate(certPem, "ramroot:secureBootCert");
  let v: Verification;
  try {
    v = await verifyUki(ukiPath, cert.raw);
  } catch (e: any) {
    throw new Error(`Secure Boot: cannot check the signature of ${ukiPath} (${e.code === "ENOENT" ? "it does not exist: build it first" : e.message}); nothing was sent to the host`);
  }
  if (!v.ok) {
    throw new Error(`Secure Boot: ${ukiPath} does not verify against ramroot:secureBootCert (${oneLine(cert.subject)}, SHA-256 fingerprint ${cert.fingerprint256}): ${v.why}. The host's firmware would refuse to boot it, so nothing was sent: sign it with the key of that certificate (set ramroot:secureBootKey, and ramroot:secureBootKeyPassphrase if the key is encrypted, on this stack) and run \`pulumi up\` again`);
  }
  return v;
}

// ---- Enrollment: what a firmware setup screen takes to add the certificate to db.

/** EFI_CERT_X509_GUID: an EFI_SIGNATURE_LIST of X.509 certificates (UEFI 2.10, 32.4.1). */
export const EFI_CERT_X509_GUID = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";

/** An EFI_GUID as stored: the first three fields little-endian, the last eight bytes as they are. */
export function guidBytes(guid: string): Buffer {
  const m = /^([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})$/i.exec(guid);
  if (!m) throw new Error(`${guid} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)`);
  const b = Buffer.alloc(16);
  b.writeUInt32LE(parseInt(m[1], 16), 0);
  b.writeUInt16LE(parseInt(m[2], 16), 4);
  b.writeUInt16LE(parseInt(m[3], 16), 6);
  Buffer.from(m[4] + m[5], "hex").copy(b, 8);
  return b;
}

/**
 * An EFI_SIGNATURE_LIST holding one X.509 certificate (`der`) owned by `owner`: SignatureType
 * (16 bytes), SignatureListSize, SignatureHeaderSize (0), SignatureSize (u32 each), then one
 * EFI_SIGNATURE_DATA: SignatureOwner (16 bytes) and the certificate. What efitools'
 * cert-to-efi-sig-list writes.
 */
export function efiSignatureList(der: Buffer, owner: string): Buffer {
  const head = Buffer.alloc(28);
  guidBytes(EFI_CERT_X509_GUID).copy(head, 0);
  head.writeUInt32LE(28 + 16 + der.length, 16);
  head.writeUInt32LE(0, 20);
  head.writeUInt32LE(16 + der.length, 24);
  return Buffer.concat([head, guidBytes(owner), der]);
}

/** A GUID named by the certificate (RFC 9562 version 8): the same certificate, the same owner. */
export function ownerFor(der: Buffer): string {
  const h = createHash("sha256").update("ramroot secure boot owner\0").update(der).digest();
  h[6] = (h[6] & 0x0f) | 0x80;
  h[8] = (h[8] & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString("hex");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

export interface EnrollmentFiles {
  dir: string;
  der: string;
  esl: string;
  pem: string;
  owner: string;
  subject: string;
  fingerprint256: string;
  notAfter: string;
}

/**
 * Writes the files that enroll `cert` into a firmware's db: ramroot-db.der (the certificate,
 * DER: what EDK2's setup screen takes, as .der/.cer/.crt), ramroot-db.esl (an
 * EFI_SIGNATURE_LIST: what many vendors' screens take, and efi-updatevar/KeyTool), ramroot-db.pem
 * (for `ramroot inspect --cert`). Nothing secret: the key is not needed.
 */
export async function writeEnrollmentFiles(cert: string | Buffer, dir: string, opts: { owner?: string } = {}): Promise<EnrollmentFiles> {
  const c = readCertificate(cert);
  const owner = (opts.owner ?? ownerFor(c.raw)).toLowerCase();
  const esl = efiSignatureList(c.raw, owner);
  await fs.mkdir(dir, { recursive: true });
  const files = { der: path.join(dir, "ramroot-db.der"), esl: path.join(dir, "ramroot-db.esl"), pem: path.join(dir, "ramroot-db.pem") };
  for (const [file, data] of [[files.der, c.raw], [files.esl, esl], [files.pem, Buffer.from(c.toString())]] as const) await writeFileAtomic(file, data, 0o644);
  return { dir, ...files, owner, subject: oneLine(c.subject), fingerprint256: c.fingerprint256, notAfter: c.validTo };
}

/**
 * A new signing key and its self-signed certificate in `dir`: db.key (RSA-3072, PEM, unencrypted,
 * mode 0600 from the moment it exists: openssl runs under umask 077) and db.pem. Refuses to
 * replace a db.key that is there: the machines that enrolled its certificate boot only its
 * signatures.
 */
export async function makeSigningKey(dir: string, name: string, opts: { days?: number } = {}): Promise<{ key: string; cert: string }> {
  // openssl's -subj splits at "/" and "+" and takes a backslash as an escape: none of them in a name.
  if (!name.trim() || /[\/+\\\x00-\x1f]/.test(name)) throw new Error(`--new ${JSON.stringify(name)}: give a name for the certificate (its CN) without "/", "+", "\\" or control characters, e.g. "ramroot db 2026"`);
  await fs.mkdir(dir, { recursive: true });
  const key = path.join(dir, "db.key"), cert = path.join(dir, "db.pem");
  for (const f of [key, cert]) {
    if (await fs.stat(f).then(() => true, () => false)) throw new Error(`${f} exists: a new key there would replace the one machines may have enrolled; choose another -o folder, or remove it first if you mean to`);
  }
  // 10 years: UEFI firmware does not check certificate dates (there is no trusted clock at boot).
  const r = await run("sh", ["-c", 'umask 077 && exec openssl req -new -x509 -newkey rsa:3072 -sha256 -nodes -days "$1" -subj "/CN=$2" -keyout "$3" -out "$4"', "sh", String(opts.days ?? 3650), name, key, cert], { allowFail: true });
  if (r.exitCode !== 0) {
    await fs.rm(key, { force: true });
    await fs.rm(cert, { force: true });
    if (r.exitCode === 127) throw new Error("openssl is not installed: apt-get install openssl (npm run setup does)");
    throw new Error(`openssl could not make the key: ${lastLines(r.stderr + r.stdout)}`);
  }
  await fs.chmod(cert, 0o644);
  return { key, cert };
}

/** The steps to enroll the files in a firmware setup screen, for a person at the machine. */
export function enrollmentSteps(e: EnrollmentFiles): string {
  return `Enrollment files for ${e.subject} (SHA-256 fingerprint ${e.fingerprint256}, valid until ${e.notAfter}; firmware does not check dates):
  ${e.der}   the certificate, DER (X.509)
  ${e.esl}   the same as an EFI_SIGNATURE_LIST (owner ${e.owner})
  ${e.pem}   the same as PEM, for ramroot inspect UKI --cert ${e.pem}

To make the machine boot only UKIs signed with this key:
  1. Copy ramroot-db.der and ramroot-db.esl to a FAT-formatted USB stick (the boot stick's
     EFI System Partition will do).
  2. Power on into the firmware setup (Del, F2 or Esc) and open its Secure Boot page
     (often Security > Secure Boot; switch its mode to "Custom" to manage keys).
  3. Add the certificate to the authorized signature database, db ("Enroll Signature",
     "Append Key" or "Add New Key" on db, from a file on the stick): ramroot-db.der where the
     screen asks for a certificate (EDK2/TianoCore takes .der, .cer or .crt files), ramroot-db.esl
     where it asks for an EFI_SIGNATURE_LIST. APPEND, do not replace: replacing db removes
     Microsoft's certificates, and with them the option ROMs (graphics, network, storage
     cards) that the firmware must still run.
  4. Secure Boot is enforced only when a Platform Key is enrolled (User Mode): if the screen
     says Setup Mode, restore the factory keys ("Install default keys") and add the
     certificate to db again.
  5. Enable Secure Boot, save and exit.
  6. Check before relying on it: \`ramroot inspect UKI --cert ${e.pem}\` says whether a UKI
     verifies; the firmware refuses an unsigned or modified one ("Access Denied" or
     "Security Violation"). Keep a stick with a signed UKI at hand, and remember that
     disabling Secure Boot in the same screen boots unsigned images again.`;
}

// ---- helpers

function readKey(k: SigningKey): KeyObject {
  const passphrase = k.passphrase;
  const attempt = (format: "pem" | "der", type?: "pkcs8" | "pkcs1") => createPrivateKey(format === "pem" ? { key: k.key, format, passphrase } : { key: Buffer.from(k.key), format, type: type!, passphrase });
  const pem = (Buffer.isBuffer(k.key) ? k.key.toString("latin1") : k.key).includes("-----BEGIN");
  try {
    if (pem) return attempt("pem");
    try {
      return attempt("der", "pkcs8");
    } catch {
      return attempt("der", "pkcs1");
    }
  } catch (e: any) {
    // Node's messages name OpenSSL's reason, never the key's bytes; still, say it in our words.
    const msg = String(e?.message ?? "");
    if (e?.code === "ERR_MISSING_PASSPHRASE" || /passphrase required|interrupted or cancelled/i.test(msg)) throw new Error("the signing key is encrypted: give its passphrase");
    if (passphrase !== undefined && /bad decrypt|decrypt/i.test(msg)) throw new Error("the signing key's passphrase is wrong");
    throw new Error("the signing key is not a private key in PEM or DER (PKCS#8 or PKCS#1): pass the key file (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)");
  }
}

/** `text` without any line of `secret` (a PEM) in it. */
function redact(text: string, secret: Buffer): string {
  let out = text;
  for (const line of secret.toString("latin1").split("\n")) if (line.length >= 16 && !line.startsWith("-----")) out = out.split(line).join("[redacted]");
  return out;
}

function lastLines(text: string): string {
  const lines = text.split("\n").map((l) => l.trim()).filter(Boolean);
  return lines.slice(-3).join("; ") || "no output";
}

/** "sha256" as people write it: "SHA-256". */
export function algName(alg: string): string {
  return /^sha\d+$/.test(alg) ? `SHA-${alg.slice(3)}` : alg;
}

function oneLine(name: string): string {
  return name.split("\n").filter(Boolean).join(", ");
}
