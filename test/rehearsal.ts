// The rehearsal host in tests: a stick of the test system (scripts/testsys.sh) made with
// `ramroot uki` and `ramroot stick write`, `ramroot host` as a child process, and the OpenSSH
// client with the guest's host key pinned. Shared by test/host.test.ts and test/trial.test.ts.
import { execFile, execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { healthFiles } from "../src/boot/health";
import type { Arch } from "../src/boot/qemu";
import { writeSecretsLayer, type SecretDecl } from "../src/image/secrets";
import { Project, repo, type PulumiResult } from "./project";
import { freePort, startProxy, type Proxy } from "./sshd";
import { removablePath } from "../src/arch";

const exec = promisify(execFile);
export const cli = path.join(repo, "dist", "src", "cli.js");
export const CONSOLE: Record<Arch, string> = { x86_64: "ttyS0", aarch64: "ttyAMA0" };

export const tmpdir = (t: { after(f: () => void): void }, name: string) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `ramroot-host-test-${name}-`));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
};

export async function sh(script: string, cwd?: string): Promise<string> {
  return (await exec("bash", ["-euo", "pipefail", "-c", script], { cwd, maxBuffer: 64 << 20 })).stdout;
}

/** An ed25519 key pair made by ssh-keygen: [private key text, public key line]. */
export function keyPair(dir: string, name: string): { file: string; private: string; public: string } {
  const file = path.join(dir, name);
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", file]);
  return { file, private: fs.readFileSync(file, "utf8"), public: fs.readFileSync(`${file}.pub`, "utf8").trim() };
}

/** The guest's marker: counts its boots on the stick (fstab mounts the stick's FAT at /media/usb). */
const BOOT_COUNTER = `#!/bin/sh
n=0
[ -f /media/usb/host-boots ] && n=$(cat /media/usb/host-boots)
n=$((n + 1))
echo "$n" > /media/usb/host-boots && sync
. /etc/ramroot-release
echo "RAMROOT-HOST-BOOT count=$n build=$BUILD_ID"
`;

export interface Stick { stick: string; buildId: string; hostKey: string; client: { file: string; public: string } }

/**
 * The test system as the example configures it (its runlevels, the power button's action, sshd's
 * settings), root's key in /root/.ssh, and the host key in a secrets layer written by
 * src/image/secrets.ts as the Secrets resource writes it; then `ramroot uki` and `ramroot stick write`.
 */
export async function testSystemStick(arch: Arch, dir: string, o: { acpid?: boolean } = {}): Promise<Stick> {
  const tree = (await exec("bash", [path.join(repo, "scripts", "testsys.sh"), arch], { maxBuffer: 1 << 20 })).stdout.trim().split("\n").pop()!;
  const host = keyPair(dir, "host_ed25519");
  const client = keyPair(dir, "client_ed25519");
  const buildId = `host-test-${arch}-${randomBytes(3).toString("hex")}`;
  const overlay = path.join(dir, "overlay");
  const put = (rel: string, content: string, mode = 0o644) => {
    fs.mkdirSync(path.dirname(path.join(overlay, rel)), { recursive: true, mode: 0o755 });
    fs.writeFileSync(path.join(overlay, rel), content, { mode });
  };
  const example = (rel: string) => fs.readFileSync(path.join(repo, "system", "root", rel), "utf8");
  const runlevels: Record<string, string[]> = {
    sysinit: ["devfs", "mdev", "hwdrivers"],
    boot: ["hostname", "localmount", "networking"],
    default: ["sshd", ...(o.acpid === false ? [] : ["acpid"]), "local"],
    shutdown: ["killprocs", "mount-ro"],
  };
  for (const [level, names] of Object.entries(runlevels)) {
    fs.mkdirSync(path.join(overlay, "etc", "runlevels", level), { recursive: true });
    for (const n of names) fs.symlinkSync(`/etc/init.d/${n}`, path.join(overlay, "etc", "runlevels", level, n));
  }
  put("etc/acpi/PWRF/00000080", example("etc/acpi/PWRF/00000080"), 0o755);
  put("etc/conf.d/sshd", example("etc/conf.d/sshd"));
  put("etc/conf.d/local", example("etc/conf.d/local"));
  put("etc/network/interfaces", example("etc/network/interfaces"));
  // What the example's setup.sh does to sshd_config, as a drop-in.
  put("etc/ssh/sshd_config.d/ramroot.conf", "HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n");
  put("etc/ramroot-release", `BUILD_ID="${buildId}"\n`);
  put("etc/local.d/50-host-test.start", BOOT_COUNTER, 0o755);
  for (const f of healthFiles()) {
    if (f.link) {
      fs.mkdirSync(path.dirname(path.join(overlay, f.name)), { recursive: true, mode: 0o755 });
      fs.symlinkSync(f.link, path.join(overlay, f.name));
    } else if (!f.dir) put(f.name, f.content!, f.mode);
  }
  put("root/.ssh/authorized_keys", `${client.public}\n`, 0o600);
  fs.chmodSync(path.join(overlay, "root"), 0o700);
  fs.chmodSync(path.join(overlay, "root", ".ssh"), 0o700);
  const secrets = path.join(dir, "secrets.cpio.zst");
  const decls: SecretDecl[] = [{ kind: "file", path: "/etc/ssh/ssh_host_ed25519_key", mode: 0o600, owner: "root", key: "sshHostKey", line: 1 }];
  await writeSecretsLayer({ decls, values: { sshHostKey: host.private }, salt: randomBytes(32).toString("hex"), rootfs: tree, compression: "zstd", out: secrets, declFile: "secrets" });
  const base = path.join(dir, "base.cpio.zst"), extra = path.join(dir, "overlay.cpio.zst");
  await sh(`find . -path ./boot -prune -o -print | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | zstd -q -T0 -3 > '${base}'`, tree);
  // The overlay keeps its modes (root's home 0700), owned by root; no "." entry.
  await sh(`find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | zstd -q -3 > '${extra}'`, overlay);
  const uki = path.join(dir, "uki.efi");
  await exec(process.execPath, [cli, "uki", "--stub", path.join(tree, "boot", "efistub"), "--linux", path.join(tree, "boot", "vmlinuz"),
    "--initrd", base, "--initrd", extra, "--initrd", secrets, "--cmdline", `rdinit=/sbin/init console=${CONSOLE[arch]} panic=-1`, "-o", uki]);
  const stick = path.join(dir, "stick.img");
  await exec(process.execPath, [cli, "stick", "write", stick, "--uki", uki]);
  return { stick, buildId, hostKey: host.public.split(" ").slice(0, 2).join(" "), client };
}

/** `ramroot host` as a child process: its stderr lines, waiting for one, its exit. */
export class HostProcess {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  private waiters: Array<() => void> = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly started = Date.now();

  constructor(args: string[]) {
    this.child = spawn(process.execPath, [cli, "host", ...args], { stdio: ["ignore", "ignore", "pipe"] });
    let partial = "";
    this.child.stderr!.on("data", (d: Buffer) => {
      const parts = (partial + d.toString()).split("\n");
      partial = parts.pop()!;
      this.lines.push(...parts);
      for (const w of this.waiters.splice(0)) w();
    });
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => {
      if (partial) this.lines.push(partial);
      for (const w of this.waiters.splice(0)) w();
      resolve({ code, signal });
    }));
  }

  get stderr(): string { return this.lines.join("\n"); }

  /** Resolves with the first stderr line matching `re` (after `from` lines), or throws after timeoutMs. */
  async line(re: RegExp, timeoutMs: number, from = 0): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.slice(from).find((l) => re.test(l));
      if (hit) return hit;
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`ramroot host exited before ${re}:\n${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`no ${re} from ramroot host within ${timeoutMs / 1000} s:\n${this.stderr}`);
      await new Promise<void>((r) => { const t = setTimeout(r, 500); this.waiters.push(() => { clearTimeout(t); r(); }); });
    }
  }

  /** SIGTERM, then its exit (SIGKILL after timeoutMs, failing). */
  async terminate(timeoutMs = 120_000): Promise<{ code: number | null; signal: NodeJS.Signals | null; seconds: number }> {
    const t0 = Date.now();
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    const res = await this.exited;
    clearTimeout(timer);
    return { ...res, seconds: (Date.now() - t0) / 1000 };
  }
}

/** The OpenSSH client with the host key pinned (StrictHostKeyChecking=yes). */
export function sshArgs(port: number, knownHosts: string, keyFile: string): string[] {
  return ["-p", String(port), "-i", keyFile, "-o", `UserKnownHostsFile=${knownHosts}`, "-o", "GlobalKnownHostsFile=/dev/null",
    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"];
}

export function ssh(args: string[], command: string, timeoutMs = 60_000): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile("ssh", [...args, "root@127.0.0.1", command], { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => resolve({ ok: !err, stdout, stderr }));
  });
}

/** Logs in as soon as sshd answers; a wrong host key fails at once. Returns the seconds it took. */
export async function login(args: string[], timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  let last = "";
  while (Date.now() - t0 < timeoutMs) {
    const r = await ssh(args, "true", 20_000);
    if (r.ok) return (Date.now() - t0) / 1000;
    last = r.stderr.trim();
    if (/IDENTIFICATION HAS CHANGED|Host key verification failed/.test(last)) throw new Error(`the guest's host key is not the pinned one: ${last}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
  throw new Error(`no SSH login within ${timeoutMs / 1000} s: ${last}`);
}

/** fsck.vfat -n of the stick's FAT (the partition at its start sector), read-only. */
export function stickFsck(stick: string, dir: string): { clean: boolean; output: string } {
  const part = JSON.parse(execFileSync("sfdisk", ["--json", stick], { encoding: "utf8" })).partitiontable.partitions[0];
  const copy = path.join(dir, "partition.img");
  execFileSync("dd", [`if=${stick}`, `of=${copy}`, "bs=512", `skip=${part.start}`, `count=${part.size}`, "status=none"]);
  const r = spawnSync("fsck.vfat", ["-n", copy], { encoding: "utf8" });
  fs.rmSync(copy);
  return { clean: r.status === 0, output: `${r.stdout}${r.stderr}`.trim() };
}

export const stickFile = (stick: string, file: string) =>
  execFileSync("mtype", ["-i", `${stick}@@1048576`, `::/${file}`], { env: { ...process.env, MTOOLS_SKIP_CHECK: "1" }, encoding: "utf8" });

export const bootsIn = (consoleText: string) => (consoleText.match(/Run \/sbin\/init as init process/g) ?? []).length;

/** The kernel command line of a rehearsal build: `tag` makes each build a new UKI (and nothing else). */
export const rehearsalCmdline = (arch: Arch, tag: string, init = "/sbin/init", extra = "") =>
  `rdinit=${init} console=${CONSOLE[arch]} panic=5 ramroot-test=${tag}${extra ? ` ${extra}` : ""}`;

/**
 * A boot-runlevel service of the rehearsal's system (test fixture): with ramroot-test-freeze on the
 * kernel command line it freezes the userland so hard that no process runs: SIGSTOP to every
 * process but init and itself (the trial guard's loop and its sleep included), then it exits, its
 * parents stopped: the boot never goes on, nothing feeds the watchdog. Otherwise it does nothing.
 */
const FREEZE_SERVICE = `#!/bin/sh
# Test fixture (test/rehearsal.ts): freezes the userland when the kernel command line says
# ramroot-test-freeze.
case "$1" in
start)
	case " $(cat /proc/cmdline) " in *" ramroot-test-freeze "*) ;; *) exit 0 ;; esac
	echo "ramroot-test: freezing the userland: kill -STOP -1" >/dev/console
	kill -STOP -1
	exit 0
	;;
esac
exit 0
`;

export interface Rehearsal {
  p: Project;
  arch: Arch;
  dir: string;
  sys: string;
  /** The stick's removable path, as the host mounts it. */
  stickPath: string;
  stick: string;
  consoleFile: string;
  h: HostProcess;
  proxy: Proxy;
  args: string[];
  prod: string[];
  /** The first build's `pulumi stack output`. */
  first: any;
  up(allowFail?: boolean): Promise<PulumiResult>;
  out(): Promise<any>;
  /** `pulumi config set-all`: one CLI run for many keys. */
  setAll(plain: Record<string, string>, secret?: Record<string, string>): Promise<void>;
  run(command: string): Promise<string>;
  buildOnHost(): Promise<string>;
  sha(file: string): Promise<string>;
  /** What a trial may leave on the host: boot entries, BootNext, the image. */
  leftovers(): Promise<string>;
}

/**
 * The production stack of a throw-away copy of the project (the example system/, with the host
 * key a secret and the test's client key authorized, and the freeze fixture), its first build
 * (cmdline tag "a"), a stick made from it by `ramroot stick write`, `ramroot host` booting it,
 * a byte-counting proxy in front of its SSH port, and the stack pointed at it for reboot deploys.
 */
export async function startRehearsal(t: { after(f: () => void): void }, arch: Arch, o: { trialSeconds: number; waitSeconds: number }): Promise<Rehearsal> {
  const p = Project.create();
  t.after(() => p.remove());
  const dir = tmpdir(t, `trial-${arch}`);
  const hostKey = keyPair(dir, "host_ed25519");
  const client = keyPair(dir, "client_ed25519");
  const sys = path.join(p.dir, "system");
  const secrets = fs.readFileSync(path.join(sys, "secrets"), "utf8");
  fs.writeFileSync(path.join(sys, "secrets"), secrets.replace(/^# (file \/etc\/ssh\/ssh_host_ed25519_key 0600 root sshHostKey)$/m, "$1"));
  fs.appendFileSync(path.join(sys, "root", "root", ".ssh", "authorized_keys"), `${client.public}\n`);
  fs.writeFileSync(path.join(sys, "root", "etc", "init.d", "ramroot-test-freeze"), FREEZE_SERVICE, { mode: 0o755 });
  fs.appendFileSync(path.join(sys, "setup.sh"), "\n# test fixture (test/rehearsal.ts)\nrc-update add ramroot-test-freeze boot\n");
  const prod = ["--stack", "production"];
  const setAll = async (plain: Record<string, string>, secret: Record<string, string> = {}) => {
    const args = [...Object.entries(plain).flatMap(([k, v]) => ["--plaintext", `ramroot:${k}=${v}`]), ...Object.entries(secret).flatMap(([k, v]) => ["--secret", `ramroot:${k}=${v}`])];
    await p.pulumi(["config", "set-all", ...args, ...prod]);
  };
  const out = async () => JSON.parse((await p.pulumi(["stack", "output", "--json", ...prod])).stdout);
  // No preview before each update: the cases that look at preview's output run `pulumi preview`.
  const up = (allowFail = false) => p.pulumi(["up", "--yes", "--skip-preview", ...prod], { allowFail, timeoutMs: 20 * 60_000 });
  await p.pulumi(["stack", "init", "production"]);
  await setAll({ arch, allowUntested: "true", cmdline: rehearsalCmdline(arch, "a") }, { secretsSalt: randomBytes(32).toString("hex"), sshHostKey: hostKey.private });

  // The older build, made by the same stack before it has a host; the stick made from it.
  await up();
  const first = await out();
  const stick = path.join(dir, "stick.img");
  execFileSync(process.execPath, [cli, "stick", "write", stick, "--uki", first.ukiPath]);

  const port = await freePort();
  const knownHosts = path.join(dir, "known_hosts");
  fs.writeFileSync(knownHosts, `[127.0.0.1]:${port} ${hostKey.public.split(" ").slice(0, 2).join(" ")}\n`);
  const args = sshArgs(port, knownHosts, client.file);
  const consoleFile = path.join(dir, "console.log");
  const h = new HostProcess(["--stick", stick, "--ssh-port", String(port), "--vars", path.join(dir, "vars.fd"), "--console", consoleFile]);
  t.after(() => { h.child.kill("SIGKILL"); });
  const proxy = await startProxy(port);
  t.after(() => proxy.close());
  await login(args, 400_000);
  const run = async (command: string) => {
    const r = await ssh(args, command);
    if (!r.ok) throw new Error(`${command}: ${r.stderr}`);
    return r.stdout;
  };
  await setAll({
    host: "127.0.0.1", sshPort: String(proxy.port), hostKey: hostKey.public.split(" ").slice(0, 2).join(" "), reboot: "true",
    waitSeconds: String(o.waitSeconds), trialSeconds: String(o.trialSeconds), consoleLog: consoleFile,
  }, { sshPrivateKey: client.private });
  const stickPath = `/media/usb/${removablePath(arch)}`;
  return {
    p, arch, dir, sys, stickPath, stick, consoleFile, h, proxy, args, prod, first, up, out, setAll, run,
    buildOnHost: async () => (await run(". /etc/ramroot-release; echo $BUILD_ID")).trim(),
    sha: async (f: string) => (await run(`sha256sum ${f} 2>/dev/null || true`)).split(" ")[0].trim(),
    leftovers: async () => (await run("efibootmgr | grep -i 'ramroot trial' || true; ls /sys/firmware/efi/efivars | grep -E '^BootNext' || true; ls /media/usb/EFI/ramroot 2>/dev/null || true")).trim(),
  };
}

/**
 * What fsck.vfat -n says beyond the dirty bit (and the boot sector's backup that differs only in
 * it, byte 65): a hard reset of a system that has the stick mounted (the hardware watchdog's)
 * leaves that bit set, and Linux keeps it set on a volume it mounted dirty; anything else is damage.
 */
export function fsckBeyondDirtyBit(output: string): string[] {
  const meant = [/^fsck\.fat /, /^There are differences between boot sector and its backup\.$/, /^This is mostly harmless\. Differences: \(offset:original\/backup\)$/,
    /^65:01\/00$/, /^Not automatically fixing this\.$/, /^Dirty bit is set\. Fs was not properly unmounted and some data may be corrupt\.$/,
    /^Automatically removing dirty bit\.$/, /^Leaving filesystem unchanged\.$/, /^\S+: \d+ files, \d+\/\d+ clusters$/];
  return output.split("\n").map((l) => l.trim()).filter((l) => l && !meant.some((re) => re.test(l)));
}
