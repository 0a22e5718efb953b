// The newc ("070701") cpio format: the only archive format the kernel's initramfs unpacker
// reads. A record is plain data; content is streamed from its source file in large chunks so
// that memory does not grow with the size of a file or of the tree.
import * as fs from "node:fs";

/** One archive member: the header fields, plus where its content comes from. */
export interface NewcRecord {
  /** Path inside the archive, relative, without "./" ("." is the root itself). */
  name: string;
  /** st_mode: file type and permission bits (setuid, setgid and sticky included). */
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  ino: number;
  devMajor: number;
  devMinor: number;
  rdevMajor: number;
  rdevMinor: number;
  /** Bytes of content in the archive. */
  size: number;
  /** A file to stream exactly `size` bytes of content from. */
  source?: string;
  /** Content held inline (a symlink's target). */
  data?: Uint8Array;
}

export const TRAILER = "TRAILER!!!";
const HEADER_SIZE = 110;
const MAX_FIELD = 0xffffffff;
/** The largest file newc can hold: its size field is 32 bits. */
export const MAX_FILE_BYTES = MAX_FIELD;

/**
 * Why an entry cannot go into a newc archive, or undefined: `name` is its name in the archive,
 * `shown` how the message names it (its path on disk), `fix` how to leave it out.
 * - The kernel (and GNU cpio) read an entry named TRAILER!!! as the end of the archive: a
 *   top-level file of that name would silently drop everything after it.
 * - A file of 4 GiB or more does not fit the 32-bit size field.
 */
export function unarchivable(name: string, size: number, shown: string, fix = "leave it out of the image"): string | undefined {
  if (name === TRAILER) return `${shown}: a top-level entry named ${TRAILER} ends a newc archive (the kernel would unpack nothing after it): rename it or ${fix}`;
  if (size > MAX_FILE_BYTES) return `${shown} is ${size} bytes, and an initramfs (newc) holds files up to ${MAX_FILE_BYTES} bytes (4 GiB - 1): make it smaller or ${fix}`;
  return undefined;
}
/** Output chunk size: big enough that per-chunk costs (hash, zlib calls) vanish. */
const CHUNK = 1 << 20;

const pad4 = (n: number) => (4 - (n & 3)) & 3;

/** Bytes a record takes in an archive, header to padding. */
export function encodedSize(name: string, size: number): number {
  const head = HEADER_SIZE + Buffer.byteLength(name) + 1;
  return head + pad4(head) + size + pad4(size);
}

function header(r: NewcRecord, nameSize: number): string {
  if (r.size > MAX_FILE_BYTES) throw new Error(`newc: ${unarchivable(r.name, r.size, r.source ?? r.name)}`);
  const fields = [r.ino, r.mode, r.uid, r.gid, r.nlink, r.mtime, r.size, r.devMajor, r.devMinor, r.rdevMajor, r.rdevMinor, nameSize, 0];
  let h = "070701";
  for (const f of fields) {
    if (!Number.isInteger(f) || f < 0 || f > MAX_FIELD) {
      throw new Error(`newc: ${r.name}: a header field is ${f}, newc holds 0..${MAX_FIELD} (files must be under 4 GiB)`);
    }
    h += f.toString(16).toUpperCase().padStart(8, "0");
  }
  return h;
}

/**
 * Encodes records (and, unless `trailer` is false, the TRAILER!!! entry) as newc, yielding
 * chunks of about 1 MiB. File content is read straight into the output chunk.
 *
 * With `reuse`, one buffer is overwritten at every step, so a consumer must be done with a
 * chunk before asking for the next. That keeps memory flat: fresh 1 MiB buffers are freed only
 * when the garbage collector gets round to them, and a busy thread piles up tens of MiB first.
 * `reuse` may be the buffer itself (chunks are then its size): a caller encoding many archives
 * passes the same one to each.
 */
export async function* encodeNewc(records: Iterable<NewcRecord>, opts: { trailer?: boolean; reuse?: boolean | Buffer } = {}): AsyncGenerator<Buffer> {
  if (Buffer.isBuffer(opts.reuse) && opts.reuse.length === 0) throw new Error("newc: the buffer to reuse is empty");
  let buf = Buffer.isBuffer(opts.reuse) ? opts.reuse : Buffer.allocUnsafe(CHUNK);
  let used = 0;
  const room = () => buf.length - used;
  function* flush(): Generator<Buffer> {
    if (used > 0) yield buf.subarray(0, used);
    if (!opts.reuse) buf = Buffer.allocUnsafe(CHUNK);
    used = 0;
  }
  function* put(bytes: Uint8Array): Generator<Buffer> {
    for (let off = 0; off < bytes.length; ) {
      if (room() === 0) yield* flush();
      const n = Math.min(room(), bytes.length - off);
      buf.set(bytes.subarray(off, off + n), used);
      used += n;
      off += n;
    }
  }
  function* zeros(n: number): Generator<Buffer> {
    if (n > 0) yield* put(new Uint8Array(n));
  }

  const all = opts.trailer === false ? records : withTrailer(records);
  for (const r of all) {
    if (r.name === TRAILER && r !== trailerRecord) throw new Error(`newc: ${unarchivable(r.name, r.size, r.source ?? r.name)}`);
    const name = Buffer.from(r.name + "\0");
    const head = Buffer.from(header(r, name.length), "latin1");
    yield* put(head);
    yield* put(name);
    yield* zeros(pad4(head.length + name.length));
    if (r.source !== undefined) {
      yield* readInto(r);
    } else if (r.size > 0) {
      if (!r.data || r.data.length !== r.size) throw new Error(`newc: ${r.name}: size ${r.size} but ${r.data?.length ?? 0} bytes of inline data`);
      yield* put(r.data);
    }
    yield* zeros(pad4(r.size));
  }
  yield* flush();

  function* readInto(r: NewcRecord): Generator<Buffer> {
    const src = r.source!;
    let fd: number;
    try {
      fd = fs.openSync(src, "r");
    } catch (e: any) {
      throw new Error(`cannot read ${src} (${e.code ?? e.message}): make it readable by the user running ramroot, or exclude it`);
    }
    try {
      // The header already promised `size` bytes: a file that changed since the walk would
      // produce a corrupt archive, so refuse rather than pad or truncate.
      if (fs.fstatSync(fd).size !== r.size) throw new Error(`${src} changed size while being archived; rebuild when the tree is stable`);
      for (let left = r.size; left > 0; ) {
        if (room() === 0) yield* flush();
        const n = fs.readSync(fd, buf, used, Math.min(room(), left), null);
        if (n === 0) throw new Error(`${src} shrank while being archived; rebuild when the tree is stable`);
        used += n;
        left -= n;
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}

/**
 * Records packed for keeping many of them and sending them to a worker: every name, inline
 * data and unusual source in one byte array, the numbers in one Float64Array, and no object
 * per record. A tree's records as objects take about 650 bytes each on the heap (names, the
 * source's full path, the walk's stamps), and a plan holds every record of the tree until its
 * last segment is compressed; packed they take about 130. A source that is `root/name` (every
 * file of a walk) is not stored at all.
 */
export interface PackedRecords {
  count: number;
  /** The folder that `source`s are relative to: a record's source is usually `${root}/${name}`. */
  root: string;
  /** Per record: its name, then its inline data, then a source that is not `${root}/${name}`. */
  bytes: Uint8Array;
  /** PACKED_FIELDS per record; see packRecords. */
  nums: Float64Array;
}

/**
 * Per record, nums[PACKED_FIELDS * i + k] holds mode, uid, gid, nlink, mtime, ino, devMajor,
 * devMinor, rdevMajor, rdevMinor, size (k = 0..10), then the byte lengths in `bytes` of its
 * name, inline data and own source (-1: none), and what its source is (SOURCE); `bytes` holds
 * those three one after another.
 */
const PACKED_FIELDS = 15;
/** nums[SOURCE] of a record: no source, `${root}/${name}`, or a path of its own in `bytes`. */
const SOURCE = 14;
const NO_SOURCE = 0;
const ROOT_SOURCE = 1;
const OWN_SOURCE = 2;

/** Packs records (see PackedRecords); unpackRecords gives them back field for field. */
export function packRecords(records: readonly NewcRecord[], root: string): PackedRecords {
  const n = records.length;
  const nums = new Float64Array(n * PACKED_FIELDS);
  // Sources that are not root/name, which are stored; and an upper bound of the bytes (a
  // UTF-16 code unit is at most 3 bytes of UTF-8), so that each string is encoded once.
  const own = new Array<string | undefined>(n);
  let bound = 0;
  for (let i = 0; i < n; i++) {
    const r = records[i];
    const src = r.source;
    if (src !== undefined && src !== `${root}/${r.name}`) own[i] = src;
    bound += 3 * r.name.length + (r.data?.length ?? 0) + (own[i] === undefined ? 0 : 3 * src!.length);
  }
  const scratch = Buffer.allocUnsafe(bound);
  let at = 0;
  for (let i = 0, o = 0; i < n; i++, o += PACKED_FIELDS) {
    const r = records[i];
    const nameLen = scratch.write(r.name, at, "utf8");
    at += nameLen;
    if (r.data) {
      scratch.set(r.data, at);
      at += r.data.length;
    }
    const ownLen = own[i] === undefined ? -1 : scratch.write(own[i]!, at, "utf8");
    if (ownLen > 0) at += ownLen;
    nums[o] = r.mode;
    nums[o + 1] = r.uid;
    nums[o + 2] = r.gid;
    nums[o + 3] = r.nlink;
    nums[o + 4] = r.mtime;
    nums[o + 5] = r.ino;
    nums[o + 6] = r.devMajor;
    nums[o + 7] = r.devMinor;
    nums[o + 8] = r.rdevMajor;
    nums[o + 9] = r.rdevMinor;
    nums[o + 10] = r.size;
    nums[o + 11] = nameLen;
    nums[o + 12] = r.data ? r.data.length : -1;
    nums[o + 13] = ownLen;
    nums[o + SOURCE] = r.source === undefined ? NO_SOURCE : own[i] === undefined ? ROOT_SOURCE : OWN_SOURCE;
  }
  // An array of its own, of the exact size: not a slice of Node's shared pool (a worker's
  // copy of the job would take the whole pool) nor of the scratch.
  const bytes = new Uint8Array(at);
  bytes.set(scratch.subarray(0, at));
  return { count: n, root, bytes, nums };
}

/** A pack's newc bytes (as encodedSize counts them, without the trailer) and bytes of content. */
export function packedSize(p: PackedRecords): { bytes: number; content: number } {
  const v = p.nums;
  let bytes = 0;
  let content = 0;
  for (let o = 0; o < v.length; o += PACKED_FIELDS) {
    const head = HEADER_SIZE + v[o + 11] + 1;
    const size = v[o + 10];
    bytes += head + pad4(head) + size + pad4(size);
    content += size;
  }
  return { bytes, content };
}

/**
 * The records of a pack, one object at a time (each is new: a consumer may keep it). Inline
 * data is a view into the pack's bytes.
 */
export function* unpackRecords(p: PackedRecords): Generator<NewcRecord> {
  const b = Buffer.from(p.bytes.buffer, p.bytes.byteOffset, p.bytes.byteLength);
  const v = p.nums;
  let at = 0;
  for (let i = 0, o = 0; i < p.count; i++, o += PACKED_FIELDS) {
    const name = b.toString("utf8", at, (at += v[o + 11]));
    const data = v[o + 12] >= 0 ? b.subarray(at, (at += v[o + 12])) : undefined;
    const own = v[o + 13] >= 0 ? b.toString("utf8", at, (at += v[o + 13])) : undefined;
    const kind = v[o + SOURCE];
    yield {
      name, mode: v[o], uid: v[o + 1], gid: v[o + 2], nlink: v[o + 3], mtime: v[o + 4], ino: v[o + 5],
      devMajor: v[o + 6], devMinor: v[o + 7], rdevMajor: v[o + 8], rdevMinor: v[o + 9], size: v[o + 10],
      source: kind === ROOT_SOURCE ? `${p.root}/${name}` : kind === OWN_SOURCE ? own : undefined,
      data,
    };
  }
}

/** The end of an archive: the one record named TRAILER!!! that the encoder lets through. */
const trailerRecord: NewcRecord = Object.freeze({ name: TRAILER, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0, ino: 0, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: 0 });

function* withTrailer(records: Iterable<NewcRecord>): Generator<NewcRecord> {
  yield* records;
  yield trailerRecord;
}

/** A member as read back: its header, and its content when the reader was asked for it. */
export interface NewcEntry extends Pick<NewcRecord, "name" | "mode" | "uid" | "gid" | "nlink" | "mtime" | "ino" | "size" | "devMajor" | "devMinor" | "rdevMajor" | "rdevMinor"> {
  data?: Buffer;
}

const HEX8 = /^[0-9A-Fa-f]{8}$/;

/**
 * Incremental newc reader: push bytes in any split, get one callback per member once its
 * content has gone by (with the content itself under `content: true`). `done` turns true at
 * the trailer, and `consumed` is then the archive's length (the trailer's padding included);
 * bytes after it are ignored. A header that is not newc (magic, a field that is not 8 hex
 * digits, a name without its NUL) throws, naming its offset.
 */
export class NewcReader {
  done = false;
  /** Bytes of the archive taken so far. */
  consumed = 0;
  private pending: Buffer = Buffer.alloc(0);
  /** The member whose content (then padding) is going by. */
  private body?: { entry: NewcEntry; content: number; pad: number };

  constructor(
    private readonly onEntry: (e: NewcEntry) => void,
    private readonly opts: { content?: boolean } = {},
  ) {}

  push(chunk: Buffer): void {
    while (!this.done && chunk.length > 0) {
      const b = this.body;
      if (b) {
        const n = Math.min(b.content > 0 ? b.content : b.pad, chunk.length);
        if (b.content > 0) {
          b.entry.data?.set(chunk.subarray(0, n), b.entry.size - b.content);
          b.content -= n;
        } else b.pad -= n;
        this.consumed += n;
        chunk = chunk.subarray(n);
        this.complete();
        continue;
      }
      this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
      chunk = Buffer.alloc(0);
      const h = this.pending;
      if (h.length < HEADER_SIZE) break;
      const at = this.consumed;
      if (h.toString("latin1", 0, 6) !== "070701") throw new Error(`newc: bad magic ${JSON.stringify(h.toString("latin1", 0, 6))} at offset ${at}`);
      const field = (i: number) => {
        const text = h.toString("latin1", 6 + 8 * i, 14 + 8 * i);
        if (!HEX8.test(text)) throw new Error(`newc: header field ${i} at offset ${at} is ${JSON.stringify(text)}, not 8 hex digits`);
        return parseInt(text, 16);
      };
      const f = Array.from({ length: 13 }, (_, i) => field(i));
      const nameSize = f[11];
      if (nameSize === 0) throw new Error(`newc: the member at offset ${at} has an empty name (not even its NUL)`);
      const headLen = HEADER_SIZE + nameSize + pad4(HEADER_SIZE + nameSize);
      if (h.length < headLen) break;
      if (h[HEADER_SIZE + nameSize - 1] !== 0) throw new Error(`newc: the name of the member at offset ${at} does not end with NUL`);
      const entry: NewcEntry = {
        ino: f[0], mode: f[1], uid: f[2], gid: f[3], nlink: f[4], mtime: f[5], size: f[6],
        devMajor: f[7], devMinor: f[8], rdevMajor: f[9], rdevMinor: f[10],
        name: h.toString("utf8", HEADER_SIZE, HEADER_SIZE + nameSize - 1),
      };
      if (this.opts.content && entry.name !== TRAILER) entry.data = Buffer.alloc(entry.size);
      this.consumed += headLen;
      this.pending = Buffer.alloc(0);
      chunk = h.subarray(headLen);
      this.body = { entry, content: entry.size, pad: pad4(entry.size) };
      this.complete();
    }
  }

  /** Ends the member whose content and padding have gone by. */
  private complete(): void {
    const b = this.body;
    if (!b || b.content > 0 || b.pad > 0) return;
    this.body = undefined;
    if (b.entry.name === TRAILER) this.done = true;
    else this.onEntry(b.entry);
  }
}
