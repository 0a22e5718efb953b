// Boots a disk image in QEMU the way a machine boots the USB stick: UEFI firmware, no -kernel,
// the firmware finds EFI/BOOT/BOOT{X64,AA64}.EFI on the disk's ESP (the removable-media path,
// no boot entry). The boot disk is attached read-only, so the artifact in the store is never
// modified; the persistence disk is writable.
//
// QEMU always runs with TCG (the build machines' KVM cannot run stock firmware). A failed boot
// never ends by itself (the firmware falls through to a shell and waits), so bootCheck watches
// the serial console for a marker under a timeout and kills qemu in every case where it does
// not exit by itself. With `health` it also waits for the guest's health report (src/boot/health.ts)
// and fails on the problems it names; with `powerOff` it asks the guest, through a QEMU fw_cfg
// item no real machine has, to power off cleanly after the report, waits for qemu to exit, and
// checks that the persistence image is clean (fsck.vfat -n).
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";

import { checkPersistImage, type Arch } from "./bootmedia";
import { FW_CFG_AFTER_BOOT, FW_CFG_POWEROFF, HEALTH_HOOK_PATH, parseHealth, type HealthReport } from "./health";
import { CONSOLE_POWEROFF, FW_CFG_WAIT_POWEROFF } from "./health";
import { freePort, probePorts, runProbe, type Probe, type ProbeResult } from "./probe";
export type { Arch };

interface ArchSpec {
  binary: string;
  /** Debian package of the binary. */
  qemuPackage: string;
  firmwarePackage: string;
  machine: string[];
  /** pflash code (read-only) and the variable store to copy, or a -bios image. */
  code?: string;
  vars?: string;
  bios?: string;
  /**
   * The firmware as pflash code with a writable variable store (QemuOptions.firmwareVars): the
   * code, and the template a new store is copied from. On aarch64 this replaces -bios, whose
   * variables live in RAM and are lost at every start.
   */
  nvram: { code: string; vars: string };
  /**
   * Secure Boot enforced: the machine (x86_64: SMM, so that only the firmware can write its
   * variables), the code built with Secure Boot, and the variable store whose db the image's
   * signer must be in: Debian's snakeoil store (its test certificate as PK, KEK and db).
   */
  secureBoot: { machine: string[]; code: string; vars: string };
}

export const ARCH_SPECS: Record<Arch, ArchSpec> = {
  x86_64: {
    binary: "qemu-system-x86_64",
    qemuPackage: "qemu-system-x86",
    firmwarePackage: "ovmf",
    machine: ["-M", "q35"],
    code: "/usr/share/OVMF/OVMF_CODE_4M.fd",
    vars: "/usr/share/OVMF/OVMF_VARS_4M.fd",
    nvram: { code: "/usr/share/OVMF/OVMF_CODE_4M.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.fd" },
    secureBoot: {
      machine: ["-M", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"],
      code: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
      vars: "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd",
    },
  },
  aarch64: {
    binary: "qemu-system-aarch64",
    qemuPackage: "qemu-system-arm",
    firmwarePackage: "qemu-efi-aarch64",
    // cortex-a72: `max` is 3x slower under TCG, and no -cpu gives a 32-bit CPU.
    machine: ["-M", "virt", "-cpu", "cortex-a72"],
    bios: "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
    // Both 64 MiB, as the virt machine's two flash banks must be.
    nvram: { code: "/usr/share/AAVMF/AAVMF_CODE.fd", vars: "/usr/share/AAVMF/AAVMF_VARS.fd" },
    // Debian builds AAVMF with Secure Boot support (AAVMF_CODE.snakeoil.fd is a link to it): the
    // variable store decides whether it is enforced.
    secureBoot: {
      machine: ["-M", "virt", "-cpu", "cortex-a72"],
      code: "/usr/share/AAVMF/AAVMF_CODE.snakeoil.fd",
      vars: "/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd",
    },
  },
};

export interface QemuOptions {
  arch: Arch;
  /** GPT disk image with the ESP; attached read-only. */
  disk: string;
  /** FAT persistence disk (the USB stick's /media/usb); attached writable. */
  persist?: string;
  /** Default 1024. */
  memoryMiB?: number;
  /** Default 1. */
  cpus?: number;
  /**
   * A writable UEFI variable store, a copy of the firmware's template (ARCH_SPECS[arch].nvram.vars:
   * OVMF_VARS_4M.fd, AAVMF_VARS.fd), attached as pflash unit 1 beside the firmware's code. Without
   * it: x86_64 attaches the template with snapshot=on (writes go to a temporary overlay and are
   * dropped); aarch64 boots QEMU_EFI.fd with -bios (variables in RAM only).
   */
  firmwareVars?: string;
  /**
   * Boot with Secure Boot enforced (ARCH_SPECS[arch].secureBoot): its code as pflash, and
   * `firmwareVars`, which is then required: a writable copy of a variable store whose db holds
   * the certificate the image is signed with (secureBoot.vars, Debian's snakeoil store, or one
   * of the user's own).
   */
  secureBoot?: boolean;
  /** Attach `disk` writable (the guest may write to it, as to a boot stick), not read-only. */
  diskWritable?: boolean;
  /** A reboot in the guest reboots the VM (no -no-reboot), as a machine does. Default false: qemu exits. */
  reboot?: boolean;
  /**
   * User-mode networking (QEMU's slirp: the guest gets 10.0.2.15 by DHCP) on a virtio NIC, with
   * these TCP ports forwarded from the host to the guest, each bound to `hostAddress` only.
   */
  forward?: Array<{ hostAddress: string; hostPort: number; guestPort: number }>;
  /** A QMP control socket (a Unix socket QEMU listens on, without waiting for a client). */
  qmpSocket?: string;
  /**
   * A virtio RNG fed from the host's /dev/urandom: the firmware's EFI_RNG_PROTOCOL gives the
   * kernel a seed at boot (else, under TCG, whatever waits for randomness early, such as sshd or
   * ssh-keygen, waits seconds for the kernel's RNG), as a machine's own RNG does.
   */
  rng?: boolean;
  /** Serial and the qemu monitor multiplexed on stdio (Ctrl-A X quits), for `ramroot qemu`. */
  interactive?: boolean;
  /**
   * QEMU fw_cfg items (`-fw_cfg name=NAME,string=VALUE`), readable in the guest under
   * /sys/firmware/qemu_fw_cfg/by_name/NAME/raw. Names start with opt/ (QEMU's rule).
   */
  fwCfg?: Record<string, string>;
  /** Appended as they are. */
  extraArgs?: string[];
}

/** The exact qemu command line for booting `disk`. Throws when qemu or the firmware is missing. */
export function qemuCommand(opts: QemuOptions): { cmd: string; args: string[] } {
  const spec = ARCH_SPECS[opts.arch];
  if (!spec) throw new Error(`qemu: unknown arch ${String(opts.arch)}`);
  if (!findInPath(spec.binary)) throw new Error(`qemu: ${spec.binary} not found: install the Debian package ${spec.qemuPackage}`);
  if (opts.secureBoot && !opts.firmwareVars) throw new Error("qemu: Secure Boot needs a writable copy of a variable store (firmwareVars) whose db holds the image's signer");
  // aarch64 with a variable store: the pflash pair instead of -bios. Secure Boot: its own code.
  const nvram = opts.secureBoot ? { code: spec.secureBoot.code, vars: opts.firmwareVars! } : opts.firmwareVars && spec.bios ? spec.nvram : undefined;
  for (const f of nvram ? [nvram.code] : [spec.code, spec.vars, spec.bios]) {
    if (f && !existsSync(f)) throw new Error(`qemu: firmware ${f} not found: install the Debian package ${spec.firmwarePackage}`);
  }
  const args = ["-accel", "tcg", ...(opts.secureBoot ? spec.secureBoot.machine : spec.machine)];
  args.push("-m", String(opts.memoryMiB ?? 1024), "-smp", String(opts.cpus ?? 1));
  args.push("-nodefaults", "-display", "none");
  if (!opts.reboot) args.push("-no-reboot");
  if (nvram) {
    args.push("-drive", `if=pflash,format=raw,unit=0,readonly=on,file=${drivePath(nvram.code)}`);
    args.push("-drive", `if=pflash,format=raw,unit=1,file=${drivePath(opts.firmwareVars!)}`);
  } else if (spec.bios) args.push("-bios", spec.bios);
  if (spec.code && !opts.secureBoot) {
    args.push("-drive", `if=pflash,format=raw,unit=0,readonly=on,file=${drivePath(spec.code)}`);
    args.push("-drive", opts.firmwareVars
      ? `if=pflash,format=raw,unit=1,file=${drivePath(opts.firmwareVars)}`
      : `if=pflash,format=raw,unit=1,snapshot=on,file=${drivePath(spec.vars!)}`);
  }
  // No boot menu wait (the aarch64 firmware otherwise waits 5 s).
  args.push("-boot", "menu=on,splash-time=0");
  args.push("-drive", `if=none,id=boot,format=raw${opts.diskWritable ? "" : ",readonly=on"},file=${drivePath(opts.disk)}`);
  args.push("-device", "virtio-blk-pci,drive=boot,bootindex=0");
  if (opts.persist) {
    args.push("-drive", `if=none,id=persist,format=raw,file=${drivePath(opts.persist)}`);
    args.push("-device", "virtio-blk-pci,drive=persist");
  }
  if (opts.forward) {
    const fwd = opts.forward.map((f) => {
      if (!Number.isInteger(f.hostPort) || f.hostPort < 1 || f.hostPort > 65535 || !Number.isInteger(f.guestPort) || f.guestPort < 1 || f.guestPort > 65535)
        throw new Error(`qemu: port forward ${f.hostAddress}:${f.hostPort} -> ${f.guestPort}: ports are 1 to 65535`);
      if (!/^[0-9.]+$/.test(f.hostAddress)) throw new Error(`qemu: port forward from ${f.hostAddress}: give an IPv4 address (e.g. 127.0.0.1)`);
      return `,hostfwd=tcp:${f.hostAddress}:${f.hostPort}-:${f.guestPort}`;
    });
    args.push("-netdev", `user,id=net0${fwd.join("")}`, "-device", "virtio-net-pci,netdev=net0");
  }
  if (opts.rng) args.push("-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0");
  if (opts.qmpSocket) args.push("-chardev", `socket,id=qmp,path=${drivePath(opts.qmpSocket)},server=on,wait=off`, "-mon", "chardev=qmp,mode=control");
  for (const [name, value] of Object.entries(opts.fwCfg ?? {})) {
    if (!/^opt\/[A-Za-z0-9._\/-]{1,50}$/.test(name)) throw new Error(`qemu: fw_cfg name ${name}: use opt/ followed by letters, digits, dots, dashes and slashes (at most 55 characters)`);
    args.push("-fw_cfg", `name=${name},string=${value.replace(/,/g, ",,")}`);
  }
  args.push("-serial", opts.interactive ? "mon:stdio" : "stdio");
  if (!opts.interactive) args.push("-monitor", "none");
  args.push(...(opts.extraArgs ?? []));
  return { cmd: spec.binary, args };
}

export interface BootOptions {
  arch: Arch;
  disk: string;
  persist?: string;
  /** Text (or pattern) on one console line that means "booted". */
  marker: string | RegExp;
  /** Default 180 s: for the marker and, when asked for, the health report. */
  timeoutMs?: number;
  memoryMiB?: number;
  cpus?: number;
  /** Called with every console line, for progress. */
  log?: (line: string) => void;
  /**
   * Without powerOff: after the marker (and the report), how long qemu may take to exit by itself
   * (a guest that syncs and calls `poweroff -f`) before it is killed. Default 3000 ms.
   */
  exitGraceMs?: number;
  /**
   * Wait for ramroot's health report (src/boot/health.ts) as well as the marker; a problem it names
   * (a local mount missing, a service that failed) fails the check.
   */
  health?: boolean;
  /**
   * Ask the guest, over QEMU's fw_cfg (opt/org.ramroot/after-boot=poweroff), to power off after
   * its health report; then qemu must exit by itself within exitTimeoutMs, and the persistence
   * image must be clean (fsck.vfat -n). Implies waiting for the report.
   */
  powerOff?: boolean;
  /** With powerOff: how long the guest may take from its report to qemu's exit. Default 60 s. */
  exitTimeoutMs?: number;
  /**
   * With powerOff: HTTP probes of the guest's services (src/boot/probe.ts), made once it reports
   * healthy. The guest gets user networking, each probed port forwarded from a free port on
   * 127.0.0.1 only, and fw_cfg asks it to wait with its power-off (wait-then-poweroff) until the
   * host writes CONSOLE_POWEROFF on the console, after the probes. A failed probe fails the check.
   */
  probes?: Probe[];
  /**
   * Boot with Secure Boot enforced: the firmware runs the image only when it is signed by a
   * certificate in the db of `vars` (default ARCH_SPECS[arch].secureBoot.vars, Debian's snakeoil
   * store; a copy is used, the file is never written). A refusal fails the check at once.
   */
  secureBoot?: { vars?: string };
}

export interface BootResult {
  ok: true;
  /** Seconds from qemu's start to the marker. */
  seconds: number;
  /** The whole console, escape sequences and carriage returns removed. */
  console: string;
  /** The guest's health report, when asked for. */
  health?: HealthReport;
  /** With powerOff: seconds from the report to qemu's exit. */
  shutdownSeconds?: number;
  /** With powerOff and a persistence disk: what fsck.vfat -n said about it afterwards. */
  fsck?: string;
  /** With probes: each probe's result. */
  probes?: ProbeResult[];
}

/** A failed boot check. `health` is the guest's report when it came. */
export class BootCheckError extends Error {
  constructor(message: string, readonly health?: HealthReport) {
    super(message);
  }
}

/** Where the report comes from, and how to get it: said in every error about a missing report. */
export const HEALTH_HINT = `the report is printed by /${HEALTH_HOOK_PATH}, which ramroot adds to every image and OpenRC's local service runs at the end of boot: enable that service (in setup.sh: rc-update add local default)`;

/**
 * Boots `disk` and waits for `marker` on the serial console (and for the guest's health report,
 * with `health` or `powerOff`). Throws, with the last 40 console lines in the message, when qemu
 * exits first, the marker or the report does not appear within the timeout, the report names a
 * problem, or (powerOff) the guest does not power off or leaves the persistence image dirty.
 * qemu never outlives the call.
 */
export async function bootCheck(opts: BootOptions): Promise<BootResult> {
  const timeoutMs = opts.timeoutMs ?? 180_000;
  const wantReport = !!(opts.health || opts.powerOff);
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-qemu-"));
  let probed: ProbeResult[] | undefined;
  let w: Watched;
  let cmdline: string;
  try {
    const spec = ARCH_SPECS[opts.arch];
    let firmwareVars: string | undefined;
    if (opts.secureBoot && spec) {
      const template = opts.secureBoot.vars ?? spec.secureBoot.vars;
      firmwareVars = path.join(tmp, "secure-boot-vars.fd");
      await fs.copyFile(template, firmwareVars).catch((e: any) => {
        throw e.code === "ENOENT" ? new Error(opts.secureBoot!.vars ? `qemu: the Secure Boot variable store ${template} does not exist (ramroot:secureBootVars): give a copy of the firmware's variable store with your certificate in db` : `qemu: firmware ${template} not found: install the Debian package ${spec.firmwarePackage}`) : e;
      });
      // A store that does not enforce would let the check pass anything: refused before booting.
      const notEnforcing = await secureBootVarsProblem(firmwareVars);
      if (notEnforcing) throw new BootCheckError(`Secure Boot: ${notEnforcing}`);
    } else if (spec?.vars) {
      firmwareVars = path.join(tmp, path.basename(spec.vars));
      await fs.copyFile(spec.vars, firmwareVars).catch((e: any) => {
        throw e.code === "ENOENT" ? new Error(`qemu: firmware ${spec.vars} not found: install the Debian package ${spec.firmwarePackage}`) : e;
      });
    }
    await fs.access(opts.disk).catch(() => { throw new Error(`qemu: boot disk ${opts.disk} not found`); });
    if (opts.persist) await fs.access(opts.persist).catch(() => { throw new Error(`qemu: persistence disk ${opts.persist} not found`); });
    // Probes: user networking, each probed guest port forwarded from a free port on 127.0.0.1.
    const probing = opts.powerOff && opts.probes?.length ? await Promise.all(probePorts(opts.probes).map(async (g) => [g, await freePort()] as const)) : [];
    const afterReport = probing.length ? async (report: HealthReport) => {
      // Probed once the guest reports healthy; an unhealthy guest fails the check already.
      if (report.result !== "ok") return;
      const hostPort = new Map(probing);
      probed = [];
      for (const p of opts.probes!) {
        const r = await runProbe(p, hostPort.get(p.port)!);
        probed.push(r);
      }
    } : undefined;
    const fwCfg = opts.powerOff ? { [FW_CFG_AFTER_BOOT]: probing.length ? FW_CFG_WAIT_POWEROFF : FW_CFG_POWEROFF } : undefined;
    const { cmd, args } = qemuCommand({ arch: opts.arch, disk: opts.disk, persist: opts.persist, memoryMiB: opts.memoryMiB, cpus: opts.cpus, firmwareVars, secureBoot: !!opts.secureBoot, fwCfg, ...(probing.length ? { forward: probing.map(([guestPort, hostPort]) => ({ hostAddress: "127.0.0.1", hostPort, guestPort })) } : {}) });
    cmdline = `${cmd} ${args.join(" ")}`;
    w = await watch(cmd, args, {
      marker: opts.marker, timeoutMs, wantReport, powerOff: !!opts.powerOff,
      graceMs: opts.exitGraceMs ?? 3000, exitTimeoutMs: opts.exitTimeoutMs ?? 60_000, log: opts.log, afterReport,
    });
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }

  const marker = String(opts.marker);
  const tail = `last console lines:\n${w.tail}`;
  const stderr = w.stderr.trim() ? `; stderr: ${w.stderr.trim()}` : "";
  const exited = w.exited && `qemu exited (${w.exited.signal ?? w.exited.code})`;
  if (w.fatal) throw new BootCheckError(`qemu: ${w.fatal}; ${tail}`, w.report);
  if (w.seconds === undefined) {
    const neither = wantReport && !w.report ? ` (nor the health report: ${HEALTH_HINT}; the example system's marker comes from /etc/local.d too)` : "";
    if (exited) throw new BootCheckError(`${exited} before "${marker}" appeared${neither}${stderr}; ${tail}`, w.report);
    throw new BootCheckError(`qemu: no "${marker}" on the console within ${timeoutMs / 1000} s${neither} (${cmdline}); ${tail}`, w.report);
  }
  if (wantReport && !w.report) {
    if (exited) throw new BootCheckError(`${exited} after "${marker}" but before the guest's health report (ramroot-health: lines): ${HEALTH_HINT}${stderr}; ${tail}`);
    throw new BootCheckError(`qemu: "${marker}" appeared, but no health report (ramroot-health: lines) within ${timeoutMs / 1000} s: ${HEALTH_HINT}; ${tail}`);
  }

  const problems = [...(w.report?.problems ?? []), ...(probed ?? []).filter((r) => !r.ok).map((r) => r.problem!)];
  let fsck: string | undefined;
  if (opts.powerOff) {
    if (w.exitTimedOut) {
      problems.push(`qemu did not exit within ${(opts.exitTimeoutMs ?? 60_000) / 1000} s after the health report, so the guest did not power off cleanly and was killed (the hook /${HEALTH_HOOK_PATH} runs poweroff when QEMU's fw_cfg ${FW_CFG_AFTER_BOOT} says ${FW_CFG_POWEROFF}; busybox init then runs the inittab's shutdown actions, openrc shutdown, which unmounts the disks): the console lines below show how far the shutdown got`);
    }
    if (opts.persist) {
      const res = await checkPersistImage(opts.persist);
      fsck = res.output;
      if (!res.clean) {
        // The dirty bit says it all; other findings (orphaned clusters, a broken chain) as fsck words them.
        const lines = res.output.split("\n").map((l) => l.trim()).filter((l) => l && !/^fsck\.fat \d|^Leaving filesystem unchanged|^Automatically removing dirty bit|\d+ files, \d+\/\d+ clusters$/.test(l));
        const said = lines.find((l) => /^Dirty bit is set/.test(l)) ?? lines.slice(0, 4).join(" / ");
        problems.push(`the persistence image ${opts.persist} is dirty after the boot check (fsck.vfat -n: ${said}): the guest did not unmount it before powering off; its shutdown must unmount /media/usb (OpenRC: localmount unmounts fstab's filesystems when it stops, and rc-update add mount-ro shutdown remounts what is left read-only); fsck.vfat -a ${opts.persist} repairs the image`);
      }
    }
  }
  if (problems.length) {
    const build = w.report?.build ? ` of build ${w.report.build}` : "";
    throw new BootCheckError(`boot check${build} failed:\n${problems.map((p) => `  - ${p}`).join("\n")}\n${w.report ? `health report:\n${w.report.lines.join("\n")}\n` : ""}${tail}`, w.report);
  }
  return {
    ok: true, seconds: w.seconds, console: w.console,
    ...(w.report ? { health: w.report } : {}),
    ...(opts.powerOff && w.shutdownSeconds !== undefined ? { shutdownSeconds: w.shutdownSeconds } : {}),
    ...(fsck !== undefined ? { fsck } : {}),
    ...(probed ? { probes: probed } : {}),
  };
}

/**
 * Console lines after which the marker can never come: fail at once, saying why, instead of
 * waiting out the timeout.
 */
const FATAL: Array<[RegExp, string]> = [
  [/Initramfs unpacking failed/, "the kernel could not unpack the initramfs (a write error means it did not fit: the kernel unpacks it into a filesystem capped at half the RAM; give the guest more memory (ramroot:qemuMemory) or boot with root=/dev/ram0 on the cmdline, which lifts the cap)"],
  [/Kernel panic - not syncing/, "the kernel panicked"],
  // EDK2's boot manager, when the image's signature is missing, is not in db, or no longer
  // covers the image: it then tries the next boot option, and with none left waits forever.
  [/failed to load Boot[0-9A-Fa-f]+ .*: (Access Denied|Security Violation)|Image .*(Access Denied|Security Violation)/,
    "Secure Boot: the firmware refused to run the UKI: it is not signed, is signed by a certificate that is not in the firmware's db, or was changed after it was signed (ramroot inspect UKI --cert CERT says which; sign it with the key whose certificate is enrolled: ramroot:secureBootKey and ramroot:secureBootCert, and for the boot check, a variable store with that certificate in db: ramroot:secureBootVars)"],
];

interface WatchOptions {
  marker: string | RegExp;
  timeoutMs: number;
  wantReport: boolean;
  powerOff: boolean;
  graceMs: number;
  exitTimeoutMs: number;
  log?: (line: string) => void;
  /** With powerOff: run once the report is in, before the guest is told (CONSOLE_POWEROFF) to power off. */
  afterReport?: (report: HealthReport) => Promise<void>;
}

/** What happened to one qemu run; bootCheck turns it into a result or an error. */
interface Watched {
  /** Seconds from qemu's start to the marker. */
  seconds?: number;
  report?: HealthReport;
  /** qemu exited by itself (not killed by us). */
  exited?: { code: number | null; signal: NodeJS.Signals | null };
  /** powerOff: seconds from the report to qemu's exit. */
  shutdownSeconds?: number;
  /** powerOff: qemu was still running exitTimeoutMs after the report, and was killed. */
  exitTimedOut?: boolean;
  /** A console line after which the boot cannot succeed, explained, with the line. */
  fatal?: string;
  console: string;
  tail: string;
  stderr: string;
}

function watch(cmd: string, args: string[], o: WatchOptions): Promise<Watched> {
  const pattern = typeof o.marker === "string" ? undefined : new RegExp(o.marker.source, o.marker.flags.replace(/[gy]/g, ""));
  const matches = (line: string) => (pattern ? pattern.test(line) : line.includes(o.marker as string));
  const now = () => Number(process.hrtime.bigint()) / 1e9;
  const started = now();
  const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
  live.add(child);
  const lines: string[] = [];
  const reportLines: string[] = [];
  let partial = "";
  const w: Watched = { console: "", tail: "", stderr: "" };
  let reportAt: number | undefined;

  return new Promise<Watched>((resolve, reject) => {
    let settled = false;
    let error: Error | undefined;
    const all = () => [...lines, ...(partial ? [cleanConsole(partial)] : [])];
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(after);
      stop(child).then(() => {
        w.console = all().join("\n");
        w.tail = all().slice(-40).join("\n");
        if (error) reject(error);
        else resolve(w);
      });
    };
    const exitedByItself = () => child.exitCode !== null || child.signalCode !== null;
    let after: NodeJS.Timeout | undefined;
    /** Marker (and report) seen: what is left is qemu's exit. */
    const done = () => w.seconds !== undefined && (!o.wantReport || w.report !== undefined);
    let asked = false;
    let told = false;
    /** wait-then-poweroff: the host's word on the guest's console (a tty keeps the line until the guest reads it). */
    const tell = () => {
      if (told || settled) return;
      told = true;
      reportAt = now();
      child.stdin!.write(`${CONSOLE_POWEROFF}\n`);
    };
    const progress = () => {
      if (!done() || after) return;
      clearTimeout(timer);
      if (o.powerOff && o.afterReport && !told && !exitedByItself()) {
        // The guest waits (wait-then-poweroff): the probes, then the word on its console.
        if (asked) return;
        asked = true;
        o.afterReport(w.report!).catch(() => {}).then(() => {
          if (settled) return;
          tell();
          progress();
        });
        return;
      }
      if (exitedByItself()) {
        // The last lines came after qemu's exit event (its output is read until it closes).
        w.exited = { code: child.exitCode, signal: child.signalCode };
        if (reportAt !== undefined) w.shutdownSeconds = 0;
        return finish();
      }
      if (o.powerOff) {
        after = setTimeout(() => {
          w.exitTimedOut = true;
          finish();
        }, o.exitTimeoutMs);
      } else {
        after = setTimeout(finish, o.graceMs);
      }
    };
    const timer = setTimeout(finish, o.timeoutMs);

    const onLine = (line: string) => {
      if (w.seconds === undefined && matches(line)) w.seconds = now() - started;
      if (o.wantReport && w.report === undefined && line.includes("ramroot-health:")) {
        reportLines.push(line);
        if (/ramroot-health:\s*result /.test(line)) {
          w.report = parseHealth(reportLines.join("\n"));
          if (w.report) reportAt = now();
          // Nothing to probe in a guest that did not come up or is not healthy: it powers off
          // at once, as it does without probes (a guest left waiting would be killed, its
          // persistence disk left dirty).
          if (w.report && o.powerOff && o.afterReport && (w.seconds === undefined || w.report.result !== "ok")) tell();
        }
      }
      const fatal = !done() && FATAL.find(([re]) => re.test(line));
      if (fatal) {
        w.fatal = `${fatal[1]}: "${line.trim()}"`;
        return finish();
      }
      progress();
    };
    child.stdout!.on("data", (chunk: Buffer) => {
      // Cleaned line by line: an escape sequence may span two chunks.
      const parts = (partial + chunk.toString("latin1")).split("\n");
      partial = parts.pop()!;
      for (const raw of parts) {
        const line = cleanConsole(raw);
        lines.push(line);
        o.log?.(line);
        onLine(line);
        if (settled) return;
      }
      if (partial && w.seconds === undefined && matches(cleanConsole(partial))) {
        w.seconds = now() - started;
        progress();
      }
    });
    child.stderr!.on("data", (chunk: Buffer) => { w.stderr += chunk.toString(); });
    child.stdin!.on("error", () => {});
    child.on("error", (e: any) => {
      error = e.code === "ENOENT" ? new Error(`qemu: ${cmd} not found: install the Debian package ${qemuPackageOf(cmd)}`) : e;
      finish();
    });
    child.on("close", (code, signal) => {
      live.delete(child);
      if (settled) return;
      w.exited = { code, signal };
      if (reportAt !== undefined) w.shutdownSeconds = now() - reportAt;
      finish();
    });
  });
}

/** Terminates qemu (SIGTERM, SIGKILL after 2 s) and waits for it to be gone. */
function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) {
    live.delete(child);
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 2000);
    child.once("exit", () => {
      clearTimeout(kill);
      live.delete(child);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/** Every qemu started here, killed if this process exits while it runs. */
const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of live) c.kill("SIGKILL");
});

/** Serial console text without ANSI escape sequences, carriage returns and other control bytes. */
export function cleanConsole(s: string): string {
  return s
    .replace(/\x1b\[[0-?]*[ -\/]*[@-~]/g, "")
    .replace(/\x1b[()][0-9A-Za-z]/g, "")
    .replace(/\x1b[@-_]/g, "")
    .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
}

function qemuPackageOf(binary: string): string {
  return Object.values(ARCH_SPECS).find((s) => s.binary === binary)?.qemuPackage ?? binary;
}

function findInPath(binary: string): boolean {
  return (process.env.PATH ?? "").split(path.delimiter).some((d) => d && existsSync(path.join(d, binary)));
}

/** EFI_GLOBAL_VARIABLE (8be4df61-93ca-11d2-aa0d-00e098032b8c) as stored: PK, KEK, BootOrder... */
const EFI_GLOBAL_VARIABLE = Buffer.from("61dfe48bca93d211aa0d00e098032b8c", "hex");

/**
 * Why the UEFI variable store `file` would not make the firmware enforce Secure Boot, or
 * undefined when it would. A store without a Platform Key is in Setup Mode, where the firmware
 * runs any image: a boot check on it would pass an unsigned UKI and prove nothing. Reads EDK2's
 * authenticated variable store (the format of OVMF_VARS and AAVMF_VARS): each variable is a
 * 60-byte header (StartId 0x55AA, State, Attributes, MonotonicCount, TimeStamp, PubKeyIndex,
 * NameSize, DataSize, VendorGuid), its UTF-16 name and its data; only State 0x3F (added, not
 * deleted) counts, and the last one of a name is the current one.
 */
export async function secureBootVarsProblem(file: string): Promise<string | undefined> {
  const b = await fs.readFile(file);
  const current = new Map<string, Buffer>();
  const start = Buffer.from([0xaa, 0x55]);
  for (let i = b.indexOf(start); i >= 0 && i + 60 <= b.length; i = b.indexOf(start, i + 2)) {
    const nameSize = b.readUInt32LE(i + 36), dataSize = b.readUInt32LE(i + 40);
    if (nameSize < 4 || nameSize > 256 || nameSize % 2 || dataSize > 1 << 20 || i + 60 + nameSize + dataSize > b.length) continue;
    const name = b.subarray(i + 60, i + 60 + nameSize).toString("utf16le");
    if (!/^[\x20-\x7e]+\0$/.test(name)) continue;
    const key = `${name.slice(0, -1)}${b.subarray(i + 44, i + 60).equals(EFI_GLOBAL_VARIABLE) ? "" : " (vendor)"}`;
    if (b[i + 2] === 0x3f) current.set(key, b.subarray(i + 60 + nameSize, i + 60 + nameSize + dataSize));
  }
  if (!current.get("PK")?.length) return `the UEFI variable store ${file} holds no Platform Key (PK), so the firmware is in Setup Mode and runs any image, signed or not: give a variable store with PK, KEK and your certificate in db enrolled (ramroot:secureBootVars), or leave it unset for Debian's snakeoil store`;
  const enable = current.get("SecureBootEnable (vendor)");
  if (enable && enable.length >= 1 && enable[0] === 0) return `the UEFI variable store ${file} has Secure Boot disabled (SecureBootEnable is 0), so the firmware runs any image: enable Secure Boot in its setup screen and keep the store, or give another one (ramroot:secureBootVars)`;
  return undefined;
}

/** QEMU's -drive option list uses commas as separators: a comma in a path is doubled. */
function drivePath(p: string): string {
  return path.resolve(p).replace(/,/g, ",,");
}
