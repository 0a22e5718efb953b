// Service probes of the qemu boot check: HTTP requests to the booted guest's services, declared
// in the stack config (ramroot:probes), made after the guest reports healthy. QEMU's user
// networking forwards each guest port from a free port on 127.0.0.1 only (nothing else on the
// network reaches the guest); the guest waits with its power-off until the probes are done
// (src/boot/health.ts: wait-then-poweroff).
//
//   ramroot:probes: [{"service": "srvmonitor", "port": 80, "path": "/uptime", "expect": "up"}]
//
// A probe passes when the answer comes within its time, with `status` (default 200), and its body
// contains `expect` (when given). A failed probe fails the check, naming the service.
import * as http from "node:http";
import * as net from "node:net";

export interface Probe {
  /** What the error calls it (default: "port PORT"). */
  service?: string;
  /** The guest's TCP port. */
  port: number;
  /** The request path, sent as written (e.g. "/uptime", "/%2e%2e/bin/sh"). */
  path: string;
  /** The status the answer must have. Default 200. */
  status?: number;
  /** Text the answer's body must contain. */
  expect?: string;
  /** Seconds the service has to answer, retrying while it cannot be reached. Default 30. */
  timeoutSeconds?: number;
}

export interface ProbeResult {
  probe: Probe;
  ok: boolean;
  /** The status and the start of the body, or why there was no answer. */
  got: string;
  /** What is wrong, in words naming the service (when not ok). */
  problem?: string;
  ms: number;
}

const KEYS = new Set(["service", "port", "path", "status", "expect", "timeoutSeconds"]);

/** The probes of a config value (a JSON list), checked; throws naming `key` and the entry. */
export function parseProbes(value: unknown, key = "ramroot:probes"): Probe[] {
  if (value === undefined || value === null) return [];
  const example = `e.g. [{"service": "srvmonitor", "port": 80, "path": "/uptime", "expect": "up"}]`;
  if (!Array.isArray(value)) throw new Error(`${key} is not a list of probes: ${example}`);
  return value.map((p: any, n) => {
    const where = `${key}[${n}]`;
    if (!p || typeof p !== "object" || Array.isArray(p)) throw new Error(`${where} is not an object: ${example}`);
    for (const k of Object.keys(p)) if (!KEYS.has(k)) throw new Error(`${where} has an unknown key ${k}: use ${[...KEYS].join(", ")}`);
    if (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535) throw new Error(`${where}.port is ${JSON.stringify(p.port)}: give the guest's TCP port (1-65535)`);
    if (typeof p.path !== "string" || !p.path.startsWith("/") || /[\s\x00-\x1f\x7f]/.test(p.path)) throw new Error(`${where}.path is ${JSON.stringify(p.path)}: give a path starting with / and without spaces or control characters`);
    if (p.status !== undefined && !(Number.isInteger(p.status) && p.status >= 100 && p.status <= 599)) throw new Error(`${where}.status is ${JSON.stringify(p.status)}: give an HTTP status (100-599)`);
    if (p.expect !== undefined && typeof p.expect !== "string") throw new Error(`${where}.expect is not text`);
    if (p.service !== undefined && (typeof p.service !== "string" || !p.service)) throw new Error(`${where}.service is not a name`);
    if (p.timeoutSeconds !== undefined && !(typeof p.timeoutSeconds === "number" && p.timeoutSeconds > 0)) throw new Error(`${where}.timeoutSeconds: give a number of seconds > 0`);
    return { ...p } as Probe;
  });
}

/** The guest ports the probes need forwarded, each once, in order. */
export const probePorts = (probes: Probe[]) => [...new Set(probes.map((p) => p.port))];

/** A TCP port on 127.0.0.1 that is free now (the kernel picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

const name = (p: Probe) => p.service ?? `port ${p.port}`;

/** One GET, as written, to 127.0.0.1:hostPort; resolves to the answer or to why there was none. */
function get(hostPort: number, path: string, timeoutMs: number): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = http.request({ host: "127.0.0.1", port: hostPort, path, method: "GET", agent: false, headers: { Connection: "close" } }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        if (size < 1 << 20) chunks.push(c);
        size += c.length;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", (e) => resolve({ error: e.message }));
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    req.on("error", (e: any) => resolve({ error: e.code ?? e.message }));
    req.end();
  });
}

const clip = (s: string, n = 200) => JSON.stringify(s.length > n ? s.slice(0, n) + "…" : s);

/**
 * Runs one probe against the guest's port forwarded at 127.0.0.1:hostPort. While the service
 * cannot be reached (QEMU's forward accepts, the guest resets), it tries again every half second
 * until its time is up; an answer is judged at once.
 */
export async function runProbe(p: Probe, hostPort: number): Promise<ProbeResult> {
  const t0 = Date.now();
  const deadline = t0 + (p.timeoutSeconds ?? 30) * 1000;
  const want = p.status ?? 200;
  const what = `${name(p)} (GET ${p.path} on guest port ${p.port})`;
  let last = "";
  for (;;) {
    const left = deadline - Date.now();
    const r = await get(hostPort, p.path, Math.max(1000, Math.min(left, 15_000)));
    if ("status" in r) {
      const got = `${r.status} ${clip(r.body)}`;
      const ms = Date.now() - t0;
      if (r.status !== want) return { probe: p, ok: false, got, ms, problem: `service ${what} answered ${r.status}, ramroot:probes says ${want}: ${clip(r.body)}` };
      if (p.expect !== undefined && !r.body.includes(p.expect)) return { probe: p, ok: false, got, ms, problem: `service ${what} answered ${r.status} without ${JSON.stringify(p.expect)} (ramroot:probes): ${clip(r.body)}` };
      return { probe: p, ok: true, got, ms };
    }
    last = r.error;
    if (Date.now() + 500 >= deadline) break;
    await new Promise((res) => setTimeout(res, 500));
  }
  return { probe: p, ok: false, got: last, ms: Date.now() - t0, problem: `service ${what} did not answer within ${p.timeoutSeconds ?? 30} s (${last}): is it enabled (rc-update add ... default), listening on port ${p.port}, and is the network up (rc-update add networking boot)?` };
}
