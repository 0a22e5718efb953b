// Secrets: the layer of files made from encrypted stack config (src/image/secrets.ts says what is and
// is not protected). The values arrive as secret inputs, so the engine keeps them encrypted in
// the state; the layer's hash is an HMAC under a per-store key, so it reveals nothing.
import * as pulumi from "@pulumi/pulumi";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { resourceClass } from "./resource";
import { artifactHandlers, isKnown, type BuildContext } from "./artifact";
import { hmacKey, parseSecrets, SALT_MIN, saltCommand, secretsDigest, writeSecretsLayer } from "../src/image/secrets";

export interface SecretsArgs {
  /** The declared system folder (its `secrets` file lists the files), absolute or relative to the project. */
  system: pulumi.Input<string>;
  rootfs: pulumi.Input<string>;
  rootfsHash: pulumi.Input<string>;
  compression?: pulumi.Input<string>;
  /** Config key -> value; pass pulumi secrets. */
  values: pulumi.Input<Record<string, pulumi.Input<string>>>;
  /** The stack's random salt (ramroot:secretsSalt, a pulumi secret), written into the layer. */
  salt: pulumi.Input<string>;
}

type Inputs = pulumi.Unwrap<SecretsArgs>;

const EXT: Record<string, string> = { zstd: "zst", gzip: "gz", none: "raw" };

async function declarations(system: string, ctx: BuildContext) {
  const file = path.resolve(ctx.projectDir, system, "secrets");
  return { file, text: await fs.readFile(file, "utf8").catch(() => "") };
}

interface Outputs { path: string }

/** This layer's format, its one version knob: every hash of it starts with it (see artifact.ts). */
const FORMAT = "secrets/2";

export const handlers = artifactHandlers<Inputs, Outputs>({
  kind: "secrets",
  format: FORMAT,
  hashKeys: ["system", "rootfsHash", "compression", "values", "salt"],
  async validate(i, fail, ctx) {
    if (isKnown(i.salt) && !(typeof i.salt === "string" && i.salt.length >= SALT_MIN))
      fail("salt", `ramroot:secretsSalt must be a random string of at least ${SALT_MIN} characters: ${saltCommand("STACK")}`);
    if (!isKnown(i.system) || !isKnown(i.values)) return;
    const { file, text } = await declarations(i.system, ctx);
    let decls;
    try {
      decls = parseSecrets(text, path.relative(ctx.projectDir, file));
    } catch (e: any) {
      return fail("system", e.message);
    }
    for (const d of decls)
      if (typeof i.values[d.key] !== "string") fail("values", `${path.relative(ctx.projectDir, file)}:${d.line} declares ramroot:${d.key}, which is not set: pulumi config set --secret ramroot:${d.key} VALUE`);
  },
  async hash(i, ctx) {
    const { text } = await declarations(i.system, ctx);
    const key = await hmacKey(ctx.store.root);
    return secretsDigest(key, [FORMAT, text, i.rootfsHash, i.compression ?? "zstd", Object.entries(i.values).sort(), i.salt]);
  },
  async build(i, ctx) {
    const { file, text } = await declarations(i.system, ctx);
    const decls = parseSecrets(text, path.relative(ctx.projectDir, file));
    const compression = (i.compression ?? "zstd") as "zstd" | "gzip" | "none";
    const res = await ctx.store.put(`secrets/${i.hash}.cpio.${EXT[compression]}`, (tmp) => writeSecretsLayer({ decls, values: i.values, salt: i.salt, rootfs: i.rootfs, compression, out: tmp, declFile: path.relative(ctx.projectDir, file) }), { mode: 0o600 });
    // Names and counts only: never a value.
    ctx.log(`${res.built ? "wrote" : "reused"} the secrets layer: ${decls.length} declared (${decls.map((d) => (d.kind === "file" ? d.path : `password of ${d.user}`)).join(", ")})`);
    return { path: res.path };
  },
  artifacts: (p) => [p.path],
});

export const Secrets = resourceClass<SecretsArgs, Outputs>("secrets", "Secrets", { path: true }, { secretInputs: ["values", "salt"] });
export type Secrets = InstanceType<typeof Secrets>;
