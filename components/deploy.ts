// BootMedia of the ssh kind: the production stick. Replaces EFI/BOOT/BOOTAA64.EFI on the host
// over SSH, atomically, verified by hash, keeping the previous image as .prev (src/deploy.ts).
// Refresh reads the hash of the file actually on the stick, so a hand-made change shows up as
// drift and the next up puts the stack's image back. Deleting never removes the boot image.
// The gate: production refuses a build that never passed the qemu stack's boot check in this
// store, unless the stack says otherwise (ramroot:allowUntested).
// Deltas: the store remembers which images were deployed to each target (deployed/<hash>.json,
// newest first); they are offered to deployImage as bases, so when the host still holds one of
// them only the bytes the new image does not share with it are sent. Chunk lists are kept in
// the store's cache/chunks.
import * as path from "node:path";
import { artifactHandlers, context, InputError, isKnown } from "./artifact";
import { sha256 } from "../src/store";
import { DEFAULT_PATH, deployImage, parseHostKeys, remoteState, runOnHost, waitForBuild, type SshTarget } from "../src/deploy";

interface Inputs {
  kind: string;
  host: string;
  port?: number;
  user?: string;
  privateKey: string;
  hostKey: string;
  path?: string;
  uki: string;
  ukiSha256: string;
  buildId: string;
  allowUntested?: boolean;
  /** Run on the host, in order, after an image was replaced (not when nothing changed). */
  afterDeploy?: string[];
  /** After afterDeploy (a reboot), wait this long for the host to report the new build id. */
  waitSeconds?: number;
}

/** null: no such file on the host. */
interface Outputs { remoteSha256: string | null; previousSha256: string | null; bytesSent: number }

/** The images deployed to one target, newest first (the host's image, then what it replaced). */
interface Deployed { images: Array<{ sha256: string; path: string }> }
const deployedRecord = (i: Inputs) => `deployed/${sha256(JSON.stringify([i.host, i.port ?? 22, i.user ?? "root", i.path ?? DEFAULT_PATH]))}.json`;

const target = (i: Inputs): SshTarget => ({ host: i.host, port: i.port, user: i.user, privateKey: i.privateKey, hostKey: i.hostKey, path: i.path });
const where = (i: Inputs) => `${i.user ?? "root"}@${i.host}:${i.port ?? 22}:${i.path ?? DEFAULT_PATH}`;

export const handlers = artifactHandlers<Inputs, Outputs>({
  kind: "deploy",
  version: 1,
  hashKeys: ["host", "port", "user", "path", "ukiSha256"],
  async validate(i) {
    const need = (v: unknown, key: string, fix: string) => {
      if (isKnown(v) && (v === undefined || v === "")) throw new InputError(key, `ramroot:${key} is not set: ${fix}`);
    };
    need(i.host, "host", "pulumi config set ramroot:host NAS-ADDRESS --stack production");
    need(i.hostKey, "hostKey", `pin the host's key: ssh-keyscan -t ed25519 ${i.host || "HOST"}, then pulumi config set ramroot:hostKey "ssh-ed25519 AAAA..." --stack production`);
    need(i.privateKey, "sshPrivateKey", "pulumi config set --secret ramroot:sshPrivateKey \"$(cat ~/.ssh/id_ed25519)\" --stack production");
    if (isKnown(i.hostKey) && i.hostKey) {
      try {
        parseHostKeys(i.hostKey);
      } catch (e: any) {
        throw new InputError("hostKey", `ramroot:hostKey: ${e.message}`);
      }
    }
    if (isKnown(i.path) && i.path !== undefined && !path.posix.isAbsolute(i.path)) throw new InputError("path", `ramroot:bootPath ${i.path} is not absolute (default ${DEFAULT_PATH})`);
    if (isKnown(i.buildId) && isKnown(i.allowUntested) && !i.allowUntested) {
      const booted = await context("deploy").store.readRecord(`booted-build/${i.buildId}.json`);
      if (!booted)
        throw new InputError("buildId", `build ${i.buildId} never passed the qemu stack's boot check in this store: run \`npm run up\` (the qemu stack) first, or set ramroot:allowUntested true on this stack to deploy it anyway`);
    }
  },
  async hash(i) {
    return sha256(JSON.stringify(["deploy/1", i.host, i.port ?? 22, i.user ?? "root", i.path ?? DEFAULT_PATH, i.ukiSha256]));
  },
  drifted: (olds) => olds.remoteSha256 !== olds.ukiSha256,
  async build(i, ctx) {
    const record = deployedRecord(i);
    // The UKI was checked against the record of its bytes (artifact.ts); that record must be
    // the image this stack deploys, or nothing is sent.
    const rel = ctx.store.relOf(i.uki);
    const rec = rel ? await ctx.store.record(rel) : undefined;
    if (rel && (rec?.type !== "file" || rec.sha256 !== i.ukiSha256))
      throw new Error(`deploy: ${i.uki} is not the image with sha256 ${i.ukiSha256} (its record says ${rec?.type === "file" ? rec.sha256 : "nothing"}): nothing sent; run \`pulumi up\` again`);
    const before = (await ctx.store.readRecord<Deployed>(record).catch(() => undefined))?.images ?? [];
    const res = await deployImage(target(i), i.uki, i.ukiSha256, ctx.log, {
      bases: before.filter((x) => x.sha256 !== i.ukiSha256).map((x) => ({ path: x.path, sha256: x.sha256 })),
      chunkCache: ctx.store.path("cache/chunks"),
    });
    const images = [{ sha256: i.ukiSha256, path: i.uki }, ...before.filter((x) => x.sha256 !== i.ukiSha256)].slice(0, 3);
    await ctx.store.writeRecord(record, { images } satisfies Deployed);
    const how = res.delta ? `, a delta from ${res.delta.base.slice(0, 12)}: ${res.delta.copied} bytes copied on the host` : "";
    ctx.log(res.changed ? `deployed build ${i.buildId} to ${where(i)} (${res.bytesSent} bytes sent${how})` : `${where(i)} already holds build ${i.buildId}: nothing sent`);
    if (res.changed && i.afterDeploy?.length) {
      await runOnHost(target(i), i.afterDeploy, ctx.log);
      if (i.waitSeconds) await waitForBuild(target(i), i.buildId, i.waitSeconds * 1000, ctx.log);
    }
    return { remoteSha256: i.ukiSha256, previousSha256: res.previous ?? null, bytesSent: res.bytesSent };
  },
  async read(props, ctx) {
    const st = await remoteState(target(props));
    if (st.sha256 !== props.ukiSha256) ctx.log(`drift: ${where(props)} is ${st.sha256 ?? "absent"}, the stack deployed ${props.ukiSha256}`);
    return { remoteSha256: st.sha256 ?? null, previousSha256: st.prevSha256 ?? null };
  },
  async onDelete(props, ctx) {
    ctx.log(`the boot image at ${where(props)} is left in place: deleting a stack never removes what the host boots`);
  },
});
