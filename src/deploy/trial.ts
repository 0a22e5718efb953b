// Deploys that reboot the host and check what comes back, and trial boots (issue 14, parts 3-4).
//
// A reboot deploy replaces P as deployImage does, reboots the host and waits for a new boot (a
// new kernel boot id) that reports the new build and a healthy report (src/boot/health.ts; the guest
// keeps it in /run/ramroot/health).
//
// A trial deploy never touches P until the new build has come up healthy:
//   1. what an interrupted trial left is finished (the host runs it, confirmed or healthy: it is
//      promoted) or cleaned up (its boot entry, BootNext, the image);
//   2. the new image goes to EFI/ramroot/trial.efi on the stick's filesystem (the deploy's own
//      copy-verify-rename);
//   3. a Boot#### entry "ramroot trial BUILD ramroot-trial-seconds=N" for trial.efi, made from
//      the entry the firmware booted (src/deploy/load-option.ts), and BootNext = that entry;
//   4. reboot: the firmware boots the trial once and forgets BootNext;
//   5. the host answers on the new build, healthy: confirmed (its trial guard stands down and
//      disarms the hardware watchdog, see src/deploy/trial-timer.ts; the deploy waits for that),
//      then promoted: trial.efi renamed to P.ramroot-new and committed by
//      the deploy (P.prev keeps the old image), the entry removed;
//      it answers on another build (a panic rebooted it: panic=N; the trial guard's timer or the
//      hardware watchdog it armed did): the
//      entry and the trial image are removed and the deploy fails, naming both builds.
// P is only ever replaced by the deploy's rename of a verified file: the stick always has a
// bootable default.
import * as fs from "node:fs";
import * as path from "node:path";
import { parseHealth, type HealthReport } from "../boot/health";
import { HostProtocol, hostFiles } from "./host-protocol";
import { runOnHost } from "./host-commands";
import { TRIAL_WATCHDOG_STATE, guardWaitCommand } from "./trial-timer";
import {
  GLOBAL_GUID, TRIAL_DESCRIPTION, TRIAL_SECONDS_KEY, bootName, encodeLoadOption, gptPartition, loadOptionFile, parseLoadOption, parseU16, trialLoadOption, u16, varFile, varPayload,
  type GptPartition, type LoadOption,
} from "./load-option";
import { DEFAULT_TIMEOUT_MS, withSession, type Log, type SshTarget } from "./ssh-session";

const globalVar = (name: string) => `${name}-${GLOBAL_GUID}`;

export interface HostStatus {
  build: string;
  /** The kernel's boot id: another one after a reboot. */
  boot: string;
  /** The entry the firmware booted (BootCurrent), when the host has efivarfs. */
  bootCurrent?: number;
  /** The trial timer was told to stand down. */
  confirmed: boolean;
  /** ramroot's health report; undefined until the boot has ended. */
  health?: HealthReport;
}

export function parseStatus(text: string): HostStatus {
  const lines = text.split("\n");
  const field = (k: string) => lines.find((l) => l.startsWith(`${k} `))?.slice(k.length + 1).trim();
  const bc = field("bootcurrent");
  const health = lines.filter((l) => l.startsWith("health ")).map((l) => l.slice(7)).join("\n");
  return {
    build: field("build") ?? "",
    boot: field("boot") ?? "",
    bootCurrent: bc && /^[0-9a-f]{12}$/.test(bc) ? parseU16(varPayload(Buffer.from(bc, "hex"))) : undefined,
    confirmed: lines.includes("confirmed"),
    health: health ? parseHealth(health) : undefined,
  };
}

export async function hostStatus(t: SshTarget): Promise<HostStatus> {
  return withSession({ ...t, timeoutMs: Math.min(t.timeoutMs ?? DEFAULT_TIMEOUT_MS, 15_000) }, () => {}, async (s) =>
    parseStatus(await new HostProtocol(s, hostFiles(t.path)).status()));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Waits for a boot other than `bootBefore` that has ended (its health report is there) or runs
 * another build than `buildId` (no need to wait for its report). Throws after timeoutMs.
 */
export async function waitForBoot(t: SshTarget, bootBefore: string, buildId: string, timeoutMs: number, log: Log): Promise<HostStatus> {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer yet";
  let answered = false;
  while (Date.now() < deadline) {
    try {
      const st = await hostStatus(t);
      if (st.boot !== bootBefore) {
        if (!answered) log(`${t.host} answers again (build ${st.build || "unknown"})`);
        answered = true;
        if (st.build !== buildId || st.health) return st;
        last = `it runs build ${buildId} and has not finished booting (no health report yet)`;
      } else {
        last = "it has not rebooted yet";
      }
    } catch (e: any) {
      last = e.message;
    }
    await sleep(Math.max(0, Math.min(3000, deadline - Date.now())));
  }
  throw new Error(`${t.host} did not come back within ${Math.round(timeoutMs / 1000)} s (last: ${last})`);
}

/** What a healthy boot of `buildId` is not; undefined when it is one. */
function notHealthy(st: HostStatus, buildId: string): string | undefined {
  if (st.build !== buildId) return `it runs build ${st.build || "(unknown)"}`;
  if (!st.health) return "it has no health report";
  if (st.health.result !== "ok" || st.health.problems.length) return `its health report says: ${st.health.problems.join("; ") || "fail"}`;
  return undefined;
}

/** Reboots the host; resolves once it runs `buildId`, healthy. */
export async function rebootInto(t: SshTarget, buildId: string, timeoutMs: number, log: Log): Promise<HostStatus> {
  const before = await hostStatus(t);
  await runOnHost(t, ["reboot"], log);
  const st = await waitForBoot(t, before.boot, buildId, timeoutMs, log).catch((e) => {
    throw new Error(`${e.message}; build ${buildId} is in place and the previous image is at .prev: \`ramroot rollback --stack production\` puts it back`);
  });
  if (st.build !== buildId)
    throw new Error(`${t.host} came back on build ${st.build || "(unknown)"}, not ${buildId}, after the deploy's reboot: the firmware did not boot the new image (is ramroot:bootPath the file it boots?)`);
  const why = notHealthy(st, buildId);
  if (why) throw new Error(`${t.host} came back on build ${buildId}, but it is not healthy: ${why.replace(/^its /, "")}`);
  log(`${t.host} is up and runs build ${buildId}, healthy (${st.health!.counts.mounts} mounts, no failed service)`);
  return st;
}

/** The trial image next to the removable path's folder: /media/usb/EFI/BOOT/X -> /media/usb/EFI/ramroot/trial.efi. */
export function trialPath(p: string): string {
  return path.posix.join(path.posix.dirname(path.posix.dirname(p)), "ramroot", "trial.efi");
}

interface EfiState {
  efivarfs: boolean;
  efibootmgr: boolean;
  vars: Map<string, Buffer>;
  mount: string;
  partition?: GptPartition;
}

function parseEfiState(text: string): EfiState {
  const st: EfiState = { efivarfs: false, efibootmgr: false, vars: new Map(), mount: "/" };
  let disk: { number: number } | undefined;
  let gpt: Buffer | undefined;
  for (const line of text.split("\n")) {
    const [k, a, b] = line.split(" ");
    if (k === "efivarfs") st.efivarfs = a === "yes";
    else if (k === "efibootmgr") st.efibootmgr = a === "yes";
    else if (k === "var" && a && b !== undefined) st.vars.set(a, Buffer.from(b, "hex"));
    else if (k === "mount") st.mount = a;
    else if (k === "partition") disk = { number: Number(b) };
    else if (k === "gpt" && a) gpt = Buffer.from(a, "hex");
  }
  if (disk && gpt && gpt.length >= 512 * 33) {
    try {
      st.partition = gptPartition(gpt.subarray(0, 512), gpt.subarray(512), disk.number);
    } catch { /* not a GPT disk: only an entry with a HD() node can be extended */ }
  }
  return st;
}

/** The trial entries on the host (normally none or one): their numbers and builds. */
interface TrialEntry { entry: number; name: string; build: string }
function trialEntries(st: EfiState): TrialEntry[] {
  const found: TrialEntry[] = [];
  for (const [name, v] of st.vars) {
    if (!/^Boot[0-9A-F]{4}-/.test(name)) continue;
    try {
      const opt = parseLoadOption(varPayload(v));
      if (opt.description.startsWith(`${TRIAL_DESCRIPTION} `)) found.push({ entry: parseInt(name.slice(4, 8), 16), name, build: opt.description.split(" ")[2] ?? "" });
    } catch { /* not a load option this can read: not ours */ }
  }
  return found;
}

/**
 * The entry the firmware booted, for its device path. After a promotion the host runs from the
 * trial entry, which is gone: then the one entry that names the stick's partition, or else the
 * firmware's one entry for a whole disk (no file: it boots the removable path), stands in.
 */
function bootedEntry(st: EfiState, current: number, host: string): LoadOption {
  const own = st.vars.get(globalVar(bootName(current)));
  if (own) return parseLoadOption(varPayload(own));
  const entries: LoadOption[] = [];
  for (const [name, v] of st.vars) {
    if (!/^Boot[0-9A-F]{4}-/.test(name)) continue;
    try { entries.push(parseLoadOption(varPayload(v))); } catch { /* not readable: not a candidate */ }
  }
  const guid = st.partition?.guid;
  const onPartition = entries.filter((o) => o.path.some((n) => n.type === 4 && n.subtype === 1 && guid && n.data.subarray(20, 36).equals(guid)));
  const wholeDisk = entries.filter((o) => o.path.length > 0 && (o.path[0].type === 1 || o.path[0].type === 2) && !o.path.some((n) => n.type === 4));
  const pick = onPartition.length === 1 ? onPartition : wholeDisk.length === 1 ? wholeDisk : [];
  if (pick.length) return pick[0];
  throw new Error(`${host}: BootCurrent is ${bootName(current)}, which is gone (a promoted trial's), and no single other entry names the stick: reboot the host once (it then runs from its default entry) and deploy again, or set ramroot:trialBoot false`);
}

/** How long the deployer waits for the trial guard to stand down once it confirmed the trial. */
const GUARD_WAIT_SECONDS = 30;

/**
 * What the trial guard's state line (TRIAL_WATCHDOG_STATE, after the confirmation) means for the
 * promotion: a note to log, or an error when the build must not be promoted (the guard still
 * holds the watchdog armed, or its deadline passed first and the host is rebooting).
 */
export function guardOutcome(line: string, buildId: string): { note: string } | { error: string } {
  const [what, dev, why] = line.trim().split(/\s+/);
  switch (what) {
    case undefined: case "":
      return { note: "the trial timer stood down (an image without ramroot's trial guard state)" };
    case "none":
      return { note: `the trial timer stood down (no hardware watchdog armed: ${dev ?? "none"})` };
    case "disarmed":
      return { note: `the trial timer stood down; the hardware watchdog ${dev} is disarmed (magic close)` };
    case "fed":
      return { note: `the trial timer stood down; the hardware watchdog ${dev} cannot be stopped (${why ?? "?"}): the guard feeds it for the rest of this boot` };
    case "armed":
      return { error: `the trial guard of build ${buildId} did not stand down within ${GUARD_WAIT_SECONDS} s of the confirmation (the hardware watchdog ${dev} is still armed, ${TRIAL_WATCHDOG_STATE}: ${line.trim()}): not promoting it; the watchdog or the timer takes the host back to its default entry, and the next \`pulumi up\` cleans up` };
    case "released": case "expired":
      return { error: `the trial timer of build ${buildId} ran out before the confirmation (${TRIAL_WATCHDOG_STATE}: ${line.trim()}): the host is going back to its default entry; not promoting it (a longer ramroot:trialSeconds gives the deploy more time)` };
    default:
      return { error: `the trial guard of build ${buildId} says "${line.trim()}" (${TRIAL_WATCHDOG_STATE}), which this ramroot does not know: not promoting it` };
  }
}

/** How a deploy with ramroot:reboot goes: probed when ramroot:trialBoot is not set. */
export async function trialSupport(t: SshTarget): Promise<{ ok: boolean; why: string }> {
  const dir = path.posix.dirname(trialPath(hostFiles(t.path).path));
  const st = await withSession({ ...t, timeoutMs: Math.min(t.timeoutMs ?? DEFAULT_TIMEOUT_MS, 10_000) }, () => {}, async (s) =>
    parseEfiState(await new HostProtocol(s, hostFiles(t.path)).efiState(dir)));
  if (!st.efivarfs) return { ok: false, why: "the host has no writable efivarfs (not booted through UEFI?)" };
  if (!st.efibootmgr) return { ok: false, why: "the host has no efibootmgr" };
  return { ok: true, why: "the host has efivarfs and efibootmgr" };
}

export interface TrialOptions {
  /** How long to wait for the host after the trial's reboot. */
  waitMs: number;
  /** The trial guard: the trial build reboots unless confirmed within this many seconds of its guard's start (OpenRC sysinit). */
  timerSeconds: number;
  /** A file the host's serial console is written to (the rehearsal host's --console): its trial boot lines go into a failure. */
  consoleLog?: string;
  /** Uploads `file` to `path` with the deploy's copy-verify-rename (deployImage). */
  upload(path: string): Promise<{ changed: boolean; bytesSent: number }>;
  /** Replaces P with the image (deployImage to P: the staged trial image is reused, not sent). */
  commit(): Promise<{ previous?: string }>;
  /** Whether P already holds the image. */
  current(): Promise<boolean>;
  /** Only finish or clean up what an earlier trial left (the deploy then goes on without a trial). */
  leftoversOnly?: boolean;
}

export interface TrialResult { changed: boolean; bytesSent: number; previous?: string }

/** A deploy through a trial boot (see the top of this file). */
export async function trialDeploy(t: SshTarget, buildId: string, sha256: string, size: number, o: TrialOptions, log: Log): Promise<TrialResult> {
  const files = hostFiles(t.path);
  const trial = trialPath(files.path);
  const trialDir = path.posix.dirname(trial);
  const efi = () => withSession(t, log, async (s) => parseEfiState(await new HostProtocol(s, files).efiState(trialDir)));
  const host = <T>(fn: (h: HostProtocol) => Promise<T>) => withSession(t, log, (s) => fn(new HostProtocol(s, files)));

  /** Removes the trial entries, BootNext (when it names one) and the trial image. */
  const cleanUp = async (st: EfiState) => {
    const ours = trialEntries(st);
    const next = st.vars.get(globalVar("BootNext"));
    const nextEntry = next && varPayload(next).length >= 2 ? parseU16(varPayload(next)) : undefined;
    await host(async (h) => {
      if (ours.some((e) => e.entry === nextEntry)) await h.efiDelete(globalVar("BootNext"));
      for (const e of ours) await h.efiDelete(e.name);
      await h.trialRemove(trial);
    });
    if (ours.length) log(`removed what a trial boot left: ${ours.map((e) => `${bootName(e.entry)} (build ${e.build})`).join(", ")}, ${trial}`);
  };

  /**
   * Confirms the running trial, waits for its guard to stand down (the hardware watchdog
   * disarmed), promotes its image to P, removes its entry.
   */
  const promote = async (): Promise<{ previous?: string }> => {
    await host(async (h) => {
      await h.trialConfirm();
    });
    const line = await withSession(t, log, (s) => s.exec("wait for the trial guard to stand down", ["sh", "-c", guardWaitCommand(GUARD_WAIT_SECONDS)]));
    const outcome = guardOutcome(line, buildId);
    if ("error" in outcome) throw new Error(outcome.error);
    log(outcome.note);
    await host(async (h) => {
      // Absent when an interrupted promotion already moved it: then P.ramroot-new holds it.
      await h.trialStage(trial, sha256, size).catch((e) => log(`${trial}: ${e.message}; the deploy looks for it at ${files.upload}`));
    });
    const res = await o.commit();
    await cleanUp(await efi());
    return res;
  };

  // 1. What an earlier, interrupted trial left.
  let st = await efi();
  if (!st.efivarfs && o.leftoversOnly) return { changed: false, bytesSent: 0 };
  if (!st.efivarfs) throw new Error(`${t.host}: a trial boot needs efivarfs (the host was not booted through UEFI, or efivarfs is not mounted): set ramroot:trialBoot false`);
  const left = trialEntries(st)[0];
  if (left) {
    const now = await hostStatus(t);
    const running = now.bootCurrent === left.entry;
    if (running && left.build === buildId && !notHealthy(now, buildId)) {
      log(`${t.host} runs the trial of build ${buildId} from an interrupted deploy, healthy: promoting it`);
      const res = await promote();
      return { changed: true, bytesSent: 0, previous: res.previous };
    }
    await cleanUp(st);
    if (running) {
      // Its trial timer would reboot it in the middle of this deploy: reboot it now, to the default.
      log(`${t.host} runs an unconfirmed trial of build ${left.build}: rebooting it to its default entry first`);
      await runOnHost(t, ["reboot"], log);
      await waitForBoot(t, now.boot, "", o.waitMs, log);
    }
    st = await efi();
  }
  if (o.leftoversOnly || await o.current()) return { changed: false, bytesSent: 0 };

  // 2. The image beside the default one.
  const up = await o.upload(trial);
  await host((h) => h.trialRemove(`${trial}.prev`)); // a leftover trial image kept by that deploy: not needed
  log(`${trial}: build ${buildId} written, flushed, verified`);

  // 3. The boot entry (the trial's mark too: see src/deploy/trial-timer.ts) and BootNext.
  const current = await hostStatus(t);
  if (current.bootCurrent === undefined) throw new Error(`${t.host}: no BootCurrent variable: the firmware does not say which entry it booted, so no trial entry can be made (set ramroot:trialBoot false)`);
  const booted = bootedEntry(st, current.bootCurrent, t.host);
  const rel = path.posix.relative(st.mount, trial);
  if (rel.startsWith("..")) throw new Error(`${trial} is not on the filesystem mounted at ${st.mount}`);
  // The timer's seconds go into the description: optional data would be the image's load
  // options, which systemd-stub takes as the kernel command line instead of its own.
  const option = trialLoadOption(booted, st.partition, `\\${rel.split("/").join("\\")}`,
    `${TRIAL_DESCRIPTION} ${buildId} ${TRIAL_SECONDS_KEY}=${o.timerSeconds}`);
  const used = new Set([...st.vars.keys()].filter((n) => /^Boot[0-9A-F]{4}-/.test(n)).map((n) => parseInt(n.slice(4, 8), 16)));
  let entry = 0;
  while (used.has(entry)) entry++;
  await host(async (h) => {
    await h.efiWrite(globalVar(bootName(entry)), varFile(encodeLoadOption(option)));
    await h.efiWrite(globalVar("BootNext"), varFile(u16(entry)));
  });
  const check = await efi();
  const made = check.vars.get(globalVar(bootName(entry)));
  if (!made || loadOptionFile(parseLoadOption(varPayload(made))) !== loadOptionFile(option) || !check.vars.get(globalVar("BootNext"))?.equals(varFile(u16(entry)))) {
    await cleanUp(check);
    throw new Error(`${t.host}: the firmware did not keep the trial entry ${bootName(entry)} or BootNext: no trial boot (set ramroot:trialBoot false to deploy without one)`);
  }
  log(`${bootName(entry)} "${option.description}" -> ${loadOptionFile(option)}; BootNext=${bootName(entry)}; trial timer ${o.timerSeconds} s`);

  // 4. The trial boot.
  const consoleFrom = o.consoleLog && fs.existsSync(o.consoleLog) ? fs.statSync(o.consoleLog).size : 0;
  await runOnHost(t, ["reboot"], log);
  let back: HostStatus;
  try {
    back = await waitForBoot(t, current.boot, buildId, o.waitMs, log);
  } catch (e: any) {
    throw new Error(`trial boot of build ${buildId}: ${e.message}; its trial guard (${o.timerSeconds} s, or the hardware watchdog it armed) or the kernel's panic=N brings back the default image, and the next \`pulumi up\` cleans up${consoleLines(o.consoleLog, consoleFrom)}`);
  }

  // 5. Promote, or clean up and fail.
  let why = notHealthy(back, buildId);
  if (!why) {
    log(`${t.host} runs build ${buildId} from its trial entry, healthy: promoting it to ${files.path}`);
    const res = await promote();
    log(`${files.path}: now build ${buildId}; ${files.prev}: the previous image`);
    return { changed: true, bytesSent: up.bytesSent, previous: res.previous };
  }
  if (back.build === buildId) {
    // Up but unhealthy: not confirmed. Reboot it now rather than wait for its timer.
    log(`trial build ${buildId} came up unhealthy (${why}): rebooting the host to its default entry`);
    await runOnHost(t, ["reboot"], log);
    back = await waitForBoot(t, back.boot, "", o.waitMs, log);
    why = `it came up unhealthy (${why.replace(/^its /, "")})`;
  } else {
    why = "it did not come up";
  }
  await cleanUp(await efi());
  throw new Error(`trial boot of build ${buildId} failed (${why}); the host is back on build ${back.build || "(unknown)"}${consoleLines(o.consoleLog, consoleFrom)}`);
}

/** The console lines of the trial boot worth showing, from the console file (where there is one). */
function consoleLines(file: string | undefined, from: number): string {
  if (!file || !fs.existsSync(file)) return "";
  const text = fs.readFileSync(file).subarray(from).toString("utf8");
  const lines = text.split(/\r?\n/).filter((l) => /panic|not syncing|trial|watchdog|error|fail|ramroot:/i.test(l)).slice(-15);
  return lines.length ? `; console (${file}):\n  ${lines.join("\n  ")}` : "";
}

