// The one dynamic provider all ramroot resources share, parameterised by kind.
//
// Pulumi stores a dynamic provider's text in every resource's state; refresh and delete later
// run the stored text, not the program's current code. So that text is kept to a few lines
// that know only a string, and at run time load the current compiled handlers of that kind
// from the project (it is written directly, not found by Pulumi's closure serialiser: see
// fastSerialization). Old state then never runs old code, and nothing unserialisable (npm
// packages, native handles) is ever captured.
import type * as pulumi from "@pulumi/pulumi";

/** What each components/<kind>.ts exports as `handlers`: plain functions, testable without Pulumi. */
export interface Handlers {
  check(olds: Record<string, any>, news: Record<string, any>): Promise<pulumi.dynamic.CheckResult>;
  diff(id: string, olds: Record<string, any>, news: Record<string, any>): Promise<pulumi.dynamic.DiffResult>;
  create(inputs: Record<string, any>): Promise<pulumi.dynamic.CreateResult>;
  update(id: string, olds: Record<string, any>, news: Record<string, any>): Promise<pulumi.dynamic.UpdateResult>;
  read?(id: string, props: Record<string, any>): Promise<pulumi.dynamic.ReadResult>;
  delete?(id: string, props: Record<string, any>): Promise<void>;
}

/**
 * The provider of one kind. Self-contained (it captures nothing but its argument): its own
 * source text is what Pulumi stores as `__provider` (providerText), so it may use only Node's
 * builtins.
 */
function providerOf(kind: string): pulumi.dynamic.ResourceProvider {
  const load = (): Handlers => {
    // The plugin runs in the program's folder (dist/); the project is where Pulumi.yaml is.
    const path = require("path"), fs = require("fs");
    let dir = process.cwd();
    while (!fs.existsSync(path.join(dir, "Pulumi.yaml")) && path.dirname(dir) !== dir) dir = path.dirname(dir);
    const file = path.join(dir, "dist", "components", kind + ".js");
    try {
      return require(file).handlers;
    } catch (e: any) {
      if (e && e.code === "MODULE_NOT_FOUND" && String(e.message).includes(file))
        throw new Error(`ramroot: ${file} is missing: run \`npm run build\` in the project folder (${dir})`);
      throw e;
    }
  };
  return {
    check: (olds, news) => load().check(olds, news),
    diff: (id, olds, news) => load().diff(id, olds, news),
    create: (inputs) => load().create(inputs),
    update: (id, olds, news) => load().update(id, olds, news),
    read: async (id, props) => {
      const h = load();
      return h.read ? h.read(id, props) : { id, props };
    },
    delete: async (id, props) => {
      const h = load();
      if (h.delete) await h.delete(id, props);
    },
  };
}

/**
 * The `__provider` text of a kind: a module whose `handler()` returns providerOf(kind), as the
 * dynamic-provider plugin loads it (require-from-string, then `.handler()`).
 */
export function providerText(kind: string): string {
  return `exports.handler = () => (${providerOf.toString()})(${JSON.stringify(kind)});\n`;
}

const KIND = Symbol.for("ramroot.providerKind");

export function dynamicProvider(kind: string): pulumi.dynamic.ResourceProvider {
  fastSerialization();
  return Object.assign(providerOf(kind), { [KIND]: kind });
}

/**
 * Pulumi serialises a dynamic provider by inspecting its closure (runtime/closure), which costs
 * the program 0.3-0.4 s for the first resource and 20-40 ms for each next one, on every preview
 * and on both passes of `up`, before the resource can even be registered (the engine starts the
 * provider plugin only then). Ours is a known function of a string, so its text is written
 * directly (providerText). Any other function still goes to Pulumi's serialiser: only the
 * SDK's own wrapper around a provider of ours (`() => provider`) is recognised, by its source.
 */
function fastSerialization(): void {
  let sc: any;
  try {
    sc = require("@pulumi/pulumi/runtime/closure/serializeClosure");
  } catch {
    return;
  }
  if (sc.serializeFunction?.[KIND]) return;
  const real = sc.serializeFunction;
  const fast = function (this: unknown, func: any, args?: any) {
    if (typeof func === "function" && func.length === 0 && String(func) === "() => provider") {
      const kind = func()?.[KIND];
      if (typeof kind === "string") return Promise.resolve({ text: providerText(kind), exportName: "handler", containsSecrets: false });
    }
    return real.call(this, func, args);
  };
  (fast as any)[KIND] = true;
  sc.serializeFunction = fast;
}
