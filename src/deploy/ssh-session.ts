// One authenticated SSH connection to a host (ssh2; no OpenSSH client needed). The host key is
// pinned: the connection is refused before authentication unless the server presents exactly a
// pinned key, and nothing is sent then. Every step runs under a timeout, and its errors name
// host, port and step. Remote commands are argv lists (quoted here, once); SFTP when the server
// has it.
import { Client, type ClientChannel, type ConnectConfig, type SFTPWrapper } from "ssh2";
import { blobFingerprint, hostKeyAlgorithms, parseHostKeys } from "./host-keys";

export interface SshTarget {
  host: string;
  /** Default 22. */
  port?: number;
  /** Default root. */
  user?: string;
  /** OpenSSH private key text. A secret: never logged, never part of an error. */
  privateKey: string;
  /** Passphrase of the private key, if it has one. */
  passphrase?: string;
  /**
   * The pinned host public key, "ssh-ed25519 AAAA..." as in known_hosts or `ssh-keyscan -t
   * ed25519 HOST` output (a leading host field and a trailing comment are ignored). Several lines
   * pin several keys; any of them is accepted.
   */
  hostKey: string;
  /** Default /media/usb/EFI/BOOT/BOOTAA64.EFI. Absolute. */
  path?: string;
  /**
   * Timeout of every network step in ms (connect+authenticate, each remote command, and upload
   * inactivity: no progress for this long). Remote commands that read or write the whole image
   * (hashing, copying, syncing) get 1 ms more per KiB involved (1 MiB/s, a slow USB stick).
   * Default 30000.
   */
  timeoutMs?: number;
}

export const DEFAULT_PATH = "/media/usb/EFI/BOOT/BOOTAA64.EFI";
export const DEFAULT_TIMEOUT_MS = 30_000;

export type Log = (line: string) => void;

/** "user@host:port", how every error and log line names the host. */
export const targetName = (t: SshTarget) => `${t.user ?? "root"}@${t.host}:${t.port ?? 22}`;

/** Quotes a string for POSIX sh. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A command started on the host: its output streams, its stdin, and its exit. */
export interface RemoteProcess {
  stdout: NodeJS.ReadableStream;
  stderr: NodeJS.ReadableStream;
  stdin: NodeJS.WritableStream;
  /** The exit code (null: none reported), once the process is gone and its output was read. */
  exited: Promise<number | null>;
}

/** An SFTP request as a promise. */
export const sftpCall = <T>(fn: (cb: (err: Error | undefined | null, v?: T) => void) => void) =>
  new Promise<T>((resolve, reject) => fn((err, v) => (err ? reject(err) : resolve(v as T))));

/**
 * What the server's SFTP offers beyond the basics. ssh2 keeps both in private fields (checked
 * here, in one place): the server's extensions, and its largest write.
 */
export function sftpFeatures(sftp: SFTPWrapper): { copyData: boolean; maxWrite: number } {
  const s = sftp as unknown as { _extensions?: Record<string, string>; _maxWriteLen?: number };
  const maxWrite = typeof s._maxWriteLen === "number" && s._maxWriteLen > 0 ? s._maxWriteLen : 32 * 1024;
  return { copyData: s._extensions?.["copy-data"] === "1", maxWrite };
}

/** Socket errors that mean the connection went away: which one the OS reports first is a race. */
const LOST = new Set(["EPIPE", "ECONNRESET", "ECONNABORTED"]);

export class Session {
  readonly where: string;
  private failure?: Error;
  private onFail = new Set<(e: Error) => void>();
  private sftpP?: Promise<SFTPWrapper | undefined>;

  private constructor(readonly client: Client, readonly target: SshTarget, readonly timeoutMs: number) {
    this.where = targetName(target);
  }

  static async open(t: SshTarget, log: Log): Promise<Session> {
    const timeoutMs = t.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const pinned = parseHostKeys(t.hostKey);
    const client = new Client();
    // ssh2 can emit more than one error for one failure (e.g. a timeout, then "connection lost");
    // the first one is reported through the phase that is waiting, the rest must not crash.
    client.on("error", () => {});
    const s = new Session(client, t, timeoutMs);
    let presented: Buffer | undefined;
    const cfg: ConnectConfig = {
      host: t.host,
      port: t.port ?? 22,
      username: t.user ?? "root",
      privateKey: t.privateKey,
      passphrase: t.passphrase,
      readyTimeout: timeoutMs,
      timeout: timeoutMs,
      keepaliveInterval: Math.max(1000, Math.min(10_000, Math.floor(timeoutMs / 3))),
      keepaliveCountMax: 3,
      // Ask for the pinned key's type, so that a server with several host keys presents that one.
      algorithms: { serverHostKey: hostKeyAlgorithms(pinned) as any },
      hostVerifier: (key: Buffer) => {
        presented = key;
        return pinned.some((k) => k.blob.equals(key));
      },
    };
    await new Promise<void>((resolve, reject) => {
      const fail = (err: Error) => {
        client.removeAllListeners("ready");
        client.end();
        if (presented && !pinned.some((k) => k.blob.equals(presented!))) {
          const type = presented.subarray(4, 4 + presented.readUInt32BE(0)).toString("latin1");
          reject(new Error(
            `${s.where}: host key verification failed: the server presented ${type} ${blobFingerprint(presented)}, ` +
            `the pinned key is ${pinned.map((k) => `${k.type} ${blobFingerprint(k.blob)}`).join(", ")}. ` +
            `Nothing was sent. If the host was reinstalled and you trust it, pin its key again: ` +
            `ssh-keyscan -t ed25519${(t.port ?? 22) !== 22 ? ` -p ${t.port}` : ""} ${t.host}`));
        } else if (!presented && /no matching|handshake failed/i.test(err.message)) {
          reject(new Error(`${s.where}: connect: ${err.message} (the server does not offer a host key of the pinned type ${pinned.map((k) => k.type).join(", ")}; pin the one it has: ssh-keyscan ${t.host})`));
        } else {
          reject(new Error(`${s.where}: connect: ${err.message}`));
        }
      };
      client.once("ready", () => { client.removeListener("error", fail); resolve(); });
      client.once("error", fail);
      try {
        client.connect(cfg);
        // Small SSH packets (channel requests, SFTP requests) go out at once instead of waiting
        // for the previous one's ACK (Nagle): each exchange otherwise costs up to a delayed ACK.
        client.setNoDelay(true);
      } catch (err) {
        // ssh2 throws synchronously for an unreadable private key; its message never holds the key.
        client.removeListener("error", fail);
        reject(new Error(`${s.where}: the private key cannot be used: ${(err as Error).message}`));
      }
    });
    client.on("error", (e: NodeJS.ErrnoException) => s.fail(e.code && LOST.has(e.code) ? new Error(`connection closed (${e.message})`, { cause: e }) : e));
    client.on("close", () => s.fail(new Error("connection closed")));
    log(`connected to ${s.where} (host key ${blobFingerprint(presented!)})`);
    return s;
  }

  private fail(e: Error) {
    if (this.failure) return;
    this.failure = e;
    for (const f of this.onFail) f(e);
  }

  /**
   * Runs fn under a timeout and the connection's failure; errors name host, port and step.
   * `stall`: the timeout is one of inactivity, restarted by each call of fn's `touch`.
   */
  step<T>(name: string, ms: number, fn: (touch: () => void) => Promise<T>, stall = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let done = false;
      let timer: NodeJS.Timeout;
      const finish = (err: Error | undefined, v?: T) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.onFail.delete(onFail);
        if (err) reject(err.message.startsWith(`${this.where}:`) ? err : new Error(`${this.where}: ${name}: ${err.message}`));
        else resolve(v as T);
      };
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          finish(new Error(stall ? `no progress for ${ms} ms` : `timed out after ${ms} ms`));
          this.close();
        }, ms);
      };
      const onFail = (e: Error) => finish(e);
      if (this.failure) return finish(this.failure);
      this.onFail.add(onFail);
      arm();
      fn(() => { if (stall) arm(); }).then((v) => finish(undefined, v), (e) => finish(e instanceof Error ? e : new Error(String(e))));
    });
  }

  /** Starts argv on the host (through the login shell, each word quoted). */
  spawn(name: string, argv: string[]): Promise<RemoteProcess> {
    return this.step(name, this.timeoutMs, () => this.start(argv));
  }

  /**
   * Runs argv on the host to its end under one step; resolves its stdout, rejects on a non-zero
   * exit with its stderr. `ioBytes`: what the command reads or writes (1 ms more per KiB).
   */
  exec(name: string, argv: string[], ioBytes = 0): Promise<string> {
    return this.step(name, this.timeoutMs + Math.ceil(ioBytes / 1024), async () => {
      const p = await this.start(argv);
      const out: Buffer[] = [];
      const errOut: Buffer[] = [];
      p.stdout.on("data", (d: Buffer) => out.push(d));
      p.stderr.on("data", (d: Buffer) => errOut.push(d));
      p.stdin.end();
      const code = await p.exited;
      const stderr = Buffer.concat(errOut).toString("utf8").trim();
      if (code !== 0) throw new Error(stderr.replace(/^ramroot: /gm, "") || `remote command exited with ${code}`);
      return Buffer.concat(out).toString("utf8");
    });
  }

  private start(argv: string[]): Promise<RemoteProcess> {
    return new Promise((resolve, reject) => {
      this.client.exec(argv.map(shq).join(" "), (err, ch: ClientChannel) => {
        if (err) return reject(err);
        let code: number | null = null;
        ch.on("exit", (c: number | null) => { code = c; });
        resolve({ stdout: ch, stderr: ch.stderr, stdin: ch, exited: new Promise((r) => ch.on("close", () => r(code))) });
      });
    });
  }

  /** The SFTP subsystem, or undefined when the server has none. */
  sftp(): Promise<SFTPWrapper | undefined> {
    this.sftpP ??= this.step("open sftp", this.timeoutMs, () => new Promise<SFTPWrapper | undefined>((resolve, reject) => {
      this.client.sftp((err, sftp) => {
        if (err && /subsystem|channel open failure|unable to start/i.test(err.message)) resolve(undefined);
        else if (err) reject(err);
        else resolve(sftp);
      });
    }));
    return this.sftpP;
  }

  close() {
    this.client.end();
    // end() is polite; make sure the socket goes away even when the peer does not answer.
    setTimeout(() => this.client.destroy(), 1000).unref();
  }
}

/** Runs fn with a session to `t`, closed afterwards whatever happens. */
export async function withSession<T>(t: SshTarget, log: Log, fn: (s: Session) => Promise<T>): Promise<T> {
  const s = await Session.open(t, log);
  try {
    return await fn(s);
  } finally {
    s.close();
  }
}
