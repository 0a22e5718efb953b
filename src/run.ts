// One way to run a program to its end: execa, with an environment that is known (nothing of the
// build process's is passed on unless asked: the language host holds every decrypted secret),
// a timeout, the output collected, and one shape of failure: the command, how it ended and the
// end of what it said; a program that is not installed is named with the package that has it.
// (Programs that run alongside ramroot, QEMU and its console, and the namespace steps of
// configure.ts, are spawned where they are watched.)

/** The package of each program ramroot runs: Debian's (the build host), then Alpine's. */
const PACKAGES: Record<string, string> = {
  cp: "coreutils", tar: "tar (Debian and Alpine)", unshare: "util-linux (Debian and Alpine)", mount: "mount (Debian), util-linux (Alpine)",
  setpriv: "util-linux (Debian), setpriv (Alpine)", sbsign: "sbsigntool (Debian and Alpine)", sbverify: "sbsigntool (Debian and Alpine)",
  osslsigncode: "osslsigncode", go: "golang-go (Debian), go (Alpine), or scripts/provision-go.sh", zstd: "zstd", gzip: "gzip", cpio: "cpio",
  mcopy: "mtools", mdir: "mtools", mmd: "mtools", sfdisk: "fdisk (Debian), sfdisk (Alpine)", "fsck.vfat": "dosfstools", "mkfs.vfat": "dosfstools",
  blkid: "util-linux (Debian), blkid (Alpine)", openssl: "openssl", "ssh-keygen": "openssh-client (Debian), openssh-keygen (Alpine)",
};

export interface RunOptions {
  cwd?: string;
  /** The program's whole environment. Default: PATH, HOME and LANG=C only. */
  env?: Record<string, string | undefined>;
  /** Written to its stdin, which is then closed (default: no stdin). */
  input?: string | Buffer;
  /** Default 10 minutes; then SIGTERM, and SIGKILL 5 s later. */
  timeoutMs?: number;
  /** Resolve with the result when it exits non-zero (it still rejects when it cannot run). */
  allowFail?: boolean;
  /** How errors show the command (e.g. without an argument that holds a secret). */
  shown?: string;
}

export interface RunResult { exitCode: number; stdout: string; stderr: string }

export class RunError extends Error {
  constructor(message: string, readonly result?: RunResult, readonly notFound = false) {
    super(message);
  }
}

/** The environment run gives a program unless told otherwise: PATH, HOME and LANG=C. */
export const baseEnv = () => ({ PATH: process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME: process.env.HOME ?? "/root", LANG: "C" });

/** The last lines of a program's output, for an error message. */
export function tail(text: string, lines = 20): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

export async function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const { execa } = await import("execa");
  const shown = opts.shown ?? [cmd, ...args].join(" ");
  const res = await execa(cmd, args, {
    cwd: opts.cwd,
    env: opts.env ?? baseEnv(),
    extendEnv: false,
    input: opts.input,
    stdin: opts.input === undefined ? "ignore" : "pipe",
    timeout: opts.timeoutMs ?? 10 * 60_000,
    forceKillAfterDelay: 5000,
    reject: false,
    stripFinalNewline: false,
    maxBuffer: 256 << 20,
  });
  if ((res as { code?: string }).code === "ENOENT" && res.exitCode === undefined)
    throw new RunError(`${cmd} is not installed${PACKAGES[cmd] ? `: install ${PACKAGES[cmd]}` : ""} (running \`${shown}\`)`, undefined, true);
  const result: RunResult = { exitCode: res.exitCode ?? -1, stdout: String(res.stdout ?? ""), stderr: String(res.stderr ?? "") };
  if (res.exitCode === 0 || (opts.allowFail && !res.timedOut && res.exitCode !== undefined)) return result;
  const limit = (opts.timeoutMs ?? 600_000) / 1000;
  const how = res.timedOut ? `was stopped after ${limit < 10 ? limit.toFixed(1) : Math.round(limit)} s` : res.exitCode !== undefined ? `exited ${res.exitCode}` : `was killed (${res.signal ?? "signal"})`;
  const said = tail(result.stderr || result.stdout);
  throw new RunError(`\`${shown}\` ${how}${said ? `:\n${said}` : " without output"}`, result);
}
