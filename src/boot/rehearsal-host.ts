// The rehearsal host (`ramroot host`): a QEMU machine that boots a stick image the way the NAS
// boots its USB stick, and keeps running, so that what happens to the NAS (an SSH login, a
// deploy, a reboot, a UEFI boot entry) can be rehearsed on it first.
//
// - UEFI firmware with a persistent, writable variable store: `vars` (created from the firmware's
//   template when missing, kept between runs), attached as pflash beside the firmware's code
//   (aarch64: AAVMF_CODE.fd + a copy of AAVMF_VARS.fd, not -bios QEMU_EFI.fd, whose variables
//   live in RAM). Without `vars`, a throw-away copy.
// - The stick as a writable disk; the firmware boots its removable path (EFI/BOOT/BOOT*.EFI).
// - User-mode networking, the guest's port 22 forwarded from 127.0.0.1:sshPort only.
// - The serial console appended to a file (or written to stdout).
// - A reboot in the guest reboots the VM (no -no-reboot): QEMU keeps running, as a board does.
// - A hardware watchdog, as the NAS has one: QEMU's i6300esb, a PCI device (on q35 and on the
//   aarch64 `virt` machine alike), whose expiry resets the machine (`-action watchdog=reset`;
//   `-watchdog-action reset` before QEMU 6.0). The image's trial guard (src/deploy/trial-timer.ts)
//   arms it during a trial boot only. Its driver (i6300esb) is in Debian's generic arm64 kernel,
//   the aarch64 test system's, and in Alpine's linux-lts; Debian's cloud amd64 kernel, the x86_64
//   test system's, has none, so the x86_64 rehearsal host's device goes unused there. The NAS
//   (Ampere Altra) has the SBSA generic watchdog instead (driver sbsa_gwdt, found through ACPI's
//   GTDT), which QEMU's `virt` machine does not model (its `sbsa-ref` machine does).
// - stop() powers the guest off cleanly: it presses the machine's power button (QMP
//   system_powerdown: an ACPI power button event on both architectures, q35's and virt's, which
//   the firmware's ACPI tables describe), then waits for the guest to power itself off. A system
//   handles the button as a real machine's: Alpine's acpid (busybox) runs /etc/acpi/PWRF/00000080,
//   which calls poweroff, so busybox init runs the inittab's shutdown action (openrc shutdown:
//   services stopped, /media/usb unmounted). The same press reaches the NAS when someone pushes
//   its button; nothing in the guest exists only for QEMU. A press the guest cannot hear yet (in
//   the firmware, or before acpid runs) is repeated every 10 s until the console says the system
//   is going down; after `stopTimeoutMs` qemu is killed, and the result says so.
//
// qemu runs in its own process group (a Ctrl-C in the terminal reaches ramroot, which presses
// the button, not qemu, which would stop at once) and dies with ramroot (setpriv --pdeathsig).
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, type WriteStream } from "node:fs";
import * as fs from "node:fs/promises";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { ARCH_SPECS, cleanConsole, qemuCommand, type Arch } from "./qemu";
import { ESP_TYPE } from "./bootmedia";
import { ARCH_NAMES, ARCHES, removablePath } from "../arch";
import { baseEnv, run } from "../run";
import { temporaryName } from "../store";

export interface HostOptions {
  /** The stick: an image file (or a block device), attached writable. */
  stick: string;
  /** Default: from the stick's removable path (BOOTAA64.EFI or BOOTX64.EFI). */
  arch?: Arch;
  /** The host port (on 127.0.0.1 only) forwarded to the guest's port 22. */
  sshPort: number;
  /** The UEFI variable store, kept between runs; made from the firmware's template when missing. */
  vars?: string;
  /** The serial console is appended to this file; without it, it goes to `onConsole` (default stdout). */
  console?: string;
  onConsole?: (chunk: Buffer) => void;
  /** Default 1024. */
  memoryMiB?: number;
  /** Default 1. */
  cpus?: number;
  /** After the first press of the power button, how long the guest may take to power off. Default 90 s. */
  stopTimeoutMs?: number;
  /** ramroot's own messages, one line each (default: stderr). */
  log?: (line: string) => void;
}

export type HostEnd =
  /** The guest powered itself off (poweroff in the guest). */
  | "poweroff"
  /** stop() pressed the power button and the guest powered off. */
  | "stopped"
  /** qemu was killed: stop() timed out, or kill(). */
  | "killed"
  /** qemu exited by itself with an error (e.g. the stick is in use by another qemu). */
  | "failed";

export interface HostExit {
  end: HostEnd;
  /** Exit status 0 for poweroff and stopped. */
  ok: boolean;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Boots seen (1 + the guest's reboots). */
  boots: number;
  /** One line: what happened. */
  detail: string;
  /** qemu's stderr. */
  stderr: string;
}

export interface Host {
  arch: Arch;
  pid: number;
  /** The variable store in use (a temporary one without HostOptions.vars). */
  vars: string;
  /** The qemu command line. */
  command: string[];
  /** Resolves once qemu has exited (never rejects). */
  done: Promise<HostExit>;
  /** Presses the power button and waits for qemu's exit; kills qemu after stopTimeoutMs. */
  stop(): Promise<HostExit>;
  /** Kills qemu now (the guest does not shut down: the stick may be left dirty). */
  kill(): Promise<HostExit>;
}

const STOP_TIMEOUT_MS = 90_000;
const REPRESS_MS = 10_000;

/** Starts the rehearsal host. Throws (qemu not started, or gone at once) on bad input. */
export async function startHost(o: HostOptions): Promise<Host> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  if (!Number.isInteger(o.sshPort) || o.sshPort < 1 || o.sshPort > 65535) throw new Error(`host: --ssh-port ${o.sshPort}: a TCP port, 1 to 65535`);
  const st = await fs.stat(o.stick).catch(() => undefined);
  if (!st) throw new Error(`host: the stick ${o.stick} does not exist (make one with: ramroot stick write ${o.stick} --uki FILE)`);
  if (!st.isFile() && !st.isBlockDevice()) throw new Error(`host: the stick ${o.stick} is neither an image file nor a block device`);
  const arch = await stickArch(o.stick, o.arch);
  await portFree(o.sshPort);

  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-host-"));
  let child: ChildProcess | undefined;
  let consoleFile: WriteStream | undefined;
  try {
    const vars = o.vars ? await keptVars(arch, o.vars, log) : await throwAwayVars(arch, tmp);
    const qmpSocket = path.join(tmp, "qmp.sock");
    const { cmd, args } = qemuCommand({
      arch, disk: o.stick, diskWritable: true, reboot: true, firmwareVars: vars, memoryMiB: o.memoryMiB, cpus: o.cpus,
      forward: [{ hostAddress: "127.0.0.1", hostPort: o.sshPort, guestPort: 22 }], qmpSocket, rng: true,
    });
    args.push(...watchdogArgs(cmd));
    if (o.console) {
      await fs.mkdir(path.dirname(path.resolve(o.console)), { recursive: true });
      consoleFile = createWriteStream(o.console, { flags: "a" });
      await new Promise<void>((resolve, reject) => consoleFile!.once("open", () => resolve()).once("error", reject));
    }
    // qemu dies with us (SIGTERM: it stops at once, its files closed), even if we are killed.
    const wrapped = findSetpriv() ? ["setpriv", ["--pdeathsig", "TERM", "--", cmd, ...args]] as const : [cmd, args] as const;
    child = spawn(wrapped[0], [...wrapped[1]], { stdio: ["pipe", "pipe", "pipe"], detached: true });
    const started = Date.now();
    const pid = child.pid;
    if (pid === undefined) throw new Error(`host: could not start ${cmd}`);
    const state = new HostState(child, log, started, o.sshPort, o.stopTimeoutMs ?? STOP_TIMEOUT_MS);
    const sink = consoleFile;
    child.stdout!.on("data", (chunk: Buffer) => {
      if (sink) sink.write(chunk);
      else (o.onConsole ?? ((c: Buffer) => process.stdout.write(c)))(chunk);
      state.consoleData(chunk);
    });
    child.stdin!.on("error", () => {});
    const done = state.done.then(async (res) => {
      if (sink) await new Promise<void>((r) => sink.end(r));
      await fs.rm(tmp, { recursive: true, force: true });
      return res;
    });
    state.connectQmp(qmpSocket);
    state.probeSsh();
    log(`ramroot host: ${arch} machine (qemu pid ${pid}) booting ${o.stick}; UEFI variables in ${o.vars ? vars : "a throw-away store (--vars FILE keeps them)"}; ssh -p ${o.sshPort} root@127.0.0.1${o.console ? `; console: ${o.console}` : ""}`);
    return {
      arch, pid, vars, command: [cmd, ...args], done,
      stop: () => state.stop().then(() => done),
      kill: () => { state.kill("killed by request"); return done; },
    };
  } catch (e) {
    if (child && child.exitCode === null) child.kill("SIGKILL");
    consoleFile?.end();
    await fs.rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** The running machine: qemu's events, the power button, and how it ended. */
class HostState {
  boots = 1;
  private qmp?: net.Socket;
  private qmpReady = false;
  private stopping = false;
  private killedWhy?: string;
  private goingDown = false;
  private shutdownReason?: string;
  private stderr = "";
  private partial = "";
  private repress?: NodeJS.Timeout;
  private deadline?: NodeJS.Timeout;
  private probe?: NodeJS.Timeout;
  private bootStarted: number;
  private exited = false;
  readonly done: Promise<HostExit>;

  constructor(private child: ChildProcess, private log: (l: string) => void, private started: number, private sshPort: number, private stopTimeoutMs: number) {
    this.bootStarted = started;
    child.stderr!.on("data", (d: Buffer) => { this.stderr += d.toString(); });
    this.done = new Promise<HostExit>((resolve) => {
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.exited) return;
        this.exited = true;
        for (const t of [this.repress, this.deadline, this.probe]) clearTimeout(t);
        this.qmp?.destroy();
        const secs = ((Date.now() - this.started) / 1000).toFixed(1);
        const stderr = this.stderr.trim();
        let end: HostEnd;
        let detail: string;
        if (this.killedWhy) {
          end = "killed";
          detail = `qemu killed (${this.killedWhy}) after ${secs} s: the guest did not shut down, so the stick may not be clean (fsck.vfat)`;
        } else if (this.shutdownReason === "guest-shutdown" && code === 0) {
          end = this.stopping ? "stopped" : "poweroff";
          detail = this.stopping ? `the guest powered off after its power button was pressed (${secs} s running, ${this.boots} boot${this.boots > 1 ? "s" : ""})` : `the guest powered itself off (${secs} s running, ${this.boots} boot${this.boots > 1 ? "s" : ""})`;
        } else {
          end = "failed";
          detail = `qemu exited (${signal ?? code}) after ${secs} s${stderr ? `: ${stderr.split("\n").slice(-3).join(" / ")}` : ""}`;
        }
        resolve({ end, ok: end === "stopped" || end === "poweroff", code, signal, boots: this.boots, detail, stderr });
      };
      child.on("error", (e) => { this.stderr += `${e.message}\n`; finish(null, null); });
      child.on("close", (code, signal) => finish(code, signal));
    });
  }

  /** Watches the console for the guest's shutdown (so the button is not pressed again). */
  consoleData(chunk: Buffer): void {
    const lines = (this.partial + chunk.toString("latin1")).split("\n");
    this.partial = lines.pop()!.slice(-4096);
    for (const raw of lines) {
      const line = cleanConsole(raw);
      // busybox init's words as it runs the shutdown; sysvinit/OpenRC's and systemd's likewise.
      if (/The system is going down|System is going down|Stopping local|Stopping .*\.\.\.|reboot: Power down/.test(line) && this.stopping && !this.goingDown) {
        this.goingDown = true;
        this.log(`ramroot host: the guest is shutting down`);
      }
    }
  }

  connectQmp(socketPath: string): void {
    const attempt = (n: number) => {
      if (this.exited) return;
      const s = net.connect(socketPath);
      let buf = "";
      s.on("connect", () => {
        this.qmp = s;
        s.write(`${JSON.stringify({ execute: "qmp_capabilities" })}\n`);
      });
      s.on("data", (d) => {
        buf += d.toString();
        let i: number;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          if (line) this.qmpMessage(line);
        }
      });
      s.on("error", () => {
        if (this.qmp !== s && n < 100 && !this.exited) setTimeout(() => attempt(n + 1), 50);
      });
    };
    attempt(0);
  }

  private qmpMessage(line: string): void {
    let m: any;
    try { m = JSON.parse(line); } catch { return; }
    if (m.return !== undefined && !this.qmpReady) {
      this.qmpReady = true;
      if (this.stopping) this.press();
      return;
    }
    switch (m.event) {
      case "RESET":
        // A reboot in the guest (or the firmware's own reset): the firmware boots the stick again.
        if (m.data?.guest) {
          this.boots++;
          this.bootStarted = Date.now();
          this.log(`ramroot host: the guest rebooted (${m.data.reason ?? "reset"}): boot ${this.boots}`);
          this.probeSsh();
        }
        break;
      case "SHUTDOWN":
        this.shutdownReason = m.data?.reason;
        break;
      case "WATCHDOG":
        // The hardware watchdog expired (nobody fed it): QEMU then resets the machine.
        this.log(`ramroot host: the machine's hardware watchdog expired (action: ${m.data?.action ?? "?"})`);
        break;
      case "POWERDOWN":
        break;
    }
  }

  /** Logs once per boot when sshd answers on the forwarded port (its "SSH-" banner). */
  probeSsh(): void {
    clearTimeout(this.probe);
    const boot = this.boots;
    const tick = () => {
      if (this.exited || boot !== this.boots || this.stopping) return;
      sshBanner(this.sshPort, 2000).then((banner) => {
        if (this.exited || boot !== this.boots || this.stopping) return;
        if (banner) {
          this.log(`ramroot host: SSH answers on 127.0.0.1:${this.sshPort} (boot ${boot}, ${((Date.now() - this.bootStarted) / 1000).toFixed(1)} s after it began): ${banner}`);
          return;
        }
        this.probe = setTimeout(tick, 1000);
      });
    };
    this.probe = setTimeout(tick, 1000);
  }

  /** The power button: pressed now (once QMP is up), again every 10 s until the guest goes down. */
  stop(): Promise<void> {
    if (this.exited || this.stopping) return Promise.resolve();
    this.stopping = true;
    clearTimeout(this.probe);
    this.deadline = setTimeout(() => this.kill(`the guest did not power off within ${this.stopTimeoutMs / 1000} s of its power button: does it handle the button? (Alpine: rc-update add acpid default, and /etc/acpi/PWRF/00000080 running poweroff)`), this.stopTimeoutMs);
    if (this.qmpReady) this.press();
    else this.log("ramroot host: waiting for qemu's control socket to press the power button");
    return Promise.resolve();
  }

  private press(): void {
    if (this.exited) return;
    this.log(`ramroot host: pressing the power button${this.goingDown ? "" : " (QMP system_powerdown)"}`);
    this.qmp?.write(`${JSON.stringify({ execute: "system_powerdown" })}\n`);
    clearTimeout(this.repress);
    this.repress = setTimeout(() => {
      if (!this.goingDown && !this.exited) this.press();
    }, REPRESS_MS);
  }

  kill(why: string): void {
    if (this.exited) return;
    this.killedWhy = why;
    this.log(`ramroot host: killing qemu: ${why}`);
    // The process group: setpriv execs qemu, so the group is qemu's.
    const pid = this.child.pid!;
    try { process.kill(-pid, "SIGTERM"); } catch { this.child.kill("SIGTERM"); }
    setTimeout(() => { if (!this.exited) { try { process.kill(-pid, "SIGKILL"); } catch { this.child.kill("SIGKILL"); } } }, 5000).unref();
  }
}

/**
 * The machine's hardware watchdog: an i6300esb whose expiry resets the machine. QEMU 6.0 and
 * later take `-action watchdog=reset`; older ones `-watchdog-action reset`.
 */
export function watchdogArgs(qemuBinary: string): string[] {
  const r = spawnSync(qemuBinary, ["--version"], { encoding: "utf8" });
  const v = /version (\d+)\.(\d+)/.exec(r.stdout ?? "");
  if (!v) throw new Error(`host: cannot tell the version of ${qemuBinary} (${(r.error?.message ?? r.stderr ?? "").trim() || "no version line"})`);
  return qemuWatchdogArgs(Number(v[1]), Number(v[2]));
}

export function qemuWatchdogArgs(major: number, _minor = 0): string[] {
  const action = major >= 6 ? ["-action", "watchdog=reset"] : ["-watchdog-action", "reset"];
  return ["-device", "i6300esb", ...action];
}

/** The stick's architecture: its removable boot path says it (and --arch, when given, must agree). */
export async function stickArch(stick: string, want?: Arch): Promise<Arch> {
  const r = await run("sfdisk", ["--json", stick], { allowFail: true });
  let esp: any;
  let sector = 512;
  try {
    const pt = JSON.parse(r.stdout).partitiontable;
    sector = pt.sectorsize ?? 512;
    esp = (pt.partitions ?? []).find((p: any) => String(p.type).toUpperCase() === ESP_TYPE);
  } catch {
    // no partition table
  }
  if (!esp) throw new Error(`host: ${stick} has no EFI System Partition, so no firmware would boot it (make the stick with: ramroot stick write ${stick} --uki FILE)`);
  const ls = await run("mdir", ["-b", "-i", `${stick}@@${esp.start * sector}`, "::/EFI/BOOT/"], { allowFail: true, env: { ...baseEnv(), MTOOLS_SKIP_CHECK: "1" } });
  const names = ls.stdout.split("\n").map((l) => path.posix.basename(l.trim()).toUpperCase());
  const found = ARCH_NAMES.filter((a) => names.includes(ARCHES[a].efiBootFile));
  if (want) {
    if (!found.includes(want)) throw new Error(`host: ${stick} has no ${removablePath(want)} on its ESP${found.length ? ` (it has the ${found.join(" and ")} one)` : ""}: the ${want} firmware would not boot it`);
    return want;
  }
  if (found.length === 1) return found[0]!;
  if (found.length === 0) throw new Error(`host: ${stick} has none of ${ARCH_NAMES.map(removablePath).join(", ")} on its ESP: no firmware would boot it`);
  throw new Error(`host: ${stick} boots on both aarch64 and x86_64: give --arch`);
}

/** The kept variable store: made from the template when missing; an existing one must be the template's size. */
async function keptVars(arch: Arch, file: string, log: (l: string) => void): Promise<string> {
  const template = ARCH_SPECS[arch].nvram.vars;
  const t = await fs.stat(template).catch(() => { throw new Error(`host: firmware ${template} not found: install the Debian package ${ARCH_SPECS[arch].firmwarePackage}`); });
  const st = await fs.stat(file).catch((e) => (e.code === "ENOENT" ? undefined : Promise.reject(e)));
  if (st) {
    if (!st.isFile()) throw new Error(`host: --vars ${file} is not a file`);
    if (st.size !== t.size) throw new Error(`host: --vars ${file} is not a UEFI variable store for ${arch} (${st.size} bytes; ${template} has ${t.size}): give another file, or remove it to start from the template`);
    return path.resolve(file);
  }
  await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = temporaryName(file);
  try {
    await fs.copyFile(template, tmp);
    await fs.chmod(tmp, 0o600);
    // link(): a store that appeared meanwhile is kept, never replaced.
    await fs.link(tmp, file).catch((e) => { if (e.code !== "EEXIST") throw e; });
  } finally {
    await fs.rm(tmp, { force: true });
  }
  log(`ramroot host: made the UEFI variable store ${file} from ${template}`);
  return path.resolve(file);
}

async function throwAwayVars(arch: Arch, dir: string): Promise<string> {
  const template = ARCH_SPECS[arch].nvram.vars;
  const file = path.join(dir, path.basename(template));
  await fs.copyFile(template, file).catch((e) => {
    throw e.code === "ENOENT" ? new Error(`host: firmware ${template} not found: install the Debian package ${ARCH_SPECS[arch].firmwarePackage}`) : e;
  });
  return file;
}

/** Refuses a port something already listens on (qemu would fail later, less clearly). */
function portFree(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", (e: any) => reject(new Error(e.code === "EADDRINUSE" ? `host: 127.0.0.1:${port} is in use: give another --ssh-port` : `host: cannot listen on 127.0.0.1:${port}: ${e.message}`)));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve()));
  });
}

/** The SSH identification line on 127.0.0.1:port, or "" when none comes within timeoutMs. */
export function sshBanner(port: number, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    let got = "";
    const done = (v: string) => { s.destroy(); resolve(v); };
    s.on("data", (d) => {
      got += d.toString("latin1");
      const nl = got.indexOf("\n");
      if (nl >= 0) done(got.startsWith("SSH-") ? got.slice(0, nl).trim() : "");
    });
    s.on("error", () => done(""));
    s.on("close", () => done(""));
    s.setTimeout(timeoutMs, () => done(""));
  });
}

function findSetpriv(): boolean {
  return (process.env.PATH ?? "").split(path.delimiter).some((d) => d && existsSync(path.join(d, "setpriv")));
}
