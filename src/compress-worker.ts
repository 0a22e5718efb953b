// Encoding, hashing and compressing segments on worker threads: one segment per worker at a
// time, so two cores compress two segments at once and memory is a few chunks per worker.
import { createHash } from "node:crypto";
import { createWriteStream, existsSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Writable } from "node:stream";
import { finished, pipeline } from "node:stream/promises";
import { isMainThread, parentPort, Worker } from "node:worker_threads";
import * as zlib from "node:zlib";
import { encodedSize, encodeNewc, TRAILER, type NewcRecord } from "./newc";

export type Compression = "zstd" | "gzip" | "none";

export interface SegmentJob {
  records: NewcRecord[];
  compression: Compression;
  level: number;
  /** When set, the key is sha256(keyPrefix + the archive bytes); it names the format and compression. */
  keyPrefix?: string;
  /** Also compute the CRC-32 of the archive bytes: a cheap check that a tree did not change since plan. */
  crc?: boolean;
  /** Where to write the compressed segment; without it the segment is only measured. */
  out?: string;
}

export interface SegmentResult {
  key?: string;
  crc32?: number;
  /** Uncompressed newc bytes. */
  bytes: number;
}

function compressor(c: Compression, level: number, size: number): Writable & NodeJS.ReadableStream {
  const chunkSize = 1 << 18;
  if (c === "gzip") return zlib.createGzip({ level, chunkSize });
  if (typeof zlib.createZstdCompress !== "function")
    throw new Error(`zstd needs Node >= 22.15 (this is ${process.version}): run ramroot with the project's Node (npm run setup puts it in node_modules/.bin), or use gzip`);
  // The exact size up front lets zstd size its window to the segment (less memory for small
  // ones) and record the size in the frame header.
  return zlib.createZstdCompress({ chunkSize, pledgedSrcSize: size, params: { [zlib.constants.ZSTD_c_compressionLevel]: level } });
}

/** Encodes one segment (with its trailer), measuring it and, given `out`, compressing it there. */
export async function runSegment(job: SegmentJob): Promise<SegmentResult> {
  const hash = job.keyPrefix === undefined ? undefined : createHash("sha256").update(job.keyPrefix);
  let crc = 0;
  let bytes = 0;
  const file = job.out === undefined ? undefined : createWriteStream(job.out, { highWaterMark: 1 << 20 });
  const size = job.records.reduce((t, r) => t + encodedSize(r.name, r.size), encodedSize(TRAILER, 0));
  const z = file && job.compression !== "none" ? compressor(job.compression, job.level, size) : undefined;
  const sink = z ?? file;
  // Wired by hand rather than with pipeline(): each chunk is consumed before the encoder
  // refills its one buffer, so memory per worker is a few MiB whatever the segment size.
  const done = z ? pipeline(z, file!) : file ? finished(file) : Promise.resolve();
  done.catch(() => {}); // observed below; this only keeps an early failure from being "unhandled"
  try {
    for await (const chunk of encodeNewc(job.records, { reuse: true })) {
      hash?.update(chunk);
      if (job.crc) crc = zlib.crc32(chunk, crc);
      bytes += chunk.length;
      if (sink) await written(sink, chunk);
    }
    sink?.end();
    await done;
  } catch (e) {
    sink?.destroy();
    await done.catch(() => {});
    throw e;
  }
  return { key: hash?.digest("hex"), crc32: job.crc ? crc : undefined, bytes };
}

/** Resolves once the stream has consumed `chunk` (zlib has read it, or it is on disk). */
function written(w: Writable, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const bad = (e: Error) => reject(e);
    w.once("error", bad);
    w.write(chunk, (e) => {
      w.off("error", bad);
      if (e) reject(e);
      else resolve();
    });
  });
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  port.on("message", (job: SegmentJob) => {
    runSegment(job).then(
      (result) => port.postMessage({ result }),
      (e: Error) => port.postMessage({ error: e?.message ?? String(e) }),
    );
  });
}

/** A job that never ran because an earlier one failed: not the error to report. */
export class Cancelled extends Error {}

/**
 * Runs jobs on up to os.availableParallelism() worker threads. After a failure no new job
 * starts (queued ones reject), running ones finish, and the first error is what callers see.
 * Without the compiled worker file (e.g. under ts-node) jobs run on this thread, one at a time.
 */
export class SegmentPool {
  private queue: Array<{ job: SegmentJob; resolve: (r: SegmentResult) => void; reject: (e: Error) => void }> = [];
  private idle: Worker[] = [];
  private workers: Worker[] = [];
  private failed?: Error;
  private readonly script = path.join(__dirname, "compress-worker.js");
  private readonly threads = existsSync(this.script);
  private inlineBusy = false;

  constructor(private readonly size = os.availableParallelism()) {}

  run(job: SegmentJob): Promise<SegmentResult> {
    if (this.failed) return Promise.reject(new Cancelled(`not started after an earlier failure: ${this.failed.message}`));
    return new Promise((resolve, reject) => {
      this.queue.push({ job, resolve, reject });
      this.pump();
    });
  }

  async close(): Promise<void> {
    const all = this.workers;
    this.workers = [];
    this.idle = [];
    await Promise.all(all.map((w) => w.terminate()));
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const q of this.queue.splice(0)) q.reject(new Cancelled(`not started after an earlier failure: ${e.message}`));
  }

  private pump(): void {
    while (this.queue.length > 0) {
      if (!this.threads) {
        if (this.inlineBusy) return;
        this.inlineBusy = true;
        const q = this.queue.shift()!;
        runSegment(q.job)
          .then(q.resolve, (e) => (this.fail(e), q.reject(e)))
          .finally(() => ((this.inlineBusy = false), this.pump()));
        return;
      }
      const worker = this.idle.pop() ?? this.spawn();
      if (worker === undefined) return;
      const { job, resolve, reject } = this.queue.shift()!;
      const done = (msg: { result?: SegmentResult; error?: string }) => {
        worker.off("error", crashed);
        this.idle.push(worker);
        if (msg.result) resolve(msg.result);
        else {
          const e = new Error(msg.error);
          this.fail(e);
          reject(e);
        }
        this.pump();
      };
      const crashed = (e: Error) => {
        worker.off("message", done);
        this.workers = this.workers.filter((w) => w !== worker);
        this.fail(e);
        reject(e);
      };
      worker.once("message", done);
      worker.once("error", crashed);
      worker.postMessage(job);
    }
  }

  private spawn(): Worker | undefined {
    if (this.workers.length >= this.size) return undefined;
    // A small young generation: the workers allocate little JS, and each semi-space is RSS.
    const w = new Worker(this.script, { resourceLimits: { maxYoungGenerationSizeMb: 4 } });
    this.workers.push(w);
    return w;
  }
}
