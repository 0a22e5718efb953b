// The architectures ramroot builds for, and every fact that differs between them, in one table
// (as mkosi's Architecture does). Names are Alpine's (aarch64, x86_64); each other tool's name
// for the same machine is a column. Adding one (riscv64) is a row here plus the test fixtures;
// QEMU's machine and firmware for each are in src/boot/qemu.ts, the one place that boots them.

export interface ArchFacts {
  /** The kernel's serial console on the machine QEMU emulates (and the Altra's). */
  console: string;
  /** The firmware's removable-media boot file, in EFI/BOOT/ (UEFI spec 3.5.1.1). */
  efiBootFile: string;
  /** systemd-stub's file name for this architecture (systemd-boot-efi, Alpine's systemd-efistub). */
  stub: string;
  /** PE/COFF Machine field of images for it. */
  peMachine: number;
  /** Go's GOARCH, Debian's architecture, Node's process.arch. */
  goarch: string;
  debian: string;
  node: string;
}

export const ARCHES = {
  aarch64: { console: "ttyAMA0", efiBootFile: "BOOTAA64.EFI", stub: "linuxaa64.efi.stub", peMachine: 0xaa64, goarch: "arm64", debian: "arm64", node: "arm64" },
  x86_64: { console: "ttyS0", efiBootFile: "BOOTX64.EFI", stub: "linuxx64.efi.stub", peMachine: 0x8664, goarch: "amd64", debian: "amd64", node: "x64" },
} as const satisfies Record<string, ArchFacts>;

export type Arch = keyof typeof ARCHES;
export const ARCH_NAMES = Object.keys(ARCHES) as Arch[];

export const isArch = (name: unknown): name is Arch => typeof name === "string" && Object.hasOwn(ARCHES, name);

/** What to say about a name that is not one of ours, e.g. `${what} arm64: use aarch64 or x86_64`. */
export function archProblem(name: string, what: string): string | undefined {
  if (isArch(name)) return undefined;
  const known = Object.entries(ARCHES).find(([, f]) => [f.goarch, f.debian, f.node].includes(name as never))?.[0];
  return `${what} ${name} is not an architecture ramroot builds for: use ${ARCH_NAMES.join(" or ")}${known ? ` (${name} is ${known})` : ""}`;
}

/** `name` as an Arch, or an Error saying what to use. */
export function toArch(name: string, what = "arch"): Arch {
  const problem = archProblem(name, what);
  if (problem) throw new Error(problem);
  return name as Arch;
}

export const archFacts = (arch: Arch): ArchFacts => ARCHES[arch];

/** EFI/BOOT/<file>: where the firmware looks on a removable disk. */
export const removablePath = (arch: Arch) => `EFI/BOOT/${ARCHES[arch].efiBootFile}`;

/** The architecture whose removable boot file this is (case-insensitive, as FAT is), if any. */
export const archOfBootFile = (name: string): Arch | undefined =>
  ARCH_NAMES.find((a) => ARCHES[a].efiBootFile.toLowerCase() === name.toLowerCase());

/** The architecture of a PE Machine value, if it is one of ours. */
export const archOfPeMachine = (machine: number): Arch | undefined => ARCH_NAMES.find((a) => ARCHES[a].peMachine === machine);

/** This machine, in Alpine's words (process.arch otherwise, for the messages that name it). */
export const hostArch = (): string => ARCH_NAMES.find((a) => ARCHES[a].node === process.arch) ?? process.arch;
