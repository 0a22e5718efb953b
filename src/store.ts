// The content-addressed store shared by every stack of a project (.ramroot/store by default).
//
// Artifacts are named by the hash of what produced them, so a second stack that asks for the
// same thing finds it already built: this is how production deploys the very bytes that qemu
// booted. Every artifact is written under a temporary name and renamed into place, so a name
// that exists is always complete. Artifacts are never deleted by a resource: two stacks may
// hold the same one (pulumi.md rule 10); `ramroot gc` is the place for pruning.
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";

export class Store {
  constructor(readonly root: string) {}

  /** The store of the project in `projectDir`, or RAMROOT_STORE when set. */
  static forProject(projectDir: string): Store {
    return new Store(path.resolve(process.env.RAMROOT_STORE || path.join(projectDir, ".ramroot", "store")));
  }

  path(rel: string): string {
    if (path.isAbsolute(rel) || rel.split(/[\\/]/).includes("..")) throw new Error(`store: bad artifact name ${rel}`);
    return path.join(this.root, rel);
  }

  async has(rel: string): Promise<boolean> {
    return fs.access(this.path(rel)).then(() => true, () => false);
  }

  /**
   * Produces the artifact `rel` unless it exists. `write` receives a temporary path (a file or,
   * with `dir`, an empty folder) beside the final one; on success it is renamed into place, on
   * failure removed. Returns whether this call built it.
   */
  async put(rel: string, write: (tmp: string) => Promise<void>, opts: { dir?: boolean; mode?: number } = {}): Promise<{ path: string; built: boolean }> {
    const final = this.path(rel);
    if (await this.has(rel)) return { path: final, built: false };
    await fs.mkdir(path.dirname(final), { recursive: true, mode: 0o700 });
    const tmp = `${final}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
    try {
      if (opts.dir) await fs.mkdir(tmp, { mode: opts.mode ?? 0o755 });
      await write(tmp);
      if (!opts.dir) {
        if (opts.mode !== undefined) await fs.chmod(tmp, opts.mode);
        const fh = await fs.open(tmp, "r");
        await fh.sync().finally(() => fh.close());
      }
      try {
        await fs.rename(tmp, final);
      } catch (e: any) {
        // Another process finished the same artifact first: identical by construction.
        if (!(opts.dir && (e.code === "ENOTEMPTY" || e.code === "EEXIST"))) throw e;
        await removeTree(tmp);
        return { path: final, built: false };
      }
    } catch (e) {
      await removeTree(tmp);
      throw e;
    }
    await this.journal({ event: "built", artifact: rel });
    return { path: final, built: true };
  }

  /** Small JSON records (boot results, build metadata), replaced atomically. */
  async writeRecord(rel: string, value: unknown): Promise<void> {
    await writeFileAtomic(this.path(rel), JSON.stringify(value, null, 2) + "\n");
  }

  async readRecord<T>(rel: string): Promise<T | undefined> {
    try {
      return JSON.parse(await fs.readFile(this.path(rel), "utf8")) as T;
    } catch (e: any) {
      if (e.code === "ENOENT") return undefined;
      throw e;
    }
  }

  /** An append-only log of what was built, for people ("why did this rebuild?") and tests. */
  async journal(entry: Record<string, unknown>): Promise<void> {
    await fs.mkdir(this.root, { recursive: true });
    await fs.appendFile(path.join(this.root, "journal.jsonl"), JSON.stringify({ time: new Date().toISOString(), pid: process.pid, ...entry }) + "\n");
  }

  async readJournal(): Promise<Array<Record<string, any>>> {
    const text = await fs.readFile(path.join(this.root, "journal.jsonl"), "utf8").catch(() => "");
    return text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  }
}

export async function removeTree(p: string): Promise<void> {
  await fs.rm(p, { recursive: true, force: true }).catch(async () => {
    // Trees copied from a rootfs can hold read-only folders: make them writable, then retry.
    await chmodTree(p);
    await fs.rm(p, { recursive: true, force: true });
  });
}

async function chmodTree(p: string): Promise<void> {
  const st = await fs.lstat(p).catch(() => undefined);
  if (!st?.isDirectory()) return;
  await fs.chmod(p, 0o700);
  for (const e of await fs.readdir(p)) await chmodTree(path.join(p, e));
}

/**
 * Writes a small file (a record, a cache entry) under a temporary name beside it, then renames
 * it into place: a reader sees the old file or the whole new one, never a part. Makes the folder.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  try {
    await fs.writeFile(tmp, data);
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest("hex");
}

export function sha256(data: string | Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}
