// BootMedia of the ssh kind: the production stick. Replaces EFI/BOOT/BOOTAA64.EFI on the host
// over SSH, atomically, verified by hash, keeping the previous image as .prev (src/deploy/deploy.ts).
// Refresh reads the hash of the file actually on the stick, so a hand-made change shows up as
// drift and the next up puts the stack's image back. Deleting never removes the boot image.
// The gate: production refuses a build that never passed the qemu stack's boot check in this
// store, unless the stack says otherwise (ramroot:allowUntested).
// Deltas: the store remembers which images were deployed to each target (deployed/<hash>.json,
// newest first); they are offered to deployImage as bases, so when the host still holds one of
// them only the bytes the new image does not share with it are sent. Chunk lists are kept in
// the store's cache/chunks.
import type * as pulumi from "@pulumi/pulumi";
import * as fs from "node:fs";
import * as path from "node:path";
import { artifactHandlers, isKnown } from "./artifact";
import { assertSignedBy } from "../src/image/sign";
import type { SshBootMediaArgs } from "./bootmedia";
import { sha256 } from "../src/store";
import { inspectUki } from "../src/image/uki";
import { DEFAULT_PATH, deployImage, parseHostKeys, rebootInto, remoteState, runOnHost, trialDeploy, trialSupport, waitForBuild, type SshTarget } from "../src/deploy/deploy";

/** What the program passes (components/bootmedia.ts, the ssh kind), as the handlers get it. */
type Inputs = pulumi.Unwrap<SshBootMediaArgs>;

/** null: no such file on the host. */
export interface Outputs { remoteSha256: string | null; previousSha256: string | null; bytesSent: number }

/** The images deployed to one target, newest first (the host's image, then what it replaced). */
interface Deployed { images: Array<{ sha256: string; path: string }> }
const deployedRecord = (i: Inputs) => `deployed/${sha256(JSON.stringify([i.host, i.port ?? 22, i.user ?? "root", i.path ?? DEFAULT_PATH]))}.json`;

const target = (i: Inputs): SshTarget => ({ host: i.host, port: i.port, user: i.user, privateKey: i.privateKey, hostKey: i.hostKey, path: i.path });
const where = (i: Inputs) => `${i.user ?? "root"}@${i.host}:${i.port ?? 22}:${i.path ?? DEFAULT_PATH}`;
/** Present while a trial boot on that target is not finished or cleaned up: the next up looks at the host. */
const trialRecord = (i: Inputs) => `trial/${sha256(JSON.stringify([i.host, i.port ?? 22, i.user ?? "root", i.path ?? DEFAULT_PATH]))}.json`;
const DEFAULT_WAIT_SECONDS = 300;
const DEFAULT_TRIAL_SECONDS = 300;

/**
 * A trial build that panics falls back only when the kernel reboots by itself: without panic=N
 * in the image's cmdline it waits for a power cycle (then the firmware boots the default). Said,
 * not refused: the trial still guards against everything after the kernel.
 */
export async function panicWarning(uki: string): Promise<string | undefined> {
  const cmdline = (await inspectUki(uki).catch(() => undefined))?.cmdline;
  if (cmdline === undefined || /(^|\s)panic=(-1|[1-9]\d*)(\s|$)/.test(cmdline)) return undefined;
  return `warning: the image's cmdline has no panic=N ("${cmdline}"): a trial build whose kernel panics stays down until the host is power-cycled (the firmware then boots the default image); add panic=10 to ramroot:cmdline`;
}

/** How a deploy with these inputs goes, in words for preview, and whether it is a trial (undefined: ask the host). */
async function mode(i: Inputs): Promise<{ trial: boolean; why: string }> {
  if (!i.reboot) return { trial: false, why: "replace the image, no reboot (ramroot:reboot is not true)" };
  if (i.trialBoot === false) return { trial: false, why: "replace the image, reboot, wait for the new build (ramroot:trialBoot false)" };
  if (i.trialBoot === true) return { trial: true, why: "trial boot through BootNext, promoted once healthy (ramroot:trialBoot true)" };
  const s = await trialSupport(target(i));
  return s.ok ? { trial: true, why: `trial boot through BootNext, promoted once healthy (${s.why})` }
    : { trial: false, why: `replace the image, reboot, wait for the new build: no trial boot, ${s.why}` };
}

/** This layer's format, its one version knob: every hash of it starts with it (see artifact.ts). */
const FORMAT = "deploy/1";

export const handlers = artifactHandlers<Inputs, Outputs>({
  kind: "deploy",
  format: FORMAT,
  hashKeys: ["host", "port", "user", "path", "ukiSha256"],
  async validate(i, fail, ctx) {
    const need = (v: unknown, key: string, fix: string) => {
      if (isKnown(v) && (v === undefined || v === "")) fail(key, `ramroot:${key} is not set: ${fix}`);
    };
    need(i.host, "host", "pulumi config set ramroot:host NAS-ADDRESS --stack production");
    need(i.hostKey, "hostKey", `pin the host's key: ssh-keyscan -t ed25519 ${i.host || "HOST"}, then pulumi config set ramroot:hostKey "ssh-ed25519 AAAA..." --stack production`);
    need(i.privateKey, "sshPrivateKey", "pulumi config set --secret ramroot:sshPrivateKey \"$(cat ~/.ssh/id_ed25519)\" --stack production");
    if (isKnown(i.hostKey) && i.hostKey) {
      try {
        parseHostKeys(i.hostKey);
      } catch (e: any) {
        fail("hostKey", `ramroot:hostKey: ${e.message}`);
      }
    }
    if (isKnown(i.trialBoot) && i.trialBoot && isKnown(i.reboot) && !i.reboot)
      fail("trialBoot", "ramroot:trialBoot true needs ramroot:reboot true: a trial is a reboot into the new image (pulumi config set ramroot:reboot true)");
    for (const key of ["waitSeconds", "trialSeconds"] as const) {
      const v = i[key];
      if (isKnown(v) && v !== undefined && !(Number.isInteger(v) && v > 0)) fail(key, `ramroot:${key} is ${v}: a whole number of seconds above 0`);
    }
    if (isKnown(i.path) && i.path !== undefined && !path.posix.isAbsolute(i.path)) fail("path", `ramroot:bootPath ${i.path} is not absolute (default ${DEFAULT_PATH})`);
    // Preview says how a deploy will go (asking the host, when that depends on it).
    if ([i.host, i.hostKey, i.privateKey, i.reboot, i.trialBoot].every(isKnown) && i.host && i.hostKey && i.privateKey) {
      const m = await mode(i).catch((e) => ({ why: `trial boot if the host has efivarfs and efibootmgr (not known now: ${e.message})` }));
      ctx.log(`deploy mode: ${m.why}`);
      if ("trial" in m && m.trial && isKnown(i.uki) && i.uki && fs.existsSync(i.uki)) {
        const w = await panicWarning(i.uki);
        if (w) ctx.log(w);
      }
    }
    if (isKnown(i.buildId) && isKnown(i.allowUntested) && !i.allowUntested) {
      const booted = await ctx.store.readRecord(`booted-build/${i.buildId}.json`);
      if (!booted)
        fail("buildId", `build ${i.buildId} never passed the qemu stack's boot check in this store: run \`npm run up\` (the qemu stack) first, or set ramroot:allowUntested true on this stack to deploy it anyway`);
    }
  },
  async hash(i) {
    return sha256(JSON.stringify([FORMAT, i.host, i.port ?? 22, i.user ?? "root", i.path ?? DEFAULT_PATH, i.ukiSha256]));
  },
  // A trial that did not finish (a cut connection, a host that did not come back) is looked at
  // again by the next up, even when the stack's inputs are the same.
  drifted: (olds, ctx) => olds.remoteSha256 !== olds.ukiSha256 || fs.existsSync(ctx.store.path(trialRecord(olds))),
  async build(i, ctx) {
    const record = deployedRecord(i);
    // The UKI was checked against the record of its bytes (artifact.ts); that record must be
    // the image this stack deploys, or nothing is sent.
    const rel = ctx.store.relOf(i.uki);
    const rec = rel ? await ctx.store.record(rel) : undefined;
    if (rel && (rec?.type !== "file" || rec.sha256 !== i.ukiSha256))
      throw new Error(`deploy: ${i.uki} is not the image with sha256 ${i.ukiSha256} (its record says ${rec?.type === "file" ? rec.sha256 : "nothing"}): nothing sent; run \`pulumi up\` again`);
    // Signed for Secure Boot: refused before anything is sent (or rebooted) unless the
    // configured certificate verifies it; the host's firmware would refuse it.
    if (i.secureBootCert) await assertSignedBy(i.uki, i.secureBootCert);
    const before = (await ctx.store.readRecord<Deployed>(record).catch(() => undefined))?.images ?? [];
    const opts = {
      bases: before.filter((x) => x.sha256 !== i.ukiSha256).map((x) => ({ path: x.path, sha256: x.sha256 })),
      chunkCache: ctx.store.path("cache/chunks"),
      secureBootCert: i.secureBootCert,
    };
    const m = await mode(i);
    ctx.log(`deploy mode: ${m.why}`);
    if (m.trial) {
      const w = await panicWarning(i.uki);
      if (w) ctx.log(w);
    }
    const trialRec = trialRecord(i);
    const pending = fs.existsSync(ctx.store.path(trialRec));
    let res: { changed: boolean; bytesSent: number; previous?: string; delta?: { base: string; copied: number } };
    if (m.trial || pending) {
      if (!m.trial) ctx.log("an earlier trial boot did not finish: finishing or cleaning it up first");
      if (m.trial) await ctx.store.writeRecord(trialRec, { buildId: i.buildId, sha256: i.ukiSha256 });
      try {
        const size = (await fs.promises.stat(i.uki)).size;
        res = await trialDeploy(target(i), i.buildId, i.ukiSha256, size, {
          waitMs: (i.waitSeconds ?? DEFAULT_WAIT_SECONDS) * 1000,
          timerSeconds: i.trialSeconds ?? DEFAULT_TRIAL_SECONDS,
          consoleLog: i.consoleLog,
          upload: (p) => deployImage({ ...target(i), path: p }, i.uki, i.ukiSha256, ctx.log, { chunkCache: opts.chunkCache, secureBootCert: i.secureBootCert }),
          commit: () => deployImage(target(i), i.uki, i.ukiSha256, ctx.log, opts),
          current: async () => (await remoteState(target(i))).sha256 === i.ukiSha256,
          leftoversOnly: !m.trial,
        }, ctx.log);
        await fs.promises.rm(ctx.store.path(trialRec), { force: true });
        // Leftovers dealt with, no trial wanted: the deploy itself.
        if (!m.trial && !res.changed) res = await deployImage(target(i), i.uki, i.ukiSha256, ctx.log, opts);
      } catch (e: any) {
        // A trial that failed and was cleaned up is over; anything else is for the next up.
        if (/^trial boot of build \S+ failed/.test(e.message)) await fs.promises.rm(ctx.store.path(trialRec), { force: true });
        throw e;
      }
    } else {
      res = await deployImage(target(i), i.uki, i.ukiSha256, ctx.log, opts);
    }
    const images = [{ sha256: i.ukiSha256, path: i.uki }, ...before.filter((x) => x.sha256 !== i.ukiSha256)].slice(0, 3);
    await ctx.store.writeRecord(record, { images } satisfies Deployed);
    const how = res.delta ? `, a delta from ${res.delta.base.slice(0, 12)}: ${res.delta.copied} bytes copied on the host` : "";
    ctx.log(res.changed ? `deployed build ${i.buildId} to ${where(i)} (${res.bytesSent} bytes sent${how})` : `${where(i)} already holds build ${i.buildId}: nothing sent`);
    if (res.changed && i.afterDeploy?.length) {
      await runOnHost(target(i), i.afterDeploy, ctx.log);
      if (i.waitSeconds && !i.reboot) await waitForBuild(target(i), i.buildId, i.waitSeconds * 1000, ctx.log);
    }
    if (res.changed && i.reboot && !m.trial) await rebootInto(target(i), i.buildId, (i.waitSeconds ?? DEFAULT_WAIT_SECONDS) * 1000, ctx.log);
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
