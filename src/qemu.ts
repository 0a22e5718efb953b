// Boots a disk image in QEMU the way a machine boots the USB stick: UEFI firmware, no -kernel,
// the firmware finds EFI/BOOT/BOOT{X64,AA64}.EFI on the disk's ESP (the removable-media path,
// no boot entry). The boot disk is attached read-only, so the artifact in the store is never
// modified; the persistence disk is writable.
//
// QEMU always runs with TCG (the build machines' KVM cannot run stock firmware). A failed boot
// never ends by itself (the firmware falls through to a shell and waits), so bootCheck watches
// the serial console for a marker under a timeout and kills qemu in every case.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";

import type { Arch } from "./bootmedia";
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
}

export const ARCH_SPECS: Record<Arch, ArchSpec> = {
  x86_64: {
    binary: "qemu-system-x86_64",
    qemuPackage: "qemu-system-x86",
    firmwarePackage: "ovmf",
    machine: ["-M", "q35"],
    code: "/usr/share/OVMF/OVMF_CODE_4M.fd",
    vars: "/usr/share/OVMF/OVMF_VARS_4M.fd",
  },
  aarch64: {
    binary: "qemu-system-aarch64",
    qemuPackage: "qemu-system-arm",
    firmwarePackage: "qemu-efi-aarch64",
    // cortex-a72: `max` is 3x slower under TCG, and no -cpu gives a 32-bit CPU.
    machine: ["-M", "virt", "-cpu", "cortex-a72"],
    bios: "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
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
   * x86_64: a writable copy of OVMF_VARS_4M.fd. Without it the system's copy is attached with
   * snapshot=on (writes go to a temporary overlay and are dropped).
   */
  firmwareVars?: string;
  /** Serial and the qemu monitor multiplexed on stdio (Ctrl-A X quits), for `ramroot qemu`. */
  interactive?: boolean;
  /** Appended as they are. */
  extraArgs?: string[];
}

/** The exact qemu command line for booting `disk`. Throws when qemu or the firmware is missing. */
export function qemuCommand(opts: QemuOptions): { cmd: string; args: string[] } {
  const spec = ARCH_SPECS[opts.arch];
  if (!spec) throw new Error(`qemu: unknown arch ${String(opts.arch)}`);
  if (!findInPath(spec.binary)) throw new Error(`qemu: ${spec.binary} not found: install the Debian package ${spec.qemuPackage}`);
  for (const f of [spec.code, spec.vars, spec.bios]) {
    if (f && !existsSync(f)) throw new Error(`qemu: firmware ${f} not found: install the Debian package ${spec.firmwarePackage}`);
  }
  const args = ["-accel", "tcg", ...spec.machine];
  args.push("-m", String(opts.memoryMiB ?? 1024), "-smp", String(opts.cpus ?? 1));
  args.push("-nodefaults", "-display", "none", "-no-reboot");
  if (spec.bios) args.push("-bios", spec.bios);
  if (spec.code) {
    args.push("-drive", `if=pflash,format=raw,unit=0,readonly=on,file=${drivePath(spec.code)}`);
    args.push("-drive", opts.firmwareVars
      ? `if=pflash,format=raw,unit=1,file=${drivePath(opts.firmwareVars)}`
      : `if=pflash,format=raw,unit=1,snapshot=on,file=${drivePath(spec.vars!)}`);
  }
  // No boot menu wait (the aarch64 firmware otherwise waits 5 s).
  args.push("-boot", "menu=on,splash-time=0");
  args.push("-drive", `if=none,id=boot,format=raw,readonly=on,file=${drivePath(opts.disk)}`);
  args.push("-device", "virtio-blk-pci,drive=boot,bootindex=0");
  if (opts.persist) {
    args.push("-drive", `if=none,id=persist,format=raw,file=${drivePath(opts.persist)}`);
    args.push("-device", "virtio-blk-pci,drive=persist");
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
  /** Default 180 s. */
  timeoutMs?: number;
  memoryMiB?: number;
  cpus?: number;
  /** Called with every console line, for progress. */
  log?: (line: string) => void;
  /**
   * After the marker, how long qemu may take to exit by itself (a guest that syncs and calls
   * `poweroff -f`) before it is killed. Default 3000 ms; the measured time ends at the marker.
   */
  exitGraceMs?: number;
}

export interface BootResult {
  ok: true;
  /** Seconds from qemu's start to the marker. */
  seconds: number;
  /** The whole console, escape sequences and carriage returns removed. */
  console: string;
}

/**
 * Boots `disk` and waits for `marker` on the serial console. Throws, with the last 40 console
 * lines in the message, when qemu exits first or the marker does not appear within the timeout.
 * qemu never outlives the call.
 */
export async function bootCheck(opts: BootOptions): Promise<BootResult> {
  const timeoutMs = opts.timeoutMs ?? 180_000;
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-qemu-"));
  try {
    const spec = ARCH_SPECS[opts.arch];
    let firmwareVars: string | undefined;
    if (spec?.vars) {
      firmwareVars = path.join(tmp, path.basename(spec.vars));
      await fs.copyFile(spec.vars, firmwareVars).catch((e: any) => {
        throw e.code === "ENOENT" ? new Error(`qemu: firmware ${spec.vars} not found: install the Debian package ${spec.firmwarePackage}`) : e;
      });
    }
    await fs.access(opts.disk).catch(() => { throw new Error(`qemu: boot disk ${opts.disk} not found`); });
    if (opts.persist) await fs.access(opts.persist).catch(() => { throw new Error(`qemu: persistence disk ${opts.persist} not found`); });
    const { cmd, args } = qemuCommand({ arch: opts.arch, disk: opts.disk, persist: opts.persist, memoryMiB: opts.memoryMiB, cpus: opts.cpus, firmwareVars });
    return await watch(cmd, args, opts.marker, timeoutMs, opts.exitGraceMs ?? 3000, opts.log);
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Console lines after which the marker can never come: fail at once, saying why, instead of
 * waiting out the timeout.
 */
const FATAL: Array<[RegExp, string]> = [
  [/Initramfs unpacking failed/, "the kernel could not unpack the initramfs (a write error means it did not fit: the kernel unpacks it into a filesystem capped at half the RAM; give the guest more memory (ramroot:qemuMemory) or boot with root=/dev/ram0 on the cmdline, which lifts the cap)"],
  [/Kernel panic - not syncing/, "the kernel panicked"],
];

function watch(cmd: string, args: string[], marker: string | RegExp, timeoutMs: number, graceMs: number,
  log?: (line: string) => void): Promise<BootResult> {
  const pattern = typeof marker === "string" ? undefined : new RegExp(marker.source, marker.flags.replace(/[gy]/g, ""));
  const matches = (line: string) => (pattern ? pattern.test(line) : line.includes(marker as string));
  const started = process.hrtime.bigint();
  const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
  live.add(child);
  const lines: string[] = [];
  let partial = "";
  let stderr = "";
  let seconds: number | undefined;

  return new Promise<BootResult>((resolve, reject) => {
    let settled = false;
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(grace);
      stop(child).then(() => {
        if (err) reject(err);
        else resolve({ ok: true, seconds: seconds!, console: consoleText() });
      });
    };
    const all = () => [...lines, ...(partial ? [cleanConsole(partial)] : [])];
    const consoleText = () => all().join("\n");
    const tail = () => all().slice(-40).join("\n");
    const seen = () => {
      if (seconds !== undefined) return;
      seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (child.exitCode !== null || child.signalCode !== null) finish();
      else grace = setTimeout(() => finish(), graceMs);
    };
    let grace: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      finish(new Error(`qemu: no "${String(marker)}" on the console within ${timeoutMs / 1000} s (${cmd} ${args.join(" ")}); last console lines:\n${tail()}`));
    }, timeoutMs);

    child.stdout!.on("data", (chunk: Buffer) => {
      // Cleaned line by line: an escape sequence may span two chunks.
      const parts = (partial + chunk.toString("latin1")).split("\n");
      partial = parts.pop()!;
      for (const raw of parts) {
        const line = cleanConsole(raw);
        lines.push(line);
        log?.(line);
        if (matches(line)) seen();
        const fatal = seconds === undefined && FATAL.find(([re]) => re.test(line));
        if (fatal) finish(new Error(`qemu: ${fatal[1]}: "${line.trim()}"; last console lines:\n${tail()}`));
      }
      if (partial && matches(cleanConsole(partial))) seen();
    });
    child.stderr!.on("data", (chunk: Buffer) => { stderr += chunk.toString(); });
    child.stdin!.on("error", () => {});
    child.on("error", (e: any) => {
      finish(e.code === "ENOENT" ? new Error(`qemu: ${cmd} not found: install the Debian package ${qemuPackageOf(cmd)}`) : e);
    });
    child.on("close", (code, signal) => {
      live.delete(child);
      if (seconds !== undefined) return finish();
      finish(new Error(`qemu exited (${signal ?? code}) before "${String(marker)}" appeared${stderr.trim() ? `; stderr: ${stderr.trim()}` : ""}; last console lines:\n${tail()}`));
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

/** QEMU's -drive option list uses commas as separators: a comma in a path is doubled. */
function drivePath(p: string): string {
  return path.resolve(p).replace(/,/g, ",,");
}
