// The speculative delta. When the host's image has the size of a base, the delta from that base
// is written while the host is still hashing its image: the host copies the shared ranges from
// its image at once, and the bytes of ours follow only once the host's image is known not to be
// ours (another size than ours, other bytes where ours go, read back, or its hash). When the
// hash says the host's image is another one, the copies are discarded. Kept in one place so
// that it can be measured, and removed, on its own.
import type { SFTPWrapper, Stats } from "ssh2";
import type { Base, Bases, LocalImage } from "./bases";
import { differsWhereSent } from "./delta-upload";
import type { HostFiles } from "./host-protocol";
import { sftpCall } from "./ssh-session";
import { spaceCheck } from "./space";

/** Writes the new image from a base once `gate` says yes (its bytes; the host's copies at once). */
export type WriteFrom<W> = (base: Base, gate: Promise<boolean>) => Promise<W | undefined>;

export class Speculation<W> {
  private open: (go: boolean) => void = () => {};
  private readonly gate = new Promise<boolean>((r) => { this.open = r; });
  private written: Promise<W | undefined> = Promise.resolve(undefined);

  /**
   * A speculation from the base that has the size of the host's image (SFTP stat), when there is
   * one, there is room for a second image, and there is no leftover upload of our size (which
   * the host's state reading may find verified). Else undefined. start() starts it.
   */
  static async plan<W>(sftp: SFTPWrapper, files: HostFiles, image: LocalImage, bases: Bases): Promise<Speculation<W> | undefined> {
    const stat = (f: string) => sftpCall<Stats>((cb) => sftp.stat(f, cb)).catch(() => undefined);
    const room = sftpCall<any>((cb) => sftp.ext_openssh_statvfs(files.dir, cb)).then((v) => Number(v.f_bavail) * Number(v.f_frsize), () => undefined);
    const [cur, upload, available] = await Promise.all([stat(files.path), stat(files.upload), room]);
    const hostSize = cur?.isFile() ? cur.size : undefined;
    const base = hostSize !== undefined ? bases.ofSize(hostSize) : undefined;
    if (!base || upload?.size === image.size) return undefined;
    if (available === undefined || !spaceCheck(available, [["new image", image.size], ["copy", hostSize ?? 0]]).ok) return undefined;
    // Of another size than ours, the host's image is not ours; of our size, it is not where its
    // bytes differ from ours where we send some.
    const differs = () => (hostSize !== image.size ? Promise.resolve(true) : bases.deltaFrom(base).then((d) => differsWhereSent(sftp, files.path, image.file, d.delta)));
    return new Speculation<W>(base, differs);
  }

  private constructor(readonly base: Base, private differs: () => Promise<boolean>) {}

  /** Starts the write: the host's copies at once, our bytes once the host's image is known not to be ours. */
  start(write: WriteFrom<W>): void {
    this.differs().then((yes) => { if (yes) this.open(true); }, () => {});
    this.written = write(this.base, this.gate);
    this.written.catch(() => {});
  }

  /**
   * The host's image is known: `hostBase` is the base it is, if any. The write is kept when it
   * was from that base (its failure is the deploy's), else it is stopped and undefined.
   */
  async settle(hostBase: Base | undefined): Promise<W | undefined> {
    const right = hostBase === this.base;
    this.open(right);
    const w = await this.written.catch((e) => (right ? Promise.reject(e) : undefined));
    return right ? w : undefined;
  }

  /** The write sends nothing of ours (if it has not started to). */
  stop(): void {
    this.open(false);
  }

  /** Resolves when the write has ended, whatever its outcome. */
  async ended(): Promise<void> {
    await this.written.catch(() => {});
  }
}
