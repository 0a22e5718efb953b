// The typed client of the host's half of a deploy: src/deploy/ramroot-host.sh, a real file
// (read at run time, linted by the tests) whose top comment documents the verbs, the state it
// prints and the commands it takes. One probe reads the host's state for every caller; the
// values go to the script as arguments, never spliced into it.
import * as fs from "node:fs";
import * as path from "node:path";
import { Conversation, type Step } from "./conversation";
import { DEFAULT_PATH, type RemoteProcess } from "./ssh-session";
import { parseDf, type DfSpace } from "./space";

/** What the client needs of a connection to the host. A Session has it; tests run the script locally. */
export interface HostLink {
  /** "user@host:port" */
  readonly where: string;
  readonly timeoutMs: number;
  step: Step;
  /** Starts argv on the host. */
  spawn(name: string, argv: string[]): Promise<RemoteProcess>;
  /** Runs argv on the host to its end; resolves stdout, rejects on failure with stderr. */
  exec(name: string, argv: string[], ioBytes?: number): Promise<string>;
}

/** The files of a deploy target (see the script's top comment). */
export interface HostFiles {
  /** P: the boot image. */
  path: string;
  /** P's folder. */
  dir: string;
  /** P.prev: the image before it. */
  prev: string;
  /** P.ramroot-new: the new image on its way to P. */
  upload: string;
}

export function hostFiles(p = DEFAULT_PATH): HostFiles {
  if (!p.startsWith("/") || p.endsWith("/") || p.includes("\0") || /\/\.\.?(\/|$)/.test(p)) {
    throw new Error(`deploy path must be an absolute file path, got ${JSON.stringify(p)}`);
  }
  return { path: p, dir: p.slice(0, p.lastIndexOf("/")) || "/", prev: `${p}.prev`, upload: `${p}.ramroot-new` };
}

/** What the script printed about P and its neighbours. */
export interface HostState {
  /** sha256 (hex) and size of P; undefined: no such file. */
  cur?: string;
  curSize?: number;
  /** sha256 of P.prev: undefined when there is none, or when it was not hashed (deploy: only where it may be P's image). */
  prev?: string;
  prevSize?: number;
  /** P.prev is (or is known to be) another image than P's. */
  prevDiffers: boolean;
  /** P.ramroot-new: its size, and its sha256 when it has the deploy's size. */
  upload?: string;
  uploadSize?: number;
  /** The free space of P's filesystem (all but `read`). */
  df?: DfSpace;
  /** rollback: the first 4 KiB of P and P.prev, and the host's `uname -m`. */
  heads?: { cur: Buffer; prev: Buffer; uname: string };
}

/** Reads the state lines (those before "@probed"). */
export function parseState(where: string, lines: string[]): HostState {
  const bad = () => new Error(`${where}: unexpected answer from the host: ${JSON.stringify(lines.join("\n").slice(0, 300))}`);
  const i = lines.indexOf("df");
  const state = i < 0 ? lines : lines.slice(0, i);
  const entry = (key: string) => {
    const m = state.map((l) => /^(\S+) (\S+) (\S+)$/.exec(l)).find((x) => x?.[1] === key);
    if (!m) throw bad();
    return { hash: m[2] === "-" ? undefined : m[2], size: m[3] === "-" ? undefined : Number(m[3]) };
  };
  const text = (key: string) => state.find((l) => l === key || l.startsWith(`${key} `))?.slice(key.length + 1);
  const cur = entry("cur"), pv = entry("prev"), nw = entry("new");
  const uname = text("uname");
  return {
    cur: cur.hash, curSize: cur.size,
    prev: pv.hash === "=" ? cur.hash : pv.hash === "?" ? undefined : pv.hash, prevSize: pv.size,
    prevDiffers: pv.hash === "?" || (pv.hash !== "=" && pv.hash !== cur.hash),
    upload: nw.hash, uploadSize: nw.size,
    df: i < 0 ? undefined : parseDf(lines.slice(i + 1).join("\n")),
    heads: uname === undefined ? undefined : { cur: Buffer.from(text("headcur") ?? "", "hex"), prev: Buffer.from(text("headprev") ?? "", "hex"), uname },
  };
}

const SCRIPT = "ramroot-host.sh";

/** Where the script is: beside this file's source, which is ../../../src/deploy/ from dist/src/deploy/. */
export function hostScriptPath(): string {
  const places = [path.join(__dirname, SCRIPT), path.resolve(__dirname, "..", "..", "..", "src", "deploy", SCRIPT)];
  const found = places.find((f) => fs.existsSync(f));
  if (!found) throw new Error(`${SCRIPT} not found in ${places.join(" or ")}: it ships beside src/deploy/host-protocol.ts`);
  return found;
}

let script: string | undefined;

/** The script as it is sent: without its comment lines and indentation (half its bytes, sent on every connection). */
export function hostScript(): string {
  script ??= fs.readFileSync(hostScriptPath(), "utf8").split("\n").map((l) => l.trimStart()).filter((l) => l && !l.startsWith("#")).join("\n") + "\n";
  return script;
}

const argv = (verb: string, ...args: string[]) => ["sh", "-c", hostScript(), "ramroot-host", verb, ...args];

/** The verbs of ramroot-host.sh on one host, for one target path. */
export class HostProtocol {
  constructor(readonly link: HostLink, readonly files: HostFiles) {}

  /** The state of P, P.prev and P.ramroot-new; changes nothing. */
  async read(): Promise<HostState> {
    const ch = await this.start("read");
    try {
      return await ch.state();
    } finally {
      ch.end();
    }
  }

  /**
   * Starts the host's half of a deploy of an image of `size` bytes and sha256 `sha256`: it reads
   * the state while it takes commands. `speculative`: the client is writing P.ramroot-new already.
   */
  deploy(size: number, sha256: string, speculative: boolean): Promise<HostChannel> {
    return this.start(speculative ? "speculate" : "deploy", size, [String(size), sha256]);
  }

  /** Starts a rollback: the state with the images' first 4 KiB, then swap(). */
  rollback(): Promise<HostChannel> {
    return this.start("rollback");
  }

  /**
   * Writes what `open()` reads to P.ramroot-new through the script's stdin (where the server has
   * no SFTP); open is called once the script runs.
   */
  async receive(open: () => NodeJS.ReadableStream): Promise<void> {
    const p = await this.link.spawn(`upload to ${this.files.upload}`, argv("receive", this.files.path));
    const source = open();
    const errOut: Buffer[] = [];
    p.stderr.on("data", (d: Buffer) => errOut.push(d));
    p.stdout.resume(); // receive prints nothing, but ssh2 only closes a channel whose output was read
    const failed = new Promise<never>((_, reject) => source.on("error", reject));
    source.pipe(p.stdin);
    const code = await Promise.race([p.exited, failed]);
    if (code !== 0) throw new Error(Buffer.concat(errOut).toString().trim().replace(/^ramroot: /gm, "") || `receive exited with ${code}`);
  }

  /** The BUILD_ID in the host's /etc/ramroot-release; "" when there is none. */
  async buildId(): Promise<string> {
    return (await this.link.exec("read /etc/ramroot-release", argv("build-id"))).trim();
  }

  /** The `status` verb's lines: build, boot id, BootCurrent, confirmed, health report. */
  async status(): Promise<string> {
    return this.link.exec("read the host's status", argv("status"));
  }

  /** The `efi-state` verb's lines for the trial image's folder `dir` (made when missing). */
  async efiState(dir: string): Promise<string> {
    return this.link.exec("read the UEFI boot variables", argv("efi-state", dir), 64 << 10);
  }

  /** Writes the efivarfs file `name` (NAME-GUID): attributes and payload, in one write. */
  async efiWrite(name: string, file: Buffer): Promise<void> {
    const octal = [...file].map((b) => `\\0${b.toString(8).padStart(3, "0")}`).join("");
    await this.link.exec(`write the UEFI variable ${name}`, argv("efi-write", name, octal));
  }

  async efiDelete(name: string): Promise<void> {
    await this.link.exec(`remove the UEFI variable ${name}`, argv("efi-delete", name));
  }

  async trialConfirm(): Promise<void> {
    await this.link.exec("confirm the trial boot", argv("trial-confirm"));
  }

  /** The verified trial image `trial` becomes P.ramroot-new (a rename). */
  async trialStage(trial: string, sha256: string, size: number): Promise<void> {
    await this.link.exec(`move ${trial} to ${this.files.upload}`, argv("trial-stage", trial, this.files.path, sha256), size);
  }

  async trialRemove(trial: string): Promise<void> {
    await this.link.exec(`remove ${trial}`, argv("trial-remove", trial));
  }

  private async start(verb: string, size = 0, args: string[] = []): Promise<HostChannel> {
    const proc = await this.link.spawn(`read the state of ${this.files.path}`, argv(verb, this.files.path, ...args));
    const conv = new Conversation((name, ms, fn) => this.link.step(name, ms, fn), proc);
    return new HostChannel(this.link, this.files, conv, size);
  }
}

/**
 * One run of the script: its state, then its commands. Timeouts grow with the bytes a command
 * reads or writes on the host (1 ms per KiB); `size` is the deploy's image size (0: none).
 */
export class HostChannel {
  private verifies = 0;
  /** Bytes of a .prev copy the script may go through before it answers (3 passes). */
  private prevIo = 0;

  constructor(private link: HostLink, private files: HostFiles, private conv: Conversation, private size: number) {}

  private ms = (ioBytes: number) => this.link.timeoutMs + Math.ceil(ioBytes / 1024);

  /** Waits for the state ("@probed"). */
  async state(): Promise<HostState> {
    const r = await this.conv.expect(`read the state of ${this.files.path}`, this.ms(2 * this.size), "@probed");
    return parseState(this.link.where, r.before);
  }

  /** Asks for P.ramroot-new's sha256 (after a flush); verified() waits for the answers. */
  verify(): void {
    this.conv.send("verify");
    this.verifies++;
  }

  /** The sha256 of the last verify asked for, once every verify asked for has answered; undefined when none was. */
  async verified(): Promise<string | undefined> {
    let r: { line: string } | undefined;
    for (; this.verifies > 0; this.verifies--) {
      r = await this.conv.expect(`verify ${this.files.upload}`, this.ms(2 * this.size + this.prevIo), "@verified");
    }
    return r?.line.slice("@verified ".length);
  }

  /** Makes P.ramroot-prev hold P (sha256 `sha256`, `size` bytes), to become P.prev at commit. */
  keepPrevious(sha256: string, size: number): void {
    this.conv.send(`prev ${sha256}`);
    this.prevIo = 3 * size;
  }

  /** Renames the verified upload to P (and P.ramroot-prev to P.prev); resolves how .prev was made, if it was. */
  async commit(): Promise<"linked" | "copied" | undefined> {
    this.conv.send("commit");
    await this.conv.expect(`rename ${this.files.upload} to ${this.files.path}`, this.ms(this.prevIo), "@committed");
    return this.conv.history.find((l) => l.startsWith("@prev "))?.slice("@prev ".length) as "linked" | "copied" | undefined;
  }

  /** The sha256 of P.prev (`size` bytes). */
  async hashPrev(size: number): Promise<string> {
    this.conv.send("hashprev");
    return (await this.conv.expect(`read the hash of ${this.files.prev}`, this.ms(size), "@prevhash")).line.slice("@prevhash ".length);
  }

  /** Rollback: P (sha256 `cur`) and P.prev (sha256 `prev`) change places, through verified copies; `ioBytes` their sizes. */
  async swap(cur: string, prev: string, ioBytes: number): Promise<void> {
    this.conv.send(`swap ${cur} ${prev}`);
    await this.conv.expect(`swap ${this.files.path} and ${this.files.prev}`, this.ms(3 * ioBytes), "@swapped");
  }

  /** No more commands: the script exits, leaving the temporaries for the next run. */
  end(): void {
    this.conv.end();
  }

  /** Asks the script to remove the temporaries and exit, and waits (briefly) until it has. */
  abort(): Promise<void> {
    return this.conv.finish("abort");
  }
}
