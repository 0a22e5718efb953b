// The `ramroot` command: the engine-free core, for users and scripts, without Pulumi.
//   ramroot inspect FILE [--json] [--cert FILE]
//   ramroot qemu [--stack NAME] | --disk FILE --arch ARCH [--persist FILE] [--secure-boot [--vars FILE]]
//   ramroot rollback [--stack NAME]
//   ramroot initramfs DIR -o FILE [--compression zstd|gzip|none] [--level N] [--exclude PATH]... [--single]
//   ramroot uki --stub FILE --linux FILE --initrd FILE [--initrd FILE]... --cmdline TEXT [--os-release FILE] -o FILE
//   ramroot store verify [--quick] [--json]
//   ramroot store gc [--dry-run]
//   ramroot secureboot keys --cert FILE -o DIR [--owner GUID]
//   ramroot secureboot keys --new NAME -o DIR [--owner GUID]
//   ramroot stick write TARGET --uki FILE [--arch ARCH] [--size SIZE] [--volume-id ID] [--force]
//   ramroot host --stick IMAGE --ssh-port PORT [--arch ARCH] [--vars FILE] [--console FILE] [--memory MIB] [--cpus N] [--stop-timeout S]
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { inspectInitramfs, inspectProblem, levelProblem, writeInitramfs, type Compression } from "./image/initramfs";
import { buildUki, inspectUki } from "./image/uki";
import { outsideSections, readSignatures } from "./image/authenticode";
import { algName, enrollmentSteps, makeSigningKey, readCertificate, verifyUki, writeEnrollmentFiles } from "./image/sign";
import { ARCH_SPECS, qemuCommand, secureBootVarsProblem, type Arch } from "./boot/qemu";
import { rollback as rollbackHost } from "./deploy/deploy";
import { Store, summary, writeAtomically } from "./store";
import { lockedStacks, planGc, runGc, verifyStore } from "./gc";
import { parseSize, writeStick } from "./boot/stick";
import { startHost } from "./boot/rehearsal-host";
import { archProblem, isArch } from "./arch";
import { run } from "./run";

const project = path.resolve(__dirname, "..", "..");

/** Runs the project's pulumi (scripts/pulumi.sh, with the user's environment: it finds the passphrase) and parses its JSON answer. */
async function pulumiJson(args: string[], what: string): Promise<any> {
  const r = await run("bash", [path.join(project, "scripts", "pulumi.sh"), ...args, "--json"], { env: process.env, allowFail: true, timeoutMs: 5 * 60_000 });
  if (r.exitCode !== 0) throw new Error(`cannot read ${what}: ${(r.stderr || r.stdout).trim()}`);
  return JSON.parse(r.stdout);
}

const usage = `usage:
  ramroot inspect FILE [--json] [--cert FILE]  a UKI: sections, cmdline, os-release, segments, signature
                                         (and whether it verifies against the certificate FILE)
  ramroot qemu [--stack NAME]            boot a stack's current image (default stack: qemu)
  ramroot qemu --disk FILE --arch aarch64|x86_64 [--persist FILE] [--secure-boot [--vars FILE]]
                                         (--secure-boot: enforcing firmware, the default for a stack that signs)
  ramroot rollback [--stack NAME]        swap the host's boot image and its .prev (default stack: production)
  ramroot initramfs DIR -o FILE [--compression zstd|gzip|none] [--level N] [--exclude PATH]... [--single]
  ramroot uki --stub FILE --linux FILE --initrd FILE [--initrd FILE]... --cmdline TEXT [--os-release FILE] -o FILE
  ramroot secureboot keys --cert FILE -o DIR [--owner GUID]
                                         the files that enroll FILE in a firmware's db (DER, EFI
                                         signature list, PEM), and the steps to enroll them
  ramroot secureboot keys --new NAME -o DIR [--owner GUID]
                                         a new signing key (DIR/db.key, 0600) and certificate
                                         (DIR/db.pem, CN=NAME), then the same enrollment files
  ramroot stick write TARGET --uki FILE [--arch aarch64|x86_64] [--size SIZE] [--volume-id ID] [--force]
                                         the NAS's boot stick (an image file or a device): GPT, one FAT32 ESP
                                         (volume id B61B-19E7), the UKI at EFI/BOOT/BOOT{AA64,X64}.EFI, persist/
  ramroot store verify [--quick] [--json]  check every artifact against the record of its bytes (exit 1 if any is bad)
  ramroot store gc [--dry-run]           remove what no stack references, and temporaries of killed builds
  ramroot host --stick IMAGE --ssh-port PORT [--arch aarch64|x86_64] [--vars FILE] [--console FILE]
               [--memory MIB] [--cpus N] [--stop-timeout SECONDS]
                                         a rehearsal host: boots the stick as the NAS does (UEFI with a kept
                                         variable store, the stick writable, reboots reboot), sshd's port 22 on
                                         127.0.0.1:PORT; runs until stopped: SIGTERM or Ctrl-C powers it off
                                         through its power button`;

class UsageError extends Error {}

async function inspect(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: { json: { type: "boolean" }, cert: { type: "string" } }, allowPositionals: true });
  if (positionals.length !== 1) throw new UsageError("inspect takes one FILE");
  // Read first: a certificate that is not one is a mistake to report before anything else.
  const cert = values.cert === undefined ? undefined : readCertificate(await fs.readFile(values.cert).catch((e: NodeJS.ErrnoException) => {
    throw new Error(e.code === "ENOENT" ? `--cert ${values.cert} does not exist: pass the certificate file (PEM or DER)` : `--cert ${values.cert}: ${e.message}`);
  }), `--cert ${values.cert}`);
  const file = positionals[0];
  // Checked from a stat, before anything is read: inspect reads the file into memory.
  const problem = await inspectProblem(file);
  if (problem) throw new Error(problem);
  const fh = await fs.open(file, "r");
  const magic = Buffer.alloc(2);
  await fh.read(magic, 0, 2, 0);
  await fh.close();
  let report: any;
  if (magic.toString("latin1") === "MZ") {
    const uki = await inspectUki(file);
    let segments: any[] = [];
    if (uki.initrd) {
      // The .initrd section holds the concatenated members: inspect them from a copy.
      const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-inspect-"));
      try {
        const src = await fs.open(file, "r");
        const buf = Buffer.alloc(uki.initrd.size);
        await src.read(buf, 0, buf.length, uki.initrd.offset);
        await src.close();
        await fs.writeFile(path.join(tmp, "initrd"), buf);
        segments = await inspectInitramfs(path.join(tmp, "initrd"));
      } finally {
        await fs.rm(tmp, { recursive: true, force: true });
      }
    }
    report = { kind: "uki", ...uki, segments, ...(await secureBootReport(file, cert)) };
  } else {
    if (cert) throw new UsageError(`--cert: ${file} is not a UKI (only a UKI carries a signature)`);
    report = { kind: "initramfs", segments: await inspectInitramfs(file) };
  }
  // A store artifact is also compared with the record of its bytes (a plain newc segment has no
  // checksum of its own; a UKI has none at all).
  const st = storeOf(file);
  const rel = st?.relOf(file);
  if (st && rel) {
    const v = await st.check(rel, { deep: true });
    report.record = v.ok ? "matches" : v.problems;
    if (!v.ok) process.exitCode = 1;
  }
  if (values.json) {
    console.log(JSON.stringify(report, null, 2));
    return;
  }
  if (report.kind === "uki") {
    console.log(`UKI ${file} (${report.arch})`);
    for (const s of report.sections) console.log(`  ${s.name.padEnd(9)} offset 0x${s.offset.toString(16).padStart(8, "0")}  size ${String(s.size).padStart(10)}  sha256 ${s.sha256}`);
    if (report.cmdline !== undefined) console.log(`cmdline: ${report.cmdline}`);
    if (report.uname) console.log(`uname: ${report.uname}`);
    if (report.osRelease) console.log(`os-release:\n${report.osRelease.trimEnd().replace(/^/gm, "  ")}`);
    printSecureBoot(report);
  }
  console.log(`initramfs segments (${report.segments.length}):`);
  for (const s of report.segments) console.log(`  ${s.compression.padEnd(5)} offset ${String(s.offset).padStart(10)}  size ${String(s.size).padStart(10)}  entries ${String(s.entries).padStart(6)}  sha256 ${s.sha256}`);
  if (report.record === "matches") console.log(`store record: the bytes match it`);
  else if (report.record) console.error(`ramroot: ${summary(report.record, 10)}`);
}

/** The store an artifact lives in (a folder above it that has sums/), or undefined. */
function storeOf(file: string): Store | undefined {
  for (let dir = path.dirname(path.resolve(file)); path.dirname(dir) !== dir; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, "sums"))) return new Store(dir);
  }
  return undefined;
}

/** The project's store (RAMROOT_STORE, else .ramroot/store) and its state (.ramroot/state, or a file:// PULUMI_BACKEND_URL). */
function projectStore(): { store: Store; state: string } {
  const url = process.env.PULUMI_BACKEND_URL;
  const state = url?.startsWith("file://") ? url.slice("file://".length) : path.join(project, ".ramroot", "state");
  return { store: Store.forProject(project), state };
}

const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

async function store(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const { store, state } = projectStore();
  if (sub === "verify") {
    const { values } = parseArgs({ args: rest, options: { quick: { type: "boolean" }, json: { type: "boolean" } } });
    let bad = 0;
    const results = await verifyStore(store, {
      deep: !values.quick,
      onResult: (r) => {
        if (r.verdict.ok) return;
        bad++;
        if (!values.json) console.log(`BAD ${r.rel}: ${summary(r.verdict.problems, 10)}`);
      },
    });
    const dead = await store.deadTemporaries();
    if (values.json) console.log(JSON.stringify({ store: store.root, checked: results.length, bad: results.filter((r) => !r.verdict.ok).map((r) => ({ artifact: r.rel, problems: r.verdict.problems })), deadTemporaries: dead.map((d) => store.relOf(d.path)) }, null, 2));
    else {
      console.log(`${results.length} artifacts checked${values.quick ? " (files unchanged since their last check not read)" : ""}: ${bad === 0 ? "all match their records" : `${bad} bad`}`);
      if (bad > 0) console.log("`pulumi up` on a stack that uses a bad artifact makes it again; `ramroot store gc` removes the ones no stack uses");
      if (dead.length > 0) console.log(`${dead.length} temporaries of killed builds (\`ramroot store gc\` removes them): ${dead.map((d) => store.relOf(d.path)).join(", ")}`);
    }
    if (bad > 0) process.exitCode = 1;
    return;
  }
  if (sub === "gc") {
    const { values } = parseArgs({ args: rest, options: { "dry-run": { type: "boolean" } } });
    const locked = lockedStacks(state);
    if (locked.length > 0) throw new Error(`stacks are being updated (${locked.join(", ")}): run gc when they are done`);
    const plan = await planGc(store, state);
    if (plan.stacks.length === 0)
      throw new Error(`no stack found in ${state} (the file backend): nothing would be referenced, so nothing is removed (set PULUMI_BACKEND_URL=file://DIR to the backend the stacks live in)`);
    const verb = values["dry-run"] ? "would remove" : "removed";
    for (const u of plan.unreferenced) console.log(`${verb} ${u.rel} (${mb(u.bytes)}): no stack references it`);
    for (const d of plan.dead) console.log(`${verb} ${store.relOf(d.path)} (${mb(d.bytes)}): a temporary of a killed build (pid ${d.pid} is gone)`);
    if (!values["dry-run"]) await runGc(store, plan);
    const total = [...plan.unreferenced, ...plan.dead].reduce((t, x) => t + x.bytes, 0);
    console.log(`${plan.stacks.length} stacks (${plan.stacks.map((s) => s.name).join(", ")}) reference ${plan.kept} artifacts; ${verb} ${plan.unreferenced.length} artifacts and ${plan.dead.length} temporaries, ${mb(total)}`);
    return;
  }
  throw new UsageError(sub ? `unknown store command ${sub}: use verify or gc` : "store takes verify or gc");
}

async function qemu(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { stack: { type: "string" }, disk: { type: "string" }, arch: { type: "string" }, persist: { type: "string" }, "secure-boot": { type: "boolean" }, vars: { type: "string" } } });
  let { disk, arch, persist } = values;
  let secureBoot = !!values["secure-boot"] || values.vars !== undefined;
  if (!disk) {
    // The stack's outputs say what it last built and booted.
    const stack = values.stack ?? "qemu";
    const o = await pulumiJson(["stack", "output", "--stack", stack], `the outputs of stack ${stack} (run \`npm run up\` first, or pass --disk and --arch)`);
    if (!o.disk) throw new Error(`stack ${stack} has no boot disk: it is not a qemu stack, or \`pulumi up\` has not finished on it`);
    disk = o.disk;
    arch = o.targetArch;
    persist = persist ?? o.persist;
    // A stack that signs was checked under enforcing firmware: boot it so again.
    secureBoot ||= !!o.signedUkiPath;
  }
  const archWrong = archProblem(String(arch), "--arch");
  if (archWrong) throw new UsageError(archWrong);
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-qemu-"));
  let firmwareVars: string | undefined;
  if (secureBoot) {
    // As the boot check does: a copy of a store that enforces (Debian's snakeoil one by default).
    const template = values.vars ?? ARCH_SPECS[arch as Arch].secureBoot.vars;
    firmwareVars = path.join(tmp, "secure-boot-vars.fd");
    await fs.copyFile(template, firmwareVars).catch((e: NodeJS.ErrnoException) => {
      throw new Error(e.code === "ENOENT" ? `--vars ${template} does not exist: give a UEFI variable store with your certificate in db` : `${template}: ${e.message}`);
    });
    const problem = await secureBootVarsProblem(firmwareVars);
    if (problem) throw new Error(`Secure Boot: ${problem.replace(firmwareVars, template)}`);
  } else if (arch === "x86_64") {
    firmwareVars = path.join(tmp, "OVMF_VARS.fd");
    await fs.copyFile("/usr/share/OVMF/OVMF_VARS_4M.fd", firmwareVars);
  }
  const { cmd, args: qargs } = qemuCommand({ arch: arch as Arch, disk: disk!, persist, interactive: true, firmwareVars, secureBoot });
  if (secureBoot) console.error(`ramroot: Secure Boot enforced (db: ${values.vars ?? "Debian's snakeoil certificate"}); the firmware says "Access Denied" to an image it refuses`);
  console.error(`ramroot: ${cmd} ${qargs.join(" ")}\nramroot: Ctrl-A X quits`);
  const child = spawn(cmd, qargs, { stdio: "inherit" });
  const code = await new Promise<number>((resolve) => child.on("exit", (c) => resolve(c ?? 1)));
  await fs.rm(tmp, { recursive: true, force: true });
  process.exitCode = code;
}

/**
 * Puts the host's previous boot image back (and the replaced one becomes .prev, so running it
 * again returns to the newer image), with the same copy-verify-rename safety as a deploy. The
 * stack's state still names the image it deployed: `pulumi up --refresh` would put that back.
 */
async function rollback(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { stack: { type: "string" } } });
  const stack = values.stack ?? "production";
  const config = await pulumiJson(["config", "--show-secrets", "--stack", stack], `the config of stack ${stack}`);
  const get = (k: string) => config[`ramroot:${k}`]?.value as string | undefined;
  const host = get("host"), hostKey = get("hostKey"), privateKey = get("sshPrivateKey");
  if (!host || !hostKey || !privateKey) throw new Error(`stack ${stack} has no deploy target: set ramroot:host, ramroot:hostKey and ramroot:sshPrivateKey`);
  const res = await rollbackHost({ host, hostKey, privateKey, port: get("sshPort") ? Number(get("sshPort")) : undefined, user: get("sshUser"), path: get("bootPath") }, (l) => console.log(l));
  console.log(`${host}: now ${res.current}, previous ${res.previous} (run ramroot rollback again to swap back)`);
}

async function initramfs(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: { output: { type: "string", short: "o" }, compression: { type: "string" }, level: { type: "string" }, exclude: { type: "string", multiple: true }, single: { type: "boolean" } },
    allowPositionals: true,
  });
  if (positionals.length !== 1 || !values.output) throw new UsageError("initramfs takes DIR and -o FILE");
  const compression = (values.compression ?? "zstd") as Compression;
  if (!["zstd", "gzip", "none"].includes(compression)) throw new UsageError(`--compression ${compression}: use zstd, gzip or none`);
  // Number("") is 0 and Number(" 3") is 3: only digits are a level.
  const level = values.level === undefined ? undefined : /^\d+$/.test(values.level) ? Number(values.level) : NaN;
  const bad = levelProblem(compression, level);
  if (bad) throw new Error(`--level ${values.level}: ${bad}`);
  // --single: one archive instead of segments, for tools that stop at the first TRAILER!!!.
  await writeInitramfs(positionals[0], values.output, { compression, level, exclude: values.exclude ?? [], splitBytes: values.single ? Infinity : undefined });
}

async function uki(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      stub: { type: "string" }, linux: { type: "string" }, initrd: { type: "string", multiple: true }, cmdline: { type: "string" },
      "os-release": { type: "string" }, uname: { type: "string" }, output: { type: "string", short: "o" },
    },
  });
  if (!values.stub || !values.linux || !values.initrd?.length || values.cmdline === undefined || !values.output)
    throw new UsageError("uki needs --stub, --linux, at least one --initrd, --cmdline and -o");
  const osRelease = values["os-release"] ? await fs.readFile(values["os-release"], "utf8") : undefined;
  const res = await writeAtomically(values.output, (tmp) => buildUki({ stub: values.stub!, linux: values.linux!, initrds: values.initrd!, cmdline: values.cmdline!, osRelease, uname: values.uname }, tmp));
  console.log(`${values.output}: ${res.size} bytes, sha256 ${res.sha256}`);
}

async function stick(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: { uki: { type: "string" }, arch: { type: "string" }, size: { type: "string" }, "volume-id": { type: "string" }, force: { type: "boolean" } },
    allowPositionals: true,
  });
  if (positionals[0] !== "write" || positionals.length !== 2 || !values.uki) throw new UsageError("stick write takes a TARGET and --uki FILE");
  if (values.arch !== undefined && !isArch(values.arch)) throw new UsageError(archProblem(values.arch, "--arch")!);
  const res = await writeStick({
    target: positionals[1], uki: values.uki, arch: values.arch as Arch | undefined, size: values.size === undefined ? undefined : parseSize(values.size),
    volumeId: values["volume-id"], force: values.force,
  });
  console.log(`${res.target}: ${res.device ? "device" : "image"} of ${(res.bytes / 2 ** 20).toFixed(0)} MiB, ${res.arch} UKI at its removable path, persist/`);
}

/**
 * What inspect says about a UKI's Secure Boot state: its signatures (signer, digest algorithm,
 * the digest signed and whether the file still has it), the bytes outside its sections, and,
 * with a certificate, whether it verifies against it (the exit code is then 1 when it does not).
 */
async function secureBootReport(file: string, cert: import("node:crypto").X509Certificate | undefined) {
  const signatures = await readSignatures(file);
  const outside = await outsideSections(file);
  const verification = cert ? await verifyUki(file, cert.raw) : undefined;
  if (verification && !verification.ok) process.exitCode = 1;
  return {
    signatures,
    outsideSections: outside,
    ...(verification ? { verification: { cert: cert!.subject.split("\n").filter(Boolean).join(", "), ok: verification.ok, why: verification.why, digest: verification.digest } } : {}),
  };
}

function printSecureBoot(report: any): void {
  if (!report.signatures.length) console.log("signature: none (unsigned)");
  for (const [i, s] of report.signatures.entries()) {
    console.log(`signature${report.signatures.length > 1 ? ` ${i + 1}` : ""}: signed by ${s.signer?.subject ?? "a certificate the signature does not carry"}${s.signer && s.signer.issuer !== s.signer.subject ? ` (issued by ${s.signer.issuer})` : ""}`);
    console.log(`  digest ${algName(s.digestAlgorithm)} ${s.digest}`);
    if (s.signer) console.log(`  certificate SHA-256 fingerprint ${s.signer.fingerprint256}`);
  }
  if (report.outsideSections.length) {
    const n = report.outsideSections.reduce((a: number, o: any) => a + o.size, 0);
    console.log(`outside sections: ${n} bytes (${report.outsideSections.map((o: any) => `${o.what} at 0x${o.offset.toString(16)}, ${o.size} bytes`).join("; ")}): Authenticode implementations disagree on this file; rebuild it`);
  }
  const v = report.verification;
  if (v) console.log(v.ok ? `verifies against ${v.cert}: yes` : `verifies against ${v.cert}: NO, ${v.why}`);
}

async function secureboot(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: { cert: { type: "string" }, new: { type: "string" }, output: { type: "string", short: "o" }, owner: { type: "string" } }, allowPositionals: true });
  if (positionals[0] !== "keys" || positionals.length !== 1 || !values.output || (!values.cert === (values.new === undefined))) throw new UsageError("secureboot keys takes --cert FILE (or --new NAME) and -o DIR");
  if (values.owner !== undefined && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(values.owner)) throw new Error(`--owner ${values.owner} is not a GUID: give one as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, or leave it out (a GUID named by the certificate)`);
  if (values.new !== undefined) {
    const made = await makeSigningKey(values.output, values.new);
    values.cert = made.cert;
    console.log(`Made a signing key ${made.key} (mode 0600: keep it off the boot stick and out of git) and its certificate ${made.cert}.
Give them to the stacks that sign (the key as a secret; it is stored encrypted in the stack config):
  npm run pulumi -- config set ramroot:secureBootCert --stack STACK -- "$(cat ${made.cert})"
  npm run pulumi -- config set --secret ramroot:secureBootKey --stack STACK -- "$(cat ${made.key})"
`);
  }
  const cert = await fs.readFile(values.cert!).catch((e: NodeJS.ErrnoException) => {
    throw new Error(e.code === "ENOENT" ? `--cert ${values.cert} does not exist: pass the certificate file (PEM or DER) that goes with the signing key` : `--cert ${values.cert}: ${e.message}`);
  });
  readCertificate(cert, `--cert ${values.cert}`);
  const files = await writeEnrollmentFiles(cert, values.output, { owner: values.owner });
  console.log(enrollmentSteps(files));
}

/**
 * Runs the rehearsal host in the foreground until qemu exits. The first SIGTERM or SIGINT presses
 * the guest's power button (a clean power-off: src/boot/rehearsal-host.ts); a second one kills qemu. Exit status
 * 0 when the guest powered off, 1 when qemu was killed or failed.
 */
async function host(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      stick: { type: "string" }, arch: { type: "string" }, "ssh-port": { type: "string" }, vars: { type: "string" }, console: { type: "string" },
      memory: { type: "string" }, cpus: { type: "string" }, "stop-timeout": { type: "string" },
    },
    allowPositionals: true,
  });
  if (positionals.length) throw new UsageError(`host takes no ${positionals[0]}: give the stick with --stick`);
  if (!values.stick || !values["ssh-port"]) throw new UsageError("host needs --stick IMAGE and --ssh-port PORT");
  if (values.arch !== undefined && !isArch(values.arch)) throw new UsageError(archProblem(values.arch, "--arch")!);
  const int = (name: string, v: string | undefined, min: number, max: number) => {
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new UsageError(`--${name} ${v}: a whole number from ${min} to ${max}`);
    return Number(v);
  };
  const sshPort = int("ssh-port", values["ssh-port"], 1, 65535)!;
  const stopTimeout = int("stop-timeout", values["stop-timeout"], 1, 3600);
  const h = await startHost({
    stick: values.stick, arch: values.arch as Arch | undefined, sshPort, vars: values.vars, console: values.console,
    memoryMiB: int("memory", values.memory, 128, 65536), cpus: int("cpus", values.cpus, 1, 64),
    stopTimeoutMs: stopTimeout === undefined ? undefined : stopTimeout * 1000,
  });
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      console.error(`ramroot host: ${sig}: powering the guest off (again to kill it at once)`);
      void h.stop();
    } else void h.kill();
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  const res = await h.done;
  process.off("SIGTERM", onSignal);
  process.off("SIGINT", onSignal);
  console.error(`ramroot host: ${res.detail}`);
  process.exitCode = res.ok ? 0 : 1;
}

export async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  const commands: Record<string, (a: string[]) => Promise<void>> = { inspect, qemu, rollback, initramfs, uki, stick, secureboot, store, host };
  try {
    if (!cmd || !commands[cmd]) throw new UsageError(cmd ? `unknown command ${cmd}` : "no command");
    await commands[cmd](rest);
  } catch (e: any) {
    console.error(`ramroot: ${e.message}`);
    if (e instanceof UsageError || e.code?.startsWith?.("ERR_PARSE_ARGS")) console.error(usage);
    process.exitCode = e instanceof UsageError ? 2 : 1;
  }
}

if (require.main === module) void main(process.argv.slice(2));
