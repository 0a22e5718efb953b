// `ramroot store verify` and `ramroot store gc`: the store's artifacts checked against the
// records of their bytes, and the ones no stack references removed.
//
// References come from the stacks' state in the project's file backend (.ramroot/state, as
// scripts/pulumi.sh sets it): every artifact is named by a 64-hex hash (rootfs/<hash>/,
// segments/<key>.cpio.zst, uki/<hash>.efi, release/<uki hash>.cpio, ...), and a stack's
// checkpoint holds the hashes and paths of what its resources made. So an artifact is
// referenced when the hash in its name appears anywhere in a stack's checkpoint (a secret output
// is encrypted there, but each resource's `hash` is not), in a manifest of a referenced
// initramfs (its segments), or in the store's deploy records (deployed/: the images a host holds,
// which later deploys send deltas against). Stacks of every project in the backend count.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { gunzipSync } from "node:zlib";
import { inspectInitramfs } from "./image/initramfs";
import { removeTree, Store, TEMPORARY, type Verdict } from "./store";

const HASH = /[0-9a-f]{64}/g;

export interface StackState {
  /** project/stack */
  name: string;
  file: string;
  hashes: Set<string>;
}

/** Every file under `root` with its folder path from `root` ("a/b/"); a missing root holds none. */
function filesUnder(root: string, prefix = ""): Array<{ abs: string; name: string; prefix: string }> {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(root, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.flatMap((e) => {
    const abs = path.join(root, e.name);
    return e.isDirectory() ? filesUnder(abs, `${prefix}${e.name}/`) : [{ abs, name: e.name, prefix }];
  });
}

/** The stacks' checkpoints in a file backend folder (.ramroot/state), newest format and legacy. */
export function readStacks(stateDir: string): StackState[] {
  const out: StackState[] = [];
  for (const { abs, name, prefix } of filesUnder(path.join(stateDir, ".pulumi", "stacks"))) {
    if (!/\.json(\.gz)?$/.test(name)) continue;
    const raw = fs.readFileSync(abs);
    const text = (name.endsWith(".gz") ? gunzipSync(raw) : raw).toString("utf8");
    let latest: any;
    try {
      latest = JSON.parse(text)?.checkpoint?.latest;
    } catch {
      throw new Error(`cannot read the stack checkpoint ${abs}: nothing is removed while a stack's references are unknown`);
    }
    // A checkpoint, not some other JSON. A stack that was never updated has no latest.
    if (latest === undefined && !/"checkpoint"\s*:/.test(text)) continue;
    // What each resource holds now: its inputs and outputs. Not its id, which an update
    // keeps (a resource's id is the hash it was first created with).
    const hashes = new Set<string>();
    for (const r of [...(latest?.resources ?? []), ...(latest?.pending_operations ?? []).map((o: any) => o.resource ?? {})])
      for (const h of JSON.stringify([r.inputs ?? null, r.outputs ?? null]).match(HASH) ?? []) hashes.add(h);
    out.push({ name: `${prefix}${name.replace(/\.json(\.gz)?$/, "")}`, file: abs, hashes });
  }
  return out;
}

/** Stacks being updated right now: a lock of this machine whose pulumi still runs, or another machine's. */
export function lockedStacks(stateDir: string): string[] {
  const out: string[] = [];
  for (const { abs, name, prefix } of filesUnder(path.join(stateDir, ".pulumi", "locks"))) {
    if (!name.endsWith(".json")) continue;
    try {
      const lock = JSON.parse(fs.readFileSync(abs, "utf8"));
      const here = lock.hostname === os.hostname();
      let running = !here;
      if (here && Number(lock.pid) > 0) running = fs.existsSync(`/proc/${lock.pid}`);
      if (running) out.push(`${prefix.replace(/\/$/, "")} (pulumi pid ${lock.pid} on ${lock.hostname})`);
    } catch {
      // not a lock
    }
  }
  return out;
}

/** The hash an artifact is named by (the first 64 hex digits of its name). */
export const hashOf = (rel: string) => /[0-9a-f]{64}/.exec(path.posix.basename(rel))?.[0];

/** Everything the stacks and the store's own records reference, as hashes. */
export function references(store: Store, stacks: StackState[]): Set<string> {
  const refs = new Set<string>();
  for (const s of stacks) for (const h of s.hashes) refs.add(h);
  // Deploy records: the images the hosts hold (delta bases).
  const deployed = store.path("deployed");
  for (const f of safeReaddir(deployed)) {
    try {
      for (const h of fs.readFileSync(path.join(deployed, f), "utf8").match(HASH) ?? []) refs.add(h);
    } catch {
      // unreadable: references nothing
    }
  }
  // Manifests of referenced initramfs images name their segments.
  for (const f of safeReaddir(store.path("initramfs"))) {
    const h = hashOf(f);
    if (!h || !refs.has(h) || TEMPORARY.test(f)) continue;
    try {
      const m = JSON.parse(fs.readFileSync(store.path(`initramfs/${f}`), "utf8"));
      for (const s of m.segments ?? []) if (typeof s.key === "string") refs.add(s.key);
    } catch {
      // a damaged manifest: verify reports it
    }
  }
  return refs;
}

function safeReaddir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

/** Bytes under a path (a file, or a folder's files). */
function sizeOf(p: string): number {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return 0;
  }
  if (!st.isDirectory()) return st.size;
  return fs.readdirSync(p).reduce((t, n) => t + sizeOf(path.join(p, n)), 0);
}

export interface GcPlan {
  stacks: StackState[];
  /** Artifacts no stack references, with their bytes. */
  unreferenced: Array<{ rel: string; bytes: number }>;
  /** Temporaries whose process is gone. */
  dead: Array<{ path: string; pid: number; bytes: number }>;
  kept: number;
}

export async function planGc(store: Store, stateDir: string): Promise<GcPlan> {
  const stacks = readStacks(stateDir);
  const refs = references(store, stacks);
  const unreferenced: GcPlan["unreferenced"] = [];
  let kept = 0;
  for (const rel of await store.artifacts()) {
    // tools/ and builders/ are pinned downloads, kept for offline builds; named by their sha256.
    if (/^(tools|builders)\//.test(rel)) {
      kept++;
      continue;
    }
    const h = hashOf(rel);
    if (h && refs.has(h)) kept++;
    else unreferenced.push({ rel, bytes: sizeOf(store.path(rel)) });
  }
  const dead = (await store.deadTemporaries()).map((d) => ({ ...d, bytes: sizeOf(d.path) }));
  return { stacks, unreferenced, dead, kept };
}

/** Removes what planGc found: each artifact with its record and its cached check. */
export async function runGc(store: Store, plan: GcPlan): Promise<void> {
  for (const u of plan.unreferenced) {
    await store.discard(u.rel);
    fs.rmSync(store.path(`sums/${u.rel}.json`), { force: true });
  }
  for (const d of plan.dead) await removeTree(d.path);
  // Records of artifacts that are gone (a crash between a record and its rename, or gc).
  const sums = store.path("sums");
  for (const kind of safeReaddir(sums)) {
    for (const f of safeReaddir(path.join(sums, kind))) {
      const rel = `${kind}/${f.replace(/\.json$/, "")}`;
      if (f.endsWith(".json") && !fs.existsSync(store.path(rel))) fs.rmSync(path.join(sums, kind, f), { force: true });
    }
  }
  // The UKI's sha256 cache of earlier releases: the records replace it.
  fs.rmSync(store.path("cache/uki-sha256"), { recursive: true, force: true });
  await store.journal({ event: "gc", removed: plan.unreferenced.map((u) => u.rel), temporaries: plan.dead.map((d) => store.relOf(d.path)) });
}

export interface VerifyResult {
  rel: string;
  verdict: Verdict;
}

/** Every artifact checked against its record (deep: every byte read; zstd/gzip segments decompressed too). */
export async function verifyStore(store: Store, opts: { deep: boolean; onResult?: (r: VerifyResult) => void }): Promise<VerifyResult[]> {
  const results: VerifyResult[] = [];
  for (const rel of await store.artifacts()) {
    let verdict = await store.check(rel, { deep: opts.deep });
    if (verdict.ok && opts.deep && /\.cpio\.(zst|gz)$/.test(rel)) {
      const problem = await decompressProblem(store.path(rel));
      if (problem) verdict = { ok: false, missing: false, problems: [problem] };
    }
    const r = { rel, verdict };
    results.push(r);
    opts.onResult?.(r);
  }
  // Artifacts whose record is there and which are not: deleted. (A listing only saves a walk,
  // a tree's .setup.json only a run of setup.sh: without them the next build does that work.)
  const sums = store.path("sums");
  for (const kind of safeReaddir(sums).sort()) {
    for (const f of safeReaddir(path.join(sums, kind)).sort()) {
      const rel = `${kind}/${f.replace(/\.json$/, "")}`;
      if (!f.endsWith(".json") || rel.endsWith(".listing") || rel.endsWith(".setup.json") || TEMPORARY.test(f) || fs.existsSync(store.path(rel))) continue;
      const r = { rel, verdict: { ok: false, missing: true, problems: [`${store.path(rel)} is missing, and its record is there (\`pulumi up\` makes it again when a stack uses it; \`ramroot store gc\` forgets it)`] } };
      results.push(r);
      opts.onResult?.(r);
    }
  }
  return results;
}

/** Decompresses a segment (zstd frames carry a checksum, gzip members a CRC-32): what is wrong, or undefined. */
export async function decompressProblem(file: string): Promise<string | undefined> {
  try {
    await inspectInitramfs(file);
    return undefined;
  } catch (e: any) {
    return String(e.message).replace(/^initramfs: /, "");
  }
}
