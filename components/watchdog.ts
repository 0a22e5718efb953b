// A provider process whose engine died ends itself and what it started. The engine starts each
// plugin in a process group of its own and stops it when it ends normally; an engine killed with
// SIGKILL (or a Ctrl-C that kills only it) stops nothing, and a QEMU boot or a builder would
// run on as an orphan, holding the store and the persistence disk.
import * as fs from "node:fs";

/** The fields of /proc/PID/stat after the command name (which may hold spaces): state, ppid, pgrp, ... */
function stat(pid: number | "self"): string[] | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return s.slice(s.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

let watching = false;

/**
 * In the dynamic-provider plugin (node, started by a small sh launcher that the engine starts):
 * once a second, checks that the launcher and the engine are still this process's ancestors;
 * when either is gone, sends SIGTERM to the plugin's process group (the launcher, this process,
 * QEMU, a builder) and exits. Elsewhere (tests calling the handlers) it does nothing.
 */
export function endWithEngine(): void {
  if (watching || process.platform !== "linux" || !/cmd[\\/]dynamic-provider/.test(process.argv[1] ?? "")) return;
  watching = true;
  const self = stat("self");
  const launcher = process.ppid;
  const engine = Number(stat(launcher)?.[1]);
  if (!self || !(engine > 1)) return;
  const group = Number(self[2]);
  const timer = setInterval(() => {
    if (process.ppid === launcher && Number(stat(launcher)?.[1]) === engine) return;
    console.error(`ramroot: the Pulumi engine (pid ${engine}) is gone: stopping this provider and what it started`);
    try {
      // Only the group the engine made for the launcher (it leads it), never a shell's job.
      if (group === launcher) process.kill(-group, "SIGTERM");
    } finally {
      process.exit(1);
    }
  }, 1000);
  timer.unref();
}
