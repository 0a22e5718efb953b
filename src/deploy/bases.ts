// The local files that may be the host's current image (e.g. the image deployed there last
// time), and the delta from each to the new image: each chunk list and delta worked out once,
// chunk lists from the cache where they are there.
import * as fs from "node:fs";
import { chunkFile, chunkListOf, computeDelta, type ChunkList, type Delta } from "./delta";
import type { Log } from "./ssh-session";

/** A local file that may be the host's current image. */
export interface DeployBase {
  path: string;
  /** Its sha256 (hex), when known; computed (once per chunk cache) otherwise. */
  sha256?: string;
}

export interface Base { path: string; sha256?: string; size: number }

/** The image being deployed. */
export interface LocalImage { file: string; sha256: string; size: number }

export interface BaseDelta { next: ChunkList; delta: Delta }

export class Bases {
  private lists = new Map<Base, Promise<ChunkList>>();
  private deltas = new Map<Base, Promise<BaseDelta>>();
  /** Bases whose delta could not be worked out here (unreadable, not what their sha256 says, nothing shared). */
  private unusable = new Set<Base>();

  private constructor(readonly all: Base[], private image: LocalImage, private cacheDir: string | undefined) {}

  /** The bases that exist (a base that is the new image itself is no use); missing ones are logged. */
  static async find(given: Array<string | DeployBase>, image: LocalImage, cacheDir: string | undefined, log: Log): Promise<Bases> {
    const all: Base[] = [];
    for (const b of given) {
      const c = typeof b === "string" ? { path: b } : b;
      if (c.sha256 === image.sha256) continue;
      const st = await fs.promises.stat(c.path).catch(() => undefined);
      if (st?.isFile()) all.push({ path: c.path, sha256: c.sha256, size: st.size });
      else log(`base ${c.path}: not found, not used`);
    }
    return new Bases(all, image, cacheDir);
  }

  private listOf(b: Base): Promise<ChunkList> {
    let l = this.lists.get(b);
    if (!l) {
      l = chunkListOf(b.path, { sha256: b.sha256, cacheDir: this.cacheDir, verify: true });
      l.catch(() => {});
      this.lists.set(b, l);
    }
    return l;
  }

  /** The delta that builds the new image from `b` (and the new image's chunk list), computed once. */
  deltaFrom(b: Base): Promise<BaseDelta> {
    let d = this.deltas.get(b);
    if (!d) {
      d = this.listOf(b).then(async (base) => {
        const next = await chunkFile(this.image.file, { like: base, likeFile: b.path });
        return { next, delta: computeDelta(base, next) };
      });
      d.catch(() => {});
      this.deltas.set(b, d);
    }
    return d;
  }

  /** The delta from `b`, or undefined (logged) when there is none worth writing; then b is not tried again. */
  async usableDelta(b: Base, log: Log): Promise<BaseDelta | undefined> {
    if (this.unusable.has(b)) return undefined;
    let d: BaseDelta;
    try {
      d = await this.deltaFrom(b);
    } catch (e: any) {
      this.unusable.add(b);
      log(`no delta from ${b.path}: ${e.message}`);
      return undefined;
    }
    if (d.delta.copied === 0) {
      this.unusable.add(b);
      log(`no delta from ${b.path}: the images have no chunk in common`);
      return undefined;
    }
    return d;
  }

  /** The first base that has the sha256 (and size) of the host's image, if any. */
  async matching(sha256: string, size: number | undefined): Promise<Base | undefined> {
    for (const b of this.all) {
      if (b.size !== size) continue;
      const sha = b.sha256 ?? (await this.listOf(b).then((l) => l.sha256, () => undefined));
      if (sha === sha256) return b;
    }
    return undefined;
  }

  /** The base of this size: the one a delta is started from before the host's hash is known. */
  ofSize(size: number): Base | undefined {
    return this.all.find((b) => b.size === size);
  }
}
