// The one dynamic provider all ramroot resources share, parameterised by kind.
//
// Pulumi serialises a dynamic provider by capturing its closure, and stores that text in every
// resource's state; refresh and delete later run the stored text (shared/notes/pulumi.md).
// So the serialised part is kept to a few lines that capture only a string, and at run time
// load the current compiled handlers of that kind from the project. Old state then never runs old code, and nothing unserialisable (npm
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

export function dynamicProvider(kind: string): pulumi.dynamic.ResourceProvider {
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
