// Encoding, hashing and compressing segments on worker threads: one segment per worker at a
// time, so two cores compress two segments at once and memory is a few chunks per worker.
import { createHash } from "node:crypto";
import { createWriteStream, existsSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { pipeline } from "node:stream/promises";
import { isMainThread, parentPort, Worker } from "node:worker_threads";
import * as zlib from "node:zlib";
import { encodeNewc, type NewcRecord } from "./newc";

export type Compression = "zstd" | "gzip" | "none";

export interface SegmentJob {
  records: NewcRecord[];
  compression: Compression;
  level: number;
  /** Hashed before the archive bytes: names the format and compression in the key. */
  keyPrefix: string;
  /** Where to write the compressed segment; without it the segment is only hashed. */
  out?: string;
}

export interface SegmentResult {
  /** sha256 of keyPrefix + the uncompressed newc bytes. */
  key: string;
  /** Uncompressed newc bytes. */
  bytes: number;
}

function compressor(c: Compression, level: number): zlib.Gzip | zlib.ZstdCompress | undefined {
  const chunkSize = 1 << 18;
  if (c === "gzip") return zlib.createGzip({ level, chunkSize });
  if (c === "zstd") return zlib.createZstdCompress({ chunkSize, params: { [zlib.constants.ZSTD_c_compressionLevel]: level } });
  return undefined;
}

/** Encodes one segment (with its trailer), hashing it and, given `out`, compressing to it. */
export async function runSegment(job: SegmentJob): Promise<SegmentResult> {
  const hash = createHash("sha256").update(job.keyPrefix);
  let bytes = 0;
  async function* hashed() {
    for await (const chunk of encodeNewc(job.records)) {
      hash.update(chunk);
      bytes += chunk.length;
      yield chunk;
    }
  }
  if (job.out === undefined) {
    for await (const _ of hashed());
  } else {
    const z = compressor(job.compression, job.level);
    const file = createWriteStream(job.out, { highWaterMark: 1 << 20 });
    await (z ? pipeline(hashed(), z, file) : pipeline(hashed(), file));
  }
  return { key: hash.digest("hex"), bytes };
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
    if (this.failed) return Promise.reject(new Error(`not started after an earlier failure: ${this.failed.message}`));
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
    for (const q of this.queue.splice(0)) q.reject(new Error(`not started after an earlier failure: ${e.message}`));
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
    const w = new Worker(this.script);
    this.workers.push(w);
    return w;
  }
}
