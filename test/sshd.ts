// Test helpers for the SSH deploy: a throw-away OpenSSH server on 127.0.0.1 and a TCP proxy that
// counts bytes and can cut the connection. Reusable by any test (the engine-free deploy tests and
// the Pulumi-level BootMedia tests).
//
//   const sshd = await startSshd();          t.after(() => sshd.stop());
//   const proxy = await startProxy(sshd.port); t.after(() => proxy.close());
//   target = { host: "127.0.0.1", port: proxy.port, privateKey: sshd.clientKey, hostKey: sshd.hostKey }
//
// The server runs as root with Debian's openssh-server (`/usr/sbin/sshd -f CONFIG -E LOG`), a
// fresh ed25519 host key and client key, `StrictModes no` and `Subsystem sftp internal-sftp`.
// Remote commands get GNU coreutils and busybox; the "USB stick" is any folder under `dir`.
import { execFile, execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";

export interface Sshd {
  host: "127.0.0.1";
  port: number;
  /** Scratch folder holding the config, keys, log and pid file; removed by stop(). */
  dir: string;
  /** The client's OpenSSH private key text (authorized for root). */
  clientKey: string;
  /** Path of the client's private key file (for ssh, scp, rsync -e ssh). */
  clientKeyFile: string;
  /** The server's public host key, "ssh-ed25519 AAAA... comment" (what ssh-keyscan prints, minus the host). */
  hostKey: string;
  /** A known_hosts file pinning the host key for [127.0.0.1]:port. */
  knownHostsFile: string;
  /** Options for the OpenSSH client (ssh/scp/rsync -e) to reach this server non-interactively. */
  sshArgs: string[];
  /** Stops sshd (by its pid file) and removes `dir`. Safe to call twice. */
  stop(): Promise<void>;
  /** The server's log so far (for failure messages). */
  log(): string;
}

/** A free TCP port on 127.0.0.1 (bind to port 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function tryConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => { s.destroy(); resolve(ok); };
    // sshd sends its identification string first; wait for it, not just for the accept.
    s.once("data", (d) => done(d.toString("latin1").startsWith("SSH-")));
    s.once("error", () => done(false));
    s.setTimeout(1000, () => done(false));
  });
}

/** Starts a throw-away sshd and waits until it speaks SSH. Call stop() in t.after. */
export async function startSshd(opts: { timeoutMs?: number; /** Default true; false: no SFTP subsystem (like dropbear without sftp-server). */ sftp?: boolean } = {}): Promise<Sshd> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-sshd-"));
  fs.mkdirSync("/run/sshd", { recursive: true });
  const hostKeyFile = path.join(dir, "host_ed25519");
  const clientKeyFile = path.join(dir, "client_ed25519");
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "ramroot-test-host", "-f", hostKeyFile]);
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "ramroot-test-client", "-f", clientKeyFile]);
  fs.copyFileSync(`${clientKeyFile}.pub`, path.join(dir, "authorized_keys"));
  const pidFile = path.join(dir, "sshd.pid");
  const logFile = path.join(dir, "sshd.log");
  const config = path.join(dir, "sshd_config");

  let port = 0;
  let started = false;
  let lastErr = "";
  // A free port can be taken between freePort() and sshd's bind: retry a few times.
  for (let attempt = 0; attempt < 5 && !started; attempt++) {
    port = await freePort();
    fs.writeFileSync(config, [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${hostKeyFile}`,
      `AuthorizedKeysFile ${path.join(dir, "authorized_keys")}`,
      `PidFile ${pidFile}`,
      "StrictModes no",
      "PermitRootLogin yes",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "UsePAM no",
      "UseDNS no",
      ...(opts.sftp === false ? [] : ["Subsystem sftp internal-sftp"]),
      // Tests open many short connections in a row.
      "MaxStartups 100",
      "",
    ].join("\n"));
    fs.rmSync(pidFile, { force: true });
    // -D: sshd stays our child (not a daemon), so Node reaps it; PID 1 in a container may not
    // reap a daemonized one. It still writes the pid file, which is how stop() finds it.
    const child = spawn("/usr/sbin/sshd", ["-D", "-f", config, "-E", logFile], { stdio: "ignore" });
    child.on("error", () => {});
    child.unref();
    let exited = false;
    child.on("exit", () => { exited = true; });
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    while (Date.now() < deadline && !exited) {
      if (fs.existsSync(pidFile) && await tryConnect(port)) { started = true; break; }
      await new Promise((r) => setTimeout(r, 50));
    }
    if (!started) {
      lastErr = readLog(logFile);
      if (!exited) child.kill("SIGKILL");
    }
  }
  if (!started) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`startSshd: sshd did not come up on 127.0.0.1:${port}:\n${lastErr}`);
  }

  const hostKey = fs.readFileSync(`${hostKeyFile}.pub`, "utf8").trim();
  const knownHostsFile = path.join(dir, "known_hosts");
  fs.writeFileSync(knownHostsFile, `[127.0.0.1]:${port} ${hostKey}\n`);
  let stopped = false;
  return {
    host: "127.0.0.1",
    port,
    dir,
    clientKey: fs.readFileSync(clientKeyFile, "utf8"),
    clientKeyFile,
    hostKey,
    knownHostsFile,
    sshArgs: [
      "-p", String(port), "-i", clientKeyFile, "-o", `UserKnownHostsFile=${knownHostsFile}`,
      "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
      "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
    ],
    log: () => readLog(logFile),
    async stop() {
      if (stopped) return;
      stopped = true;
      await killByPidFile(pidFile);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function readLog(file: string): string {
  try { return fs.readFileSync(file, "utf8"); } catch { return ""; }
}

/** SIGTERM the listener named in the pid file and wait until it is gone (SIGKILL after 5 s). */
async function killByPidFile(pidFile: string): Promise<void> {
  let pid: number;
  try { pid = Number(fs.readFileSync(pidFile, "utf8").trim()); } catch { return; }
  if (!Number.isInteger(pid) || pid <= 1) return;
  const alive = () => {
    // A zombie (exited, not yet reaped) counts as gone.
    try { return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8")); } catch { return false; }
  };
  try { process.kill(pid, "SIGTERM"); } catch { return; }
  const deadline = Date.now() + 5000;
  while (alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  if (alive()) { try { process.kill(pid, "SIGKILL"); } catch { /* gone */ } }
  // sshd's per-connection children exit when their client socket closes (the proxy and the
  // tests close theirs); the listener is the only process that outlives a test.
}

/** Runs a command on the test server as root via the OpenSSH client; returns stdout. */
export function sshRun(sshd: Sshd, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile("ssh", [...sshd.sshArgs, "root@127.0.0.1", command], { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`ssh ${command}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

export interface Proxy {
  port: number;
  /** Bytes client→server and server→client, over all connections since start (or reset()). */
  readonly up: number;
  readonly down: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** From now on, cut every connection once this many bytes (counted per connection) went client→server; undefined: never. */
  cutAfter: number | undefined;
  /** Connections cut by cutAfter so far. */
  readonly cuts: number;
  reset(): void;
  /** Stops listening and destroys every open connection. */
  close(): Promise<void>;
}

/**
 * A TCP proxy on 127.0.0.1 in front of `targetPort`. It counts bytes in each direction and can cut
 * a connection (both sockets destroyed, like a cable pulled) once `cutAfter` bytes went from the
 * client to the server on it: the chunk that crosses the limit is forwarded only up to the limit.
 */
export async function startProxy(targetPort: number, targetHost = "127.0.0.1"): Promise<Proxy> {
  const sockets = new Set<net.Socket>();
  let up = 0, down = 0, connections = 0, cuts = 0;
  const state = { cutAfter: undefined as number | undefined };
  const server = net.createServer((client) => {
    connections++;
    const upstream = net.connect({ host: targetHost, port: targetPort });
    sockets.add(client); sockets.add(upstream);
    let sent = 0;
    let cut = false;
    const limit = state.cutAfter;
    const destroy = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream); };
    client.on("data", (chunk: Buffer) => {
      if (cut) return;
      if (limit !== undefined && sent + chunk.length >= limit) {
        const part = chunk.subarray(0, Math.max(0, limit - sent));
        sent += part.length; up += part.length;
        cut = true; cuts++;
        if (part.length) upstream.write(part, destroy); else destroy();
        return;
      }
      sent += chunk.length; up += chunk.length;
      if (!upstream.write(chunk)) { client.pause(); upstream.once("drain", () => client.resume()); }
    });
    upstream.on("data", (chunk: Buffer) => {
      if (cut) return;
      down += chunk.length;
      if (!client.write(chunk)) { upstream.pause(); client.once("drain", () => upstream.resume()); }
    });
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
    client.on("error", destroy); upstream.on("error", destroy);
    client.on("close", destroy); upstream.on("close", destroy);
  });
  await new Promise<void>((resolve, reject) => { server.once("error", reject); server.listen(0, "127.0.0.1", resolve); });
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    get up() { return up; },
    get down() { return down; },
    get connections() { return connections; },
    get cuts() { return cuts; },
    get cutAfter() { return state.cutAfter; },
    set cutAfter(n: number | undefined) { state.cutAfter = n; },
    reset() { up = 0; down = 0; connections = 0; cuts = 0; },
    close() {
      for (const s of sockets) s.destroy();
      sockets.clear();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Copies a file to the test server with the OpenSSH client's scp; resolves the wall time in ms. */
export function scpTo(sshd: Sshd, file: string, remote: string): Promise<number> {
  const args = sshd.sshArgs.map((a) => (a === "-p" ? "-P" : a));
  return timed("scp", [...args, "-q", file, `root@127.0.0.1:${remote}`]);
}

/** Copies a file to the test server with `rsync -e ssh` (whole file, as the original deploy did); resolves ms. */
export function rsyncTo(sshd: Sshd, file: string, remote: string): Promise<number> {
  return timed("rsync", ["-e", `ssh ${sshd.sshArgs.join(" ")}`, file, `root@127.0.0.1:${remote}`]);
}

function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    execFile(cmd, args, (err, _stdout, stderr) => {
      if (err) reject(new Error(`${cmd}: ${err.message}\n${stderr}`));
      else resolve(performance.now() - t0);
    });
  });
}
