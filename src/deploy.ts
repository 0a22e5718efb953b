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
//   delta-upload.ts     a delta written on the host: copies there (SFTP copy-data), the rest sent
//   space.ts            free space on the stick
//   rollback.ts         P and P.prev swapped back
//   host-commands.ts    commands after a deploy (a reboot), and waiting for the new build
//
// Deploy order. One run of the host script does the host's part of a deploy: it reads the state
// in the background (P's sha256, P.prev's where it may equal P, a leftover upload) while it
// takes commands (keep P as P.prev, verify the upload, commit). Meanwhile the client writes
// P.ramroot-new over SFTP:
//   - a delta, when one of the local `bases` (e.g. the image deployed last time) is the host's
//     current image (same sha256) and the server has the SFTP copy-data extension (OpenSSH >= 9.0):
//     the ranges the new image shares with it (content-defined chunks, src/delta.ts) are copied
//     on the host from P, only the rest is sent. Where the host's image has a base's size, this
//     starts before its hash is known, so the host copies (and verifies) while it hashes; bytes
//     of the image are only sent once the host's image is known not to be the new one (other
//     size, other bytes where ours are to be sent, read back, or its hash). A delta that does not
//     verify (a base that is not what it claims) is followed by a full upload.
//   - else the whole file (SFTP, or the host script's stdin on a server without SFTP).
import * as fs from "node:fs";
import type { SFTPWrapper } from "ssh2";
import { chunkFile, chunkListOf, computeDelta, writeChunkCache, type ChunkList, type Delta } from "./delta";
import { differsWhereSent, writeDelta } from "./deploy/delta-upload";
import { HostProtocol, hostFiles, type HostState } from "./deploy/host-protocol";
import { sftpCall, sftpFeatures, withSession, type Log, type SshTarget } from "./deploy/ssh-session";
import { mb, spaceCheck } from "./deploy/space";
import { uploadWhole } from "./deploy/upload";

export { DEFAULT_PATH, type Log, type SshTarget } from "./deploy/ssh-session";
export { fingerprint, parseHostKeys } from "./deploy/host-keys";
export { parseDf, spaceCheck, type DfSpace } from "./deploy/space";
export { bootArch, rollback } from "./deploy/rollback";
export { runOnHost, waitForBuild } from "./deploy/host-commands";

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

/** A local file that may be the host's current image. */
export interface DeployBase {
  path: string;
  /** Its sha256 (hex), when known; computed (once per chunk cache) otherwise. */
  sha256?: string;
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
   * A folder for chunk lists by sha256 (src/delta.ts), e.g. the store's cache/chunks: a base
   * listed there is not read again, and the list of the image deployed now is kept for the next
   * deploy (computed during a full upload, too).
   */
  chunkCache?: string;
}

/** The hash (and size) of the image at the target path and of path.prev: what refresh compares. */
export async function remoteState(t: SshTarget, log: Log = () => {}): Promise<RemoteState> {
  const files = hostFiles(t.path);
  return withSession(t, log, async (s) => {
    const st = await new HostProtocol(s, files).read();
    return { sha256: st.cur, size: st.curSize, prevSha256: st.prev, prevSize: st.prevSize };
  });
}

interface Candidate { path: string; sha256?: string; size: number }

/**
 * Puts `file` (whose sha256 is `sha256`, hex) at the target path unless the host already has it.
 * With `opts.bases`, sends only a delta when the host's image is one of them. See the top of this
 * file for the order of the steps and why each failure leaves a bootable host.
 */
export async function deployImage(t: SshTarget, file: string, sha256: string, log: Log = () => {}, opts: DeployOptions = {}): Promise<DeployResult> {
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`deployImage: sha256 must be 64 lowercase hex digits, got ${JSON.stringify(sha256)}`);
  const size = (await fs.promises.stat(file)).size;
  const files = hostFiles(t.path);
  const { path: p, dir, prev, upload: tnew } = files;

  // The bases that exist (a base that is the new image itself is no use).
  const cands: Candidate[] = [];
  for (const b of opts.bases ?? []) {
    const c = typeof b === "string" ? { path: b } : b;
    if (c.sha256 === sha256) continue;
    const st = await fs.promises.stat(c.path).catch(() => undefined);
    if (st?.isFile()) cands.push({ path: c.path, sha256: c.sha256, size: st.size });
    else log(`base ${c.path}: not found, not used`);
  }
  // Chunk lists (src/delta.ts) and deltas, each computed once; base lists from the cache when there.
  const lists = new Map<Candidate, Promise<ChunkList>>();
  const listOf = (c: Candidate) => {
    let l = lists.get(c);
    if (!l) {
      l = chunkListOf(c.path, { sha256: c.sha256, cacheDir: opts.chunkCache, verify: true });
      l.catch(() => {});
      lists.set(c, l);
    }
    return l;
  };
  const shaOf = async (c: Candidate) => c.sha256 ?? (await listOf(c)).sha256;
  const deltas = new Map<Candidate, Promise<{ next: ChunkList; delta: Delta }>>();
  const deltaOf = (c: Candidate) => {
    let d = deltas.get(c);
    if (!d) {
      d = listOf(c).then(async (base) => {
        const next = await chunkFile(file, { like: base, likeFile: c.path });
        return { next, delta: computeDelta(base, next) };
      });
      d.catch(() => {});
      deltas.set(c, d);
    }
    return d;
  };
  // The first base is the likely one: its delta is worked out while the connection is made.
  if (cands.length) deltaOf(cands[0]);

  return withSession(t, log, async (s) => {
    const host = new HostProtocol(s, files);
    let sftp: SFTPWrapper | undefined;
    let copyData = false;
    // Speculation: when the host's image has the size of a base, the delta is written while the
    // host hashes its image (copies from it right away; the bytes of ours only once the image is
    // known not to be ours: its size differs from ours, its bytes where ours go differ, or its
    // hash says so).
    let specBase: Candidate | undefined;
    let specRoom = false;
    let curSftpSize: number | undefined;
    if (cands.length) {
      sftp = await s.sftp();
      copyData = !!sftp && sftpFeatures(sftp).copyData;
      if (sftp && copyData) {
        const stat = (f: string) => sftpCall<any>((cb) => sftp!.stat(f, cb)).catch(() => undefined);
        const room = sftpCall<any>((cb) => (sftp as any).ext_openssh_statvfs(dir, cb)).then((v) => Number(v.f_bavail) * Number(v.f_frsize), () => undefined);
        const [cur, tn, avail] = await Promise.all([stat(p), stat(tnew), room.catch(() => undefined)]);
        curSftpSize = cur?.isFile() ? cur.size : undefined;
        specBase = curSftpSize !== undefined ? cands.find((c) => c.size === curSftpSize) : undefined;
        specRoom = avail !== undefined && spaceCheck(avail, [["new image", size], ["copy", curSftpSize ?? 0]]).ok;
        // A leftover temporary of our size may be a verified upload: the probe decides about it.
        if (tn?.size === size || !specRoom) specBase = undefined;
      }
    }

    const ch = await host.deploy(size, sha256, !!specBase);
    const verify = () => ch.verify();
    const verified = () => ch.verified();
    // The bases whose delta could not be worked out here (unreadable, or not what their sha256 says).
    const unusable = new Set<Candidate>();
    const writeFrom = (c: Candidate, gate: Promise<boolean>) => s.step(`write ${tnew} (delta)`, s.timeoutMs, async (touch) => {
      let d: { next: ChunkList; delta: Delta };
      try {
        d = await deltaOf(c);
      } catch (e: any) {
        unusable.add(c);
        log(`no delta from ${c.path}: ${e.message}`);
        return undefined;
      }
      if (d.delta.copied === 0) {
        unusable.add(c);
        log(`no delta from ${c.path}: the images have no chunk in common`);
        return undefined;
      }
      const t0 = performance.now();
      const sent = await writeDelta(sftp!, p, tnew, file, d.delta, gate, touch);
      if (sent >= 0) verify();
      return { ...d, sent, ms: performance.now() - t0 };
    }, true);
    let gate: (go: boolean) => void = () => {};
    let spec: Promise<{ sent: number; next: ChunkList; delta: Delta; ms: number } | undefined> | undefined;
    if (specBase) {
      const gateP = new Promise<boolean>((r) => { gate = r; });
      if (curSftpSize !== size) gate(true);
      // Of our size: if its bytes differ from ours where we send some, it is not ours either.
      else deltaOf(specBase).then((d) => differsWhereSent(sftp!, p, file, d.delta)).then((yes) => { if (yes) gate(true); }, () => {});
      spec = writeFrom(specBase, gateP);
      spec.catch(() => {});
    }

    let st: HostState;
    try {
      st = await ch.state();
    } catch (err) {
      gate(false);
      throw err;
    }
    if (st.cur === sha256) {
      gate(false);
      await spec?.catch(() => {});
      let previous = st.prev;
      try {
        if (previous === undefined && st.prevSize !== undefined) previous = await ch.hashPrev(st.prevSize);
      } finally {
        // Only host-side copies were made, if any: take them away.
        if (spec) await ch.abort(); else ch.end();
      }
      log(`${p} on ${s.where} already is ${sha256.slice(0, 12)}: nothing to send`);
      return { changed: false, bytesSent: 0, previous, uploadMs: 0 };
    }
    log(`${p} on ${s.where}: ${st.cur ? st.cur.slice(0, 12) : "absent"} -> ${sha256.slice(0, 12)}`);
    const reuse = !specBase && st.upload === sha256;
    const copyPrev = st.cur !== undefined && st.prevDiffers;
    if (!specBase) {
      // The temporaries that were not reusable were just removed; what remains must fit next to
      // the current image and the .prev (which is only replaced at the end). (A speculative delta
      // checked this before it started, and is filling the space now.)
      const df = st.df!;
      const space = spaceCheck(df.available, [["new image", reuse ? 0 : size], ["copy of the current image", copyPrev ? st.curSize ?? 0 : 0]]);
      if (!space.ok) {
        ch.end();
        throw new Error(
          `${s.where}: not enough space in ${dir} (${df.mountedOn}): need ${mb(space.need)} (${space.detail}), ` +
          `${mb(df.available)} available. The current image and ${prev} stay where they are; free space on that ` +
          `filesystem (e.g. remove ${prev} if you do not need a rollback) and deploy again.`);
      }
    }

    let bytesSent = 0;
    let uploadMs = 0;
    let deltaInfo: DeployResult["delta"];
    let nextList: ChunkList | undefined;
    let fullList: Promise<ChunkList | undefined> | undefined;
    const fullUpload = async () => {
      // The chunk list of what is deployed now, for the next deploy's delta (CPU beside the network).
      if (opts.chunkCache && !fullList) fullList = chunkFile(file).catch(() => undefined);
      const t0 = performance.now();
      await uploadWhole(s, host, file, size, log);
      uploadMs += performance.now() - t0;
      bytesSent += size;
      verify();
    };
    try {
      // .prev: a hard link (or a verified copy) of the current image, made while the new one is written.
      if (copyPrev) ch.keepPrevious(st.cur!, st.curSize ?? 0);

      // Which base is the host's image?
      let base: Candidate | undefined;
      if (!reuse && st.cur && copyData) {
        for (const c of cands) {
          if (c.size === st.curSize && (await shaOf(c).catch(() => undefined)) === st.cur) { base = c; break; }
        }
      }
      let written: { sent: number; next: ChunkList; delta: Delta; ms: number } | undefined;
      if (spec) {
        gate(specBase === base);
        const w = await spec.catch((e) => (specBase === base ? Promise.reject(e) : undefined));
        if (specBase === base) written = w;
        else {
          log(`${p} on ${s.where} is not ${specBase!.path} (same size, other content): its copies are discarded`);
          await verified(); // a verify of those, if one was asked for
        }
      }
      if (base && !written && !unusable.has(base)) written = await writeFrom(base, Promise.resolve(true));
      if (written) {
        const { delta } = written;
        bytesSent = written.sent;
        uploadMs = written.ms;
        nextList = written.next;
        deltaInfo = { base: st.cur!, copied: delta.copied, literal: delta.literal, ranges: delta.ops.length };
        log(`${tnew}: written from ${p} (${base!.path}) and this image: ${mb(delta.copied)} copied on the host, ` +
          `${mb(delta.literal)} sent, ${delta.ops.length} ranges`);
      } else if (reuse) {
        log(`${tnew} from an interrupted deploy already holds this image: not sending it again`);
        verify();
      } else {
        await fullUpload();
      }

      let got = await verified();
      if (got !== sha256 && written) {
        // The base was not what it claimed to be (or the delta is wrong): send everything.
        log(`${tnew} written from the delta has sha256 ${got}, expected ${sha256}: sending the whole image`);
        deltaInfo = undefined;
        nextList = undefined;
        await fullUpload();
        got = await verified();
      }
      if (got !== sha256) {
        throw new Error(`${s.where}: verify ${tnew}: the uploaded ${tnew} has sha256 ${got}, expected ${sha256} (removed it; the current image is untouched)`);
      }
      log(`${tnew}: written, flushed, sha256 verified`);
      const how = await ch.commit();
      if (copyPrev) log(`${prev}: now the previous image ${st.cur!.slice(0, 12)}${how === "linked" ? " (a hard link: no copy)" : ""}`);
      log(`${p}: now ${sha256.slice(0, 12)} (synced, verified)`);
    } catch (err) {
      // The connection may still be up (a remote error, a bad hash): take the temporaries away so
      // they do not hold space on the stick. When it is gone, the next run removes them.
      gate(false);
      await ch.abort();
      throw err;
    }
    await saveList(nextList ?? (await fullList));
    return { changed: true, bytesSent, previous: st.cur !== undefined ? st.cur : st.prev, uploadMs, ...(deltaInfo ? { delta: deltaInfo } : {}) };

    async function saveList(list: ChunkList | undefined) {
      if (!opts.chunkCache || !list) return;
      await writeChunkCache(opts.chunkCache, sha256, list).catch((e) => log(`chunk cache ${opts.chunkCache}: ${e.message} (not kept)`));
    }
  });
}

/**
 * Swaps the target and path.prev: the previous image goes back into place and the replaced one
 * becomes path.prev, so calling it again goes back to the newer image. Both are copied on the
 * host to temporaries, flushed and verified first; then the target is replaced (rename), then
 * .prev (rename), then sync. Fails when there is no path.prev or it equals the target.
 */
