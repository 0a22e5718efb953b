// After a deploy: commands on the host (a reboot), and waiting for it to come back with the
// new build.
import { HostProtocol, hostFiles } from "./host-protocol";
import { DEFAULT_TIMEOUT_MS, withSession, type Log, type SshTarget } from "./ssh-session";

/**
 * Runs each command on the host in order (`sh -c COMMAND`); stops at the first that fails. A
 * command that ends the connection (reboot) counts as done.
 */
export async function runOnHost(t: SshTarget, commands: string[], log: Log = () => {}): Promise<void> {
  await withSession(t, log, async (s) => {
    for (const cmd of commands) {
      log(`on ${s.where}: ${cmd}`);
      try {
        const out = await s.exec(`run \`${cmd}\``, ["sh", "-c", cmd]);
        for (const line of out.trimEnd().split("\n").filter(Boolean)) log(`  ${line}`);
      } catch (e: any) {
        if (/reboot|poweroff|shutdown/.test(cmd) && /closed|ECONNRESET|end/i.test(String(e.message))) return;
        throw e; // "user@host:port: run `cmd`: its stderr"
      }
    }
  });
}

/**
 * Waits until the host answers over SSH and reports `buildId` in /etc/ramroot-release (what
 * every ramroot image carries), retrying until `timeoutMs`.
 */
export async function waitForBuild(t: SshTarget, buildId: string, timeoutMs: number, log: Log = () => {}): Promise<void> {
  const files = hostFiles(t.path);
  const deadline = Date.now() + timeoutMs;
  let last = "no answer yet";
  while (Date.now() < deadline) {
    try {
      const seen = await withSession({ ...t, timeoutMs: Math.min(t.timeoutMs ?? DEFAULT_TIMEOUT_MS, 15_000) }, () => {}, (s) => new HostProtocol(s, files).buildId());
      if (seen === buildId) {
        log(`${t.host} is up and runs build ${buildId}`);
        return;
      }
      last = `it runs build ${seen || "(unknown)"}`;
    } catch (e: any) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, Math.max(0, Math.min(3000, deadline - Date.now()))));
  }
  throw new Error(`${t.host} did not come back with build ${buildId} within ${Math.round(timeoutMs / 1000)} s (${last}); the new image is in place and the previous one is at .prev: \`ramroot rollback --stack production\` puts it back`);
}
