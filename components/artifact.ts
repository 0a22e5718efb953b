// The shape every ramroot resource shares: a build step whose result is named by a hash of its
// inputs. The hash is computed in check(), which runs during preview, so `pulumi preview` shows
// the hash before and after for exactly the layers that change; diff is keyed on it; create and
// update are the same idempotent build (an update may meet its result already in the store); a
// change of the layer's format alone is an update, not a replacement (a replacement would delete
// first); delete leaves the store alone because another stack may hold the same artifact.
import type * as pulumi from "@pulumi/pulumi";
import type { Handlers } from "./adapter";
import * as fs from "node:fs";
import * as path from "node:path";
import { ARTIFACT_KINDS, Store, summary } from "../src/store";
import { endWithEngine } from "./watchdog";

/** The engine's placeholder for a value not known during preview. Never hash it. */
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

export function isKnown(v: unknown): boolean {
  if (v === UNKNOWN) return false;
  if (Array.isArray(v)) return v.every(isKnown);
  if (v && typeof v === "object") return Object.values(v).every(isKnown);
  return true;
}

/** A clear, preview-time input error: the engine shows `reason` next to the property. */
export class InputError extends Error {
  constructor(readonly property: string, reason: string) {
    super(reason);
  }
}

export interface ArtifactSpec<I extends Record<string, any>, O extends Record<string, any>> {
  kind: string;
  /**
   * The layer's format, `KIND/N`: its one version knob. Every hash of the layer starts with it,
   * and the state records it (providerVersion), so a new N makes new artifacts and updates the
   * resource (never a replacement, which would delete first). Bump it when what the layer makes,
   * or the outputs it reports, change for the same inputs.
   */
  format: string;
  /**
   * Reports bad input: each problem through `fail`, so that preview names every one at once
   * (throwing an InputError reports that one and stops). Runs in every check, also in preview
   * where inputs that come from other resources may still be unknown: test each with isKnown
   * before using it.
   */
  validate?(inputs: I, fail: (property: string, reason: string) => void, ctx: BuildContext): Promise<void>;
  /** The inputs the hash depends on: it is computed in check as soon as these are known. */
  hashKeys: Array<keyof I & string>;
  /** The content hash of what create would build. */
  hash(inputs: I, ctx: BuildContext): Promise<string | undefined>;
  /** Further values known as soon as the hash is (so preview shows them), added to the inputs. */
  derived?: { keys: string[]; compute(inputs: I & { hash: string }, ctx: BuildContext): Promise<Record<string, unknown>> };
  /** Builds (or finds in the store) the artifact named by inputs.hash. */
  build(inputs: I & { hash: string }, ctx: BuildContext): Promise<O>;
  /** After a refresh: whether what exists differs from what was built (drift), so up redoes it. */
  drifted?(olds: I & O & { hash: string }, ctx: BuildContext): boolean;
  /** Refresh: the outputs as they are now (e.g. read back from a host), or undefined when gone. */
  read?(props: I & O & { hash: string }, ctx: BuildContext): Promise<Partial<O> | undefined>;
  /**
   * The store artifacts that are this resource's result (absolute paths; `optional`: only when
   * present, e.g. a tree's listing, which only saves a walk). diff compares each with the record
   * of its bytes, so a missing or damaged one makes the resource change, in preview already.
   */
  artifacts?(props: I & O & { hash: string }, store: Store): Array<string | { path: string; optional: true }>;
  /** A line for delete: what stays where it is, and why. */
  onDelete?(props: I & O, ctx: BuildContext): Promise<void>;
}

export interface BuildContext {
  store: Store;
  projectDir: string;
  log(line: string): void;
}

/** The project folder: where Pulumi.yaml is, at or above the working folder (dist/ when run by the engine). */
export function projectDir(from = process.cwd()): string {
  for (let dir = path.resolve(from); ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, "Pulumi.yaml"))) return dir;
    if (path.dirname(dir) === dir) return path.resolve(from);
  }
}

export function context(name: string): BuildContext {
  const projectDir_ = projectDir();
  // Console lines are what reaches the CLI from inside a dynamic provider (it has no log API).
  const log = (line: string) => console.log(`[${name}] ${line}`);
  const store = Store.forProject(projectDir_);
  store.log = log;
  return { store, projectDir: projectDir_, log };
}

/** The store artifacts among a resource's input values (paths, lists of paths). */
function inputArtifacts(store: Store, inputs: Record<string, any>): string[] {
  const out: string[] = [];
  for (const v of Object.values(inputs)) {
    for (const x of Array.isArray(v) ? v : [v]) {
      const rel = typeof x === "string" ? store.relOf(x) : undefined;
      if (rel && (ARTIFACT_KINDS as readonly string[]).includes(rel.split("/")[0])) out.push(rel);
    }
  }
  return out;
}

/**
 * What is wrong with the artifacts a resource made (its `artifacts`), one line each; empty when
 * every one is there and matches its record.
 */
export async function damaged(spec: Pick<ArtifactSpec<any, any>, "artifacts">, props: Record<string, any>, store: Store, inputs: Record<string, any> = {}): Promise<string[]> {
  const out: string[] = [];
  // Without a list of its own: the store artifacts among the resource's outputs.
  const outputs = Object.fromEntries(Object.entries(props).filter(([k]) => !(k in inputs)));
  for (const a of spec.artifacts?.(props as any, store) ?? inputArtifacts(store, outputs).map((rel) => store.path(rel))) {
    const p = typeof a === "string" ? a : a.path;
    const rel = typeof p === "string" ? store.relOf(p) : undefined;
    if (!rel) continue;
    const v = await store.check(rel);
    if (v.ok || (v.missing && typeof a !== "string")) continue;
    out.push(v.missing ? `${p} is missing` : summary(v.problems));
  }
  return out;
}

/**
 * With RAMROOT_TIMING=<file>, every handler call appends {kind, op, ms} as a JSON line: how the
 * benchmark separates the provider's own work from the engine's.
 */
function timed<A extends unknown[], R>(kind: string, op: string, fn: (...a: A) => Promise<R>): (...a: A) => Promise<R> {
  const file = process.env.RAMROOT_TIMING;
  if (!file) return fn;
  return async (...a: A) => {
    const t0 = performance.now();
    try {
      return await fn(...a);
    } finally {
      fs.appendFileSync(file, JSON.stringify({ kind, op, ms: performance.now() - t0, pid: process.pid }) + "\n");
    }
  };
}

/** The engine's property struct has no `undefined`: leave such keys out (use null for "none"). */
function defined(o: Record<string, any>): Record<string, any> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}

export function artifactHandlers<I extends Record<string, any>, O extends Record<string, any>>(spec: ArtifactSpec<I, O>): Handlers {
  if (!new RegExp(`^${spec.kind}/[0-9]+$`).test(spec.format)) throw new Error(`${spec.kind}: format ${spec.format} is not ${spec.kind}/N`);
  endWithEngine();
  const handlers = untimedHandlers(spec);
  const t = <K extends keyof Handlers>(op: K) => handlers[op] && timed(spec.kind, op, handlers[op] as any);
  return { check: t("check")!, diff: t("diff")!, create: t("create")!, update: t("update")!, read: t("read"), delete: t("delete") } as Handlers;
}

function untimedHandlers<I extends Record<string, any>, O extends Record<string, any>>(spec: ArtifactSpec<I, O>): Handlers {
  const name = (inputs: Record<string, any>) => `${spec.kind}${inputs.name ? " " + inputs.name : ""}`;
  const build = async (inputs: Record<string, any>) => {
    const ctx = context(name(inputs));
    if (!inputs.hash || inputs.hash === UNKNOWN) {
      const hash = await spec.hash(inputs as I, ctx);
      if (!hash) throw new Error(`${spec.kind}: inputs still unknown at build time`);
      inputs = { ...inputs, hash, ...(await spec.derived?.compute({ ...inputs, hash } as I & { hash: string }, ctx)) };
    }
    // Nothing is built from an artifact that is not the bytes its record says (a damaged one is
    // made again by the resource that made it: its diff says so, in preview already).
    // (Once per operation: what this process made or checked moments ago is not looked at again.)
    for (const rel of inputArtifacts(ctx.store, inputs)) {
      const v = await ctx.store.check(rel, { once: true });
      if (!v.ok) throw new Error(`${spec.kind}: not built from ${rel}: ${summary(v.problems)}. Run \`pulumi up\` again: the resource that makes it makes it again`);
    }
    const outs = await spec.build(inputs as I & { hash: string }, ctx);
    return defined({ ...inputs, ...outs });
  };
  return {
    async check(_olds, news) {
      const inputs: Record<string, any> = { ...news, providerVersion: spec.format };
      delete inputs.hash;
      for (const k of spec.derived?.keys ?? []) delete inputs[k];
      const ctx = context(name(inputs));
      const failures: Array<{ property: string; reason: string }> = [];
      try {
        await spec.validate?.(inputs as I, (property, reason) => failures.push({ property, reason }), ctx);
      } catch (e: any) {
        if (!(e instanceof InputError)) throw e;
        failures.push({ property: e.property, reason: e.message });
      }
      if (failures.length > 0) return { inputs, failures };
      try {
        if (spec.hashKeys.every((k) => isKnown(inputs[k]))) {
          const hash = await spec.hash(inputs as I, ctx);
          if (hash) Object.assign(inputs, { hash }, await spec.derived?.compute({ ...inputs, hash } as I & { hash: string }, ctx));
        }
      } catch (e: any) {
        if (e instanceof InputError) return { inputs, failures: [{ property: e.property, reason: e.message }] };
        throw e;
      }
      return { inputs };
    },
    async diff(_id, olds, news) {
      const ctx = context(name(olds));
      const changed = news.hash === undefined || news.hash === UNKNOWN || olds.hash !== news.hash || olds.providerVersion !== news.providerVersion || !!spec.drifted?.(olds as any, ctx);
      // An input outside the hash (a path, a timeout) still updates the resource when it changes.
      const other = Object.keys(news).some((k) => k !== "__provider" && JSON.stringify(olds[k]) !== JSON.stringify(news[k]));
      if (changed || other) return { changes: true };
      // Unchanged inputs, but what was made is gone or damaged in the store: made again.
      const bad = await damaged(spec, olds, ctx.store, news);
      for (const line of bad) ctx.log(`${line}: \`pulumi up\` makes it again`);
      return { changes: bad.length > 0 };
    },
    async create(inputs) {
      const outs = await build(inputs);
      return { id: outs.hash, outs };
    },
    async update(_id, _olds, news) {
      return { outs: await build(news) };
    },
    async read(id, props) {
      if (!spec.read) return { id, props };
      const now = await spec.read(props as any, context(name(props)));
      // Gone: an empty id tells the engine the resource no longer exists.
      if (!now) return { id: "", props: {} };
      return { id, props: defined({ ...props, ...now }) };
    },
    async delete(_id, props) {
      await spec.onDelete?.(props as any, context(name(props)));
    },
  };
}
