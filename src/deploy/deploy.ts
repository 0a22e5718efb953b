// Deploys a boot image to a host over SSH: replaces P (default /media/usb/EFI/BOOT/BOOTAA64.EFI)
// on its USB stick atomically, verified by hash, keeping the replaced image as P.prev so that it
// can be rolled back. At every point P holds a complete image: the old one until the final
// rename, the new one after it. Running deployImage again after any failure finishes the job (a
// verified upload is reused; a .prev that already equals P is left alone); a failed upload
// leaves P.prev as it was.
//
// The parts, in src/deploy/:
//   ssh-session.ts      the connection: pinned host key, timeouts, commands as argv, SFTP
//   host-keys.ts        pinned host keys and their fingerprints
//   ramroot-host.sh     the host's half (POSIX sh): its files, verbs, state lines and commands
//   host-protocol.ts    its typed client (conversation.ts: the line protocol under it)
//   upload.ts           the whole image: SFTP, or the script's stdin
//   bases.ts            local images the host may hold, and the deltas from them (src/deploy/delta.ts)
//   delta-upload.ts     a delta written on the host: copies there (SFTP copy-data), the rest sent
//   speculation.ts      a delta written while the host is still hashing its image
//   space.ts            free space on the stick
//   rollback.ts         P and P.prev swapped back
//   host-commands.ts    commands after a deploy (a reboot), and waiting for the new build
//   trial.ts            reboots verified by the host's status, and trial boots through BootNext
//   load-option.ts      UEFI boot entries (EFI_LOAD_OPTION) built for the trial image
//
// A deploy (DeployRun.run) is one connection and one run of the host script, which reads the
// host's state in the background while it takes commands:
//   1. the host's state: P's sha256, P.prev's where it may equal P, a leftover upload;
//      P already is the image: nothing is sent (only .prev's hash may be read), done
//   2. free space for the upload and a copy of P
//   3. P.ramroot-prev: a hard link to P (or a verified copy), made while the image is written
//   4. P.ramroot-new written: a delta from the base the host holds, a verified leftover
//      reused, or the whole image; a delta that does not verify is followed by the whole image
//   5. verified on the host (flushed, hashed), then the two renames
//   6. the chunk list of the image kept for the next deploy's delta
import * as fs from "node:fs";
import type { SFTPWrapper } from "ssh2";
import { chunkFile, writeChunkCache, type ChunkList } from "./delta";
import { Bases, type Base, type BaseDelta, type DeployBase, type LocalImage } from "./bases";
import { writeDelta } from "./delta-upload";
import { HostProtocol, hostFiles, type HostChannel, type HostFiles, type HostState } from "./host-protocol";
import { Speculation } from "./speculation";
import { sftpFeatures, withSession, type Log, type Session, type SshTarget } from "./ssh-session";
import { mb, spaceCheck } from "./space";
import { uploadWhole } from "./upload";
import { assertSignedBy } from "../image/sign";

export { DEFAULT_PATH, type Log, type SshTarget } from "./ssh-session";
export { fingerprint, parseHostKeys } from "./host-keys";
export { parseDf, spaceCheck, type DfSpace } from "./space";
export { bootArch, rollback } from "./rollback";
export { runOnHost, waitForBuild } from "./host-commands";
export { hostStatus, rebootInto, trialDeploy, trialPath, trialSupport, type TrialOptions } from "./trial";
export type { DeployBase } from "./bases";

export interface RemoteState {
  /** sha256 (hex) of the file at the target path; undefined when there is none. */
  sha256?: string;
  size?: number;
  /** sha256 of path.prev; undefined when there is none. */
  prevSha256?: string;
  prevSize?: number;
}

export interface DeployResult {
  /** false when the host already had this image (nothing was sent). */
  changed: boolean;
  /** Image bytes uploaded (0 when unchanged or when a verified upload from an interrupted run was reused). */
  bytesSent: number;
  /** sha256 of the image now kept as path.prev (undefined when there is none). */
  previous?: string;
  /** Wall time of the upload alone, or of writing the delta (0 when nothing was sent). */
  uploadMs: number;
  /**
   * Only when the new image was written from a delta: the base (sha256 of the host's image it
   * was built from), the bytes copied on the host from it, the bytes sent, the number of ranges.
   */
  delta?: { base: string; copied: number; literal: number; ranges: number };
}

export interface DeployOptions {
  /**
   * Local files that may hold what the host has now, e.g. the image deployed there last time.
   * When the host's image has the sha256 of one of them and the server has the SFTP copy-data
   * extension (OpenSSH >= 9.0), only the bytes the new image does not share with it are sent;
   * the rest is copied on the host. Missing files are skipped.
   */
  bases?: Array<string | DeployBase>;
  /**
   * A folder for chunk lists by sha256 (src/deploy/delta.ts), e.g. the store's cache/chunks: a base
   * listed there is not read again, and the list of the image deployed now is kept for the next
   * deploy (computed during a full upload, too).
   */
  chunkCache?: string;
  /**
   * A certificate (PEM or DER) the image must be signed by (ramroot:secureBootCert): checked
   * before anything is sent, since the host's firmware would refuse any other image.
   */
  secureBootCert?: string | Buffer;
}

/** The hash (and size) of the image at the target path and of path.prev: what refresh compares. */
export async function remoteState(t: SshTarget, log: Log = () => {}): Promise<RemoteState> {
  const files = hostFiles(t.path);
  return withSession(t, log, async (s) => {
    const st = await new HostProtocol(s, files).read();
    return { sha256: st.cur, size: st.curSize, prevSha256: st.prev, prevSize: st.prevSize };
  });
}

/**
 * Puts `file` (whose sha256 is `sha256`, hex) at the target path unless the host already has it.
 * With `opts.bases`, sends only a delta when the host's image is one of them.
 */
export async function deployImage(t: SshTarget, file: string, sha256: string, log: Log = () => {}, opts: DeployOptions = {}): Promise<DeployResult> {
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`deployImage: sha256 must be 64 lowercase hex digits, got ${JSON.stringify(sha256)}`);
  if (opts.secureBootCert) await assertSignedBy(file, opts.secureBootCert);
  const image: LocalImage = { file, sha256, size: (await fs.promises.stat(file)).size };
  const files = hostFiles(t.path);
  const bases = await Bases.find(opts.bases ?? [], image, opts.chunkCache, log);
  // The first base is the likely one: its delta is worked out while the connection is made.
  if (bases.all.length) bases.deltaFrom(bases.all[0]);
  return withSession(t, log, (s) => new DeployRun(s, files, image, bases, log, opts.chunkCache).run());
}

/** The new image written from a delta: what it was built from, the bytes sent, how long it took. */
interface DeltaWritten extends BaseDelta { base: Base; sent: number; ms: number }

/** One deploy, on one connection: its steps, and what they found out. */
class DeployRun {
  private readonly host: HostProtocol;
  private channel!: HostChannel;
  private sftp?: SFTPWrapper;
  private copyData = false;
  private speculation?: Speculation<DeltaWritten>;
  /** Set when the new image was written from a delta (and not sent again since). */
  private written?: DeltaWritten;
  private bytesSent = 0;
  private uploadMs = 0;
  /** The chunk list of the image, made beside a whole upload for the next deploy. */
  private wholeList?: Promise<ChunkList | undefined>;

  constructor(private s: Session, private files: HostFiles, private image: LocalImage, private bases: Bases, private log: Log, private chunkCache?: string) {
    this.host = new HostProtocol(s, files);
  }

  async run(): Promise<DeployResult> {
    await this.openSftp();
    await this.startHost();
    const st = await this.readState();
    if (st.cur === this.image.sha256) return this.unchanged(st);
    this.log(`${this.files.path} on ${this.s.where}: ${st.cur ? st.cur.slice(0, 12) : "absent"} -> ${this.image.sha256.slice(0, 12)}`);
    const reuse = !this.speculation && st.upload === this.image.sha256;
    const keepPrev = st.cur !== undefined && st.prevDiffers;
    // (A speculative delta checked the space before it started, and is filling it now.)
    if (!this.speculation) this.checkSpace(st, reuse, keepPrev);
    try {
      if (keepPrev) this.channel.keepPrevious(st.cur!, st.curSize ?? 0);
      await this.writeImage(st, reuse);
      await this.verify();
      await this.commit(st, keepPrev);
    } catch (err) {
      // The connection may still be up (a remote error, a bad hash): take the temporaries away so
      // they do not hold space on the stick. When it is gone, the next run removes them.
      this.speculation?.stop();
      await this.channel.abort();
      throw err;
    }
    await this.keepChunkList();
    const delta = this.written && { base: st.cur!, copied: this.written.delta.copied, literal: this.written.delta.literal, ranges: this.written.delta.ops.length };
    return { changed: true, bytesSent: this.bytesSent, previous: st.cur ?? st.prev, uploadMs: this.uploadMs, ...(delta ? { delta } : {}) };
  }

  /** SFTP and its copy-data extension, which a delta needs: asked for only when there are bases. */
  private async openSftp() {
    if (!this.bases.all.length) return;
    this.sftp = await this.s.sftp();
    this.copyData = !!this.sftp && sftpFeatures(this.sftp).copyData;
  }

  /** The host script, told whether a speculative delta writes the upload; then that delta starts. */
  private async startHost() {
    if (this.sftp && this.copyData) this.speculation = await Speculation.plan(this.sftp, this.files, this.image, this.bases);
    this.channel = await this.host.deploy(this.image.size, this.image.sha256, !!this.speculation);
    this.speculation?.start((base, gate) => this.writeDelta(base, gate));
  }

  private async readState(): Promise<HostState> {
    try {
      return await this.channel.state();
    } catch (err) {
      this.speculation?.stop();
      throw err;
    }
  }

  /** The host has the image already: nothing is sent; the previous image's hash is read if it was not. */
  private async unchanged(st: HostState): Promise<DeployResult> {
    this.speculation?.stop();
    await this.speculation?.ended();
    let previous = st.prev;
    try {
      if (previous === undefined && st.prevSize !== undefined) previous = await this.channel.hashPrev(st.prevSize);
    } finally {
      // Only host-side copies were made, if any: take them away.
      if (this.speculation) await this.channel.abort(); else this.channel.end();
    }
    this.log(`${this.files.path} on ${this.s.where} already is ${this.image.sha256.slice(0, 12)}: nothing to send`);
    return { changed: false, bytesSent: 0, previous, uploadMs: 0 };
  }

  /**
   * The temporaries that were not reusable were just removed; what remains must fit next to the
   * current image and the .prev (which is only replaced at the end).
   */
  private checkSpace(st: HostState, reuse: boolean, keepPrev: boolean) {
    const df = st.df!;
    const space = spaceCheck(df.available, [["new image", reuse ? 0 : this.image.size], ["copy of the current image", keepPrev ? st.curSize ?? 0 : 0]]);
    if (space.ok) return;
    this.channel.end();
    const { dir, prev } = this.files;
    throw new Error(
      `${this.s.where}: not enough space in ${dir} (${df.mountedOn}): need ${mb(space.need)} (${space.detail}), ` +
      `${mb(df.available)} available. The current image and ${prev} stay where they are; free space on that ` +
      `filesystem (e.g. remove ${prev} if you do not need a rollback) and deploy again.`);
  }

  /** P.ramroot-new: from a delta against the host's image, a verified leftover, or the whole image. */
  private async writeImage(st: HostState, reuse: boolean) {
    const base = !reuse && st.cur && this.copyData ? await this.bases.matching(st.cur, st.curSize) : undefined;
    let written: DeltaWritten | undefined;
    if (this.speculation) {
      written = await this.speculation.settle(base);
      if (this.speculation.base !== base) {
        this.log(`${this.files.path} on ${this.s.where} is not ${this.speculation.base.path} (same size, other content): its copies are discarded`);
        await this.channel.verified(); // a verify of those, if one was asked for
      }
    }
    if (base && !written) written = await this.writeDelta(base, Promise.resolve(true));
    if (written) {
      const { delta } = written;
      this.written = written;
      this.bytesSent = written.sent;
      this.uploadMs = written.ms;
      this.log(`${this.files.upload}: written from ${this.files.path} (${written.base.path}) and this image: ${mb(delta.copied)} copied on the host, ` +
        `${mb(delta.literal)} sent, ${delta.ops.length} ranges`);
    } else if (reuse) {
      this.log(`${this.files.upload} from an interrupted deploy already holds this image: not sending it again`);
      this.channel.verify();
    } else {
      await this.uploadWhole();
    }
  }

  /** Writes P.ramroot-new from `base` (our bytes once `gate` says so), and asks the host to verify it. */
  private writeDelta(base: Base, gate: Promise<boolean>): Promise<DeltaWritten | undefined> {
    return this.s.step(`write ${this.files.upload} (delta)`, this.s.timeoutMs, async (touch) => {
      const d = await this.bases.usableDelta(base, this.log);
      if (!d) return undefined;
      const t0 = performance.now();
      const sent = await writeDelta(this.sftp!, this.files.path, this.files.upload, this.image.file, d.delta, gate, touch);
      if (sent >= 0) this.channel.verify();
      return { ...d, base, sent, ms: performance.now() - t0 };
    }, true);
  }

  private async uploadWhole() {
    // The chunk list of what is deployed now, for the next deploy's delta (CPU beside the network).
    if (this.chunkCache) this.wholeList ??= chunkFile(this.image.file).catch(() => undefined);
    const t0 = performance.now();
    await uploadWhole(this.s, this.host, this.image.file, this.image.size, this.log);
    this.uploadMs += performance.now() - t0;
    this.bytesSent += this.image.size;
    this.channel.verify();
  }

  /** The host's sha256 of P.ramroot-new must be ours; a delta that did not make it is followed by the whole image. */
  private async verify() {
    const { upload } = this.files;
    let got = await this.channel.verified();
    if (got !== this.image.sha256 && this.written) {
      // The base was not what it claimed to be (or the delta is wrong): send everything.
      this.log(`${upload} written from the delta has sha256 ${got}, expected ${this.image.sha256}: sending the whole image`);
      this.written = undefined;
      await this.uploadWhole();
      got = await this.channel.verified();
    }
    if (got !== this.image.sha256) {
      throw new Error(`${this.s.where}: verify ${upload}: the uploaded ${upload} has sha256 ${got}, expected ${this.image.sha256} (removed it; the current image is untouched)`);
    }
    this.log(`${upload}: written, flushed, sha256 verified`);
  }

  private async commit(st: HostState, keepPrev: boolean) {
    const how = await this.channel.commit();
    if (keepPrev) this.log(`${this.files.prev}: now the previous image ${st.cur!.slice(0, 12)}${how === "linked" ? " (a hard link: no copy)" : ""}`);
    this.log(`${this.files.path}: now ${this.image.sha256.slice(0, 12)} (synced, verified)`);
  }

  private async keepChunkList() {
    const list = this.written?.next ?? (await this.wholeList);
    if (!this.chunkCache || !list) return;
    await writeChunkCache(this.chunkCache, this.image.sha256, list).catch((e) => this.log(`chunk cache ${this.chunkCache}: ${e.message} (not kept)`));
  }
}
