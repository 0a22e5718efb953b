// Writing the new image on the host from a delta (src/deploy/delta.ts): the ranges it shares with the
// host's current image are copied there by the SFTP server (the copy-data extension, OpenSSH
// >= 9.0), only the rest is sent.
import * as fs from "node:fs";
import type { SFTPWrapper } from "ssh2";
import type { Delta } from "./delta";
import { sftpCall, sftpFeatures } from "./ssh-session";

/** Runs fn over items with at most `limit` at a time; stops taking new items after a failure; rejects with the first. */
async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async () => {
    while (failed === undefined && next < items.length) {
      const item = items[next++];
      try { await fn(item); } catch (e) { failed ??= e; }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failed !== undefined) throw failed;
}

/**
 * Writes `dst` on the host from `delta`: ranges copied from `src` on the host (copy-data, 8 MiB
 * per request, a few in flight), and ranges of the local `file` sent as SFTP writes (many in
 * flight), the latter only once `gate` says yes. Resolves the bytes sent; -1 when the gate said
 * no (then `dst` is incomplete). `touch` is called on progress.
 */
export async function writeDelta(sftp: SFTPWrapper, src: string, dst: string, file: string, delta: Delta, gate: Promise<boolean>, touch: () => void): Promise<number> {
  const COPY = 8 << 20;
  const WRITE = Math.max(32 * 1024, Math.min(256 * 1024, sftpFeatures(sftp).maxWrite));
  const copies: Array<{ src: number; dst: number; len: number }> = [];
  const writes: Array<{ dst: number; len: number }> = [];
  for (const op of delta.ops) {
    const piece = op.src !== undefined ? COPY : WRITE;
    for (let o = 0; o < op.len; o += piece) {
      const len = Math.min(piece, op.len - o);
      if (op.src !== undefined) copies.push({ src: op.src + o, dst: op.dst + o, len });
      else writes.push({ dst: op.dst + o, len });
    }
  }
  const local = await fs.promises.open(file, "r");
  const handles: Buffer[] = [];
  try {
    const hs = await sftpCall<Buffer>((cb) => sftp.open(src, "r", cb));
    handles.push(hs);
    const hd = await sftpCall<Buffer>((cb) => sftp.open(dst, "w", { mode: 0o600 }, cb));
    handles.push(hd);
    const copyAll = pool(copies, 4, (c) => sftpCall<void>((cb) => sftp.ext_copy_data(hs, c.src, c.len, hd, c.dst, cb)).then(touch));
    const writeAll = (async () => {
      if (!writes.length) return 0;
      // Waiting for the host's hash is no stall of this step (the state reading has its own timeout).
      const keep = setInterval(touch, 1000);
      const go = await gate.finally(() => clearInterval(keep));
      if (!go) return -1;
      await pool(writes, 32, async (w) => {
        const buf = Buffer.allocUnsafe(w.len);
        const { bytesRead } = await local.read(buf, 0, w.len, w.dst);
        if (bytesRead !== w.len) throw new Error(`${file} changed while it was being sent (short read at ${w.dst})`);
        await sftpCall<void>((cb) => sftp.write(hd, buf, 0, w.len, w.dst, cb));
        touch();
      });
      return delta.literal;
    })();
    const [c, w] = await Promise.allSettled([copyAll, writeAll]);
    if (c.status === "rejected") throw c.reason;
    if (w.status === "rejected") throw w.reason;
    return w.value;
  } finally {
    await local.close();
    await Promise.all(handles.map((h) => sftpCall<void>((cb) => sftp.close(h, cb)).catch(() => {})));
  }
}

/**
 * Whether the host's file `remote` differs from the local `file` where the delta sends bytes: the
 * first and last 4 KiB of up to 4 such ranges, read back over SFTP. A proof, before the host's
 * hash is known, that it does not hold our image. false: not proven.
 */
export async function differsWhereSent(sftp: SFTPWrapper, remote: string, file: string, delta: Delta): Promise<boolean> {
  const SAMPLE = 4096;
  const samples: Array<[number, number]> = [];
  for (const r of delta.ops.filter((o) => o.src === undefined).slice(0, 4)) {
    samples.push([r.dst, Math.min(r.len, SAMPLE)]);
    if (r.len > SAMPLE) samples.push([r.dst + r.len - Math.min(r.len - SAMPLE, SAMPLE), Math.min(r.len - SAMPLE, SAMPLE)]);
  }
  if (!samples.length) return false;
  const h = await sftpCall<Buffer>((cb) => sftp.open(remote, "r", cb));
  const local = await fs.promises.open(file, "r");
  try {
    for (const [at, len] of samples) {
      const ours = Buffer.alloc(len), theirs = Buffer.alloc(len);
      await local.read(ours, 0, len, at);
      let got = 0;
      while (got < len) {
        const n = await sftpCall<number>((cb) => sftp.read(h, theirs, got, len - got, at + got, cb as any)).catch(() => 0);
        if (!n) break;
        got += n;
      }
      if (!ours.equals(theirs)) return true;
    }
    return false;
  } finally {
    await local.close();
    await sftpCall<void>((cb) => sftp.close(h, cb)).catch(() => {});
  }
}
