// Encoding, hashing and compressing segments on worker threads: one segment per worker at a
// time, so two cores compress two segments at once.
//
// The writer's memory does not grow with the tree (it did: 133 MB of peak RSS for a 120 MB
// tree, 188 MB for 423 MB). What it took:
// - nothing is allocated per chunk or per segment: a worker's encoder refills one 1 MiB buffer,
//   the compressor's native handle writes into one reused output buffer (as zlib's own *Sync
//   functions do), and that goes to the file with fs.writeSync. Through zlib's and fs's
//   streams, every 256 KiB of output and every segment's encoder buffer was a fresh Buffer
//   left for a garbage collector that V8 runs late, and glibc's arenas kept the churn;
// - a thread keeps one zstd compressor for all its segments (reusedCompressor). A new zstd context
//   per segment, even closed at once, was most of the growth left (peak RSS 131, 152 and 162 MB
//   on the bench's 130, 217 and 433 MB trees, 29, 41 and 61 segments; 102, 104 and 108 MB
//   with one context per thread): each freed context's ~3 MB of glibc memory went back to
//   malloc, not to the system, and the next segments' allocations did not reuse all of it;
// - the main thread's young generation, which the walk grows, is shrunk when the workers start
//   (shrinkYoungGeneration).
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Writable } from "node:stream";
import { finished, pipeline } from "node:stream/promises";
import * as v8 from "node:v8";
import * as vm from "node:vm";
import { isMainThread, parentPort, Worker } from "node:worker_threads";
import * as zlib from "node:zlib";
import { encodeNewc, unpackRecords, type NewcRecord, type PackedRecords } from "./newc";

export type Compression = "zstd" | "gzip" | "none";

export interface SegmentJob {
  /** The segment's records, as objects or packed (what a plan holds: see PackedRecords). */
  records?: NewcRecord[];
  packed?: PackedRecords;
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

/** Encoder and compressor buffers: big enough that per-call costs (hash, zlib, write) vanish. */
const CHUNK = 1 << 20;

function compressor(c: "zstd" | "gzip", level: number): zlib.Gzip | zlib.ZstdCompress {
  const chunkSize = 1 << 18;
  if (c === "gzip") return zlib.createGzip({ level, chunkSize });
  if (typeof zlib.createZstdCompress !== "function")
    throw new Error(`zstd needs Node >= 22.15 (this is ${process.version}): run ramroot with the project's Node (npm run setup puts it in node_modules/.bin), or use gzip`);
  // No pledged size: a reused compressor (reusedCompressor) cannot have one, and a segment's
  // bytes must not depend on the thread that compressed it. So frames do not record their
  // size, which the kernel does not need. Each frame ends with its XXH64 checksum, which the
  // kernel's zstd decompressor verifies while it unpacks the initramfs (a flipped bit stops the
  // boot with "Initramfs unpacking failed" instead of shipping a corrupted file), and which
  // `zstd -t` and the store's verification read.
  return zlib.createZstdCompress({ chunkSize, params: { [zlib.constants.ZSTD_c_compressionLevel]: level, [zlib.constants.ZSTD_c_checksumFlag]: 1 } });
}

/** Where a segment's bytes go: straight to the file, or through a compressor first. */
interface Sink {
  write(chunk: Buffer): void | Promise<void>;
  end(): void | Promise<void>;
  /** Releases the file and the compressor after a failure; never throws. */
  abort(): void | Promise<void>;
}

/** This thread's encoder buffer (runSegment runs one segment at a time on each thread). */
let threadBuffer: Buffer | undefined;
/** The compressor's output: filled and written inside one synchronous call, so one per thread. */
let compressed: Buffer | undefined;

/** zlib's handle as its streams drive it (lib/zlib.js): write results land in `_writeState`. */
interface ZlibHandle {
  writeSync(flush: number, input: Buffer, inOff: number, inLen: number, out: Buffer, outOff: number, outLen: number): void;
}

/**
 * A thread's compressor.
 * - zstd: one for every segment, rather than made anew: its native state (a few MB) is
 *   allocated once per thread, so nothing of it is left for a garbage collector or malloc, and
 *   a worker's memory is the same after 5 segments as after 500. It is not reset (Node's
 *   reset() makes a new context with default parameters, which would drop the level and the
 *   checksum flag): a segment's frame ends with ZSTD_e_end, after which the context starts the
 *   next frame by itself with the same (sticky) parameters; zstd.h: "re-using context is just a
 *   speed / resource optimization. It doesn't change the compression ratio, which remains
 *   identical", and the bytes are those of a new context.
 * - gzip: a new one for each segment, the previous one closed (which frees its state, about
 *   300 KB, at once). A deflate stream reset for the next segment (deflateReset) gave bytes that
 *   depended on what the thread had compressed before (Node's zlib: a small segment after a
 *   large one came out one byte longer), so a gzip image was not reproducible.
 * test/unit/initramfs.test.ts checks that every segment is what a new compressor makes of it,
 * after others and after a failed segment. A segment that fails leaves its compressor in the
 * middle of a stream: it is dropped (dropCompressor), and the next segment gets a new one.
 */
let kept: { c: Compression; level: number; z: zlib.Gzip | zlib.ZstdCompress } | undefined;

function reusedCompressor(c: "zstd" | "gzip", level: number): zlib.Gzip | zlib.ZstdCompress {
  if (kept && (kept.c !== c || kept.level !== level || kept.z.destroyed || c === "gzip")) dropCompressor();
  else if (kept) return kept.z;
  const z = compressor(c, level);
  // A native error destroys the stream (which would also emit it, unheard): fileSink checks after each call.
  z.on("error", () => {});
  kept = { c, level, z };
  return z;
}

/** Closes the thread's compressor (which frees its native state at once). */
function dropCompressor(): void {
  kept?.z.close();
  kept = undefined;
}

/**
 * Writes to `file` with fs.writeSync, compressing through the native handle of a zlib stream
 * with one reused output buffer. Undefined when this Node's zlib stream has no such handle;
 * the caller then uses the stream as a stream.
 */
function fileSink(file: string, c: Compression, level: number): Sink | undefined {
  const z = c === "none" ? undefined : reusedCompressor(c, level);
  const internals = z as unknown as { _handle?: ZlibHandle; _writeState?: Uint32Array } | undefined;
  const handle = internals?._handle;
  const state = internals?._writeState;
  if (z && (typeof handle?.writeSync !== "function" || !(state instanceof Uint32Array) || state.length < 2)) {
    dropCompressor();
    return undefined;
  }
  const [more, last] = c === "gzip" ? [zlib.constants.Z_NO_FLUSH, zlib.constants.Z_FINISH] : [zlib.constants.ZSTD_e_continue, zlib.constants.ZSTD_e_end];
  const fd = fs.openSync(file, "w");
  const writeAll = (b: Buffer) => {
    for (let off = 0; off < b.length; ) off += fs.writeSync(fd, b, off, b.length - off);
  };
  // zlib's processChunkSync: call until the handle leaves room in the output, i.e. it has
  // consumed all the input (and, with the last flush, written the end of the stream).
  const push = (input: Buffer, flush: number) => {
    const out = (compressed ??= Buffer.allocUnsafe(CHUNK));
    let off = 0;
    let len = input.length;
    for (;;) {
      handle!.writeSync(flush, input, off, len, out, 0, out.length);
      if (z!.destroyed) throw z!.errored ?? new Error(`${c} compression failed`);
      const availOut = state![0];
      const availIn = state![1];
      if (availOut < out.length) writeAll(out.subarray(0, out.length - availOut));
      off += len - availIn;
      len = availIn;
      if (availOut > 0) return;
    }
  };
  let open = true;
  const close = () => {
    if (!open) return;
    open = false;
    // The thread's zstd compressor stays for the next segment (a gzip one is replaced by it).
    fs.closeSync(fd);
  };
  return {
    write: (chunk) => (z ? push(chunk, more) : writeAll(chunk)),
    end: () => {
      try {
        if (z) push(Buffer.alloc(0), last);
      } finally {
        close();
      }
    },
    abort: () => {
      // Mid-stream: the next segment must not continue this one's frame.
      if (z) dropCompressor();
      try {
        close();
      } catch {
        // the failure being reported is the earlier one
      }
    },
  };
}

/** The same through zlib's and fs's streams: the path for a Node whose zlib internals differ. */
function streamSink(file: string, c: Compression, level: number): Sink {
  const out = fs.createWriteStream(file, { highWaterMark: CHUNK });
  const z = c === "none" ? undefined : compressor(c, level);
  const sink: Writable = z ?? out;
  const done = z ? pipeline(z, out) : finished(out);
  done.catch(() => {}); // observed in end() and abort(); this only keeps an early failure from being "unhandled"
  return {
    write: (chunk) => written(sink, chunk),
    end: () => (sink.end(), done),
    abort: async () => {
      sink.destroy();
      await done.catch(() => {});
    },
  };
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

/**
 * Encodes one segment (with its trailer), measuring it and, given `out`, compressing it there.
 * One at a time on each thread (a worker gets one job at a time; the main thread's small
 * segments wait their turn here), so that a thread's encoder buffer and compressor are reused.
 */
export function runSegment(job: SegmentJob): Promise<SegmentResult> {
  const run = turn.then(() => encodeSegment(job));
  turn = run.catch(() => {});
  return run;
}
let turn: Promise<unknown> = Promise.resolve();

async function encodeSegment(job: SegmentJob): Promise<SegmentResult> {
  const hash = job.keyPrefix === undefined ? undefined : createHash("sha256").update(job.keyPrefix);
  let crc = 0;
  let bytes = 0;
  const buf = (threadBuffer ??= Buffer.allocUnsafe(CHUNK));
  let sink: Sink | undefined;
  try {
    if (job.out !== undefined) sink = fileSink(job.out, job.compression, job.level) ?? streamSink(job.out, job.compression, job.level);
    // The encoder overwrites `buf` for each chunk: each is consumed before the next is asked for.
    const records = job.packed ? unpackRecords(job.packed) : job.records;
    if (!records) throw new Error("compress-worker: a job without records");
    for await (const chunk of encodeNewc(records, { reuse: buf })) {
      hash?.update(chunk);
      if (job.crc) crc = zlib.crc32(chunk, crc);
      bytes += chunk.length;
      if (sink) await sink.write(chunk);
    }
    await sink?.end();
  } catch (e) {
    await sink?.abort();
    throw e;
  }
  return { key: hash?.digest("hex"), crc32: job.crc ? crc : undefined, bytes };
}

/**
 * V8's gc(), fetched on first use. --expose-gc is a V8 flag, which a Worker's execArgv refuses;
 * it is switched on only while a context that has gc() is made (as jest does). The flag is
 * process-wide: another thread switching it off in between is why the fetch is tried again.
 */
type Gc = (opts?: { type?: "major" | "minor"; execution?: "sync" | "async"; flavor?: "regular" | "last-resort" }) => void;
let gcFn: Gc | null | undefined;
function v8gc(): Gc | undefined {
  for (let tries = 0; gcFn === undefined; tries++) {
    const own = (globalThis as { gc?: unknown }).gc;
    if (typeof own === "function") {
      gcFn = own as Gc;
      break;
    }
    try {
      v8.setFlagsFromString("--expose-gc");
      const got = vm.runInNewContext("typeof gc === 'function' ? gc : undefined") as Gc | undefined;
      if (got) gcFn = got;
      else if (tries >= 2) gcFn = null;
    } catch {
      gcFn = null;
    } finally {
      v8.setFlagsFromString("--no-expose-gc");
    }
  }
  return gcFn ?? undefined;
}

/**
 * Shrinks this thread's young generation when a walk has left it large. V8 grows it, up to 16 MB
 * per semi-space, while a walk's records survive collections, and shrinks it only in a
 * collection that finds the thread allocating slowly; while workers compress, this thread
 * allocates so little that none comes. Costs about 25 ms, while the workers start.
 */
function shrinkYoungGeneration(): void {
  const young = v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space");
  if (young && young.space_size > 1 << 20) v8gc()?.({ type: "major", execution: "sync", flavor: "last-resort" });
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  port.on("message", (job: SegmentJob) => {
    runSegment(job).then(
      (result) => {
        port.postMessage({ result });
      },
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
  private readonly threads = fs.existsSync(this.script);
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
    // Once the caller has queued its jobs (the first ones start this tick) and while the
    // workers boot: the caller has walked the tree just before.
    if (this.workers.length === 1) setImmediate(shrinkYoungGeneration);
    return w;
  }
}
