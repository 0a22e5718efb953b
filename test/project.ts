// A throw-away copy of the project for tests that drive the real Pulumi CLI: its own file
// backend, store and passphrase, sharing node_modules and dist with the checkout.
import { execFile, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

export const repo = path.resolve(__dirname, "..", "..");

export interface PulumiResult { code: number; stdout: string; stderr: string }

export class Project {
  readonly env: NodeJS.ProcessEnv;
  private constructor(readonly dir: string) {
    this.env = pulumiEnv(dir);
  }

  /** Copies the project's own files (what git tracks, plus dist) into a new temp folder. */
  static create(prefix = "ramroot-test-"): Project {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    const files = spawnSync("git", ["ls-files", "-co", "--exclude-standard"], { cwd: repo, encoding: "utf8" }).stdout.split("\n").filter(Boolean);
    for (const f of files) {
      const src = path.join(repo, f);
      if (!fs.existsSync(src)) continue;
      fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
      fs.cpSync(src, path.join(dir, f), { preserveTimestamps: true, verbatimSymlinks: true });
    }
    fs.cpSync(path.join(repo, "dist"), path.join(dir, "dist"), { recursive: true });
    fs.symlinkSync(path.join(repo, "node_modules"), path.join(dir, "node_modules"));
    fs.mkdirSync(path.join(dir, ".ramroot", "state"), { recursive: true });
    return new Project(dir);
  }

  pulumi(args: string[], opts: { timeoutMs?: number; allowFail?: boolean } = {}): Promise<PulumiResult> {
    return new Promise((resolve, reject) => {
      execFile("pulumi", ["--non-interactive", ...args], { cwd: this.dir, env: this.env, maxBuffer: 64 << 20, timeout: opts.timeoutMs ?? 15 * 60_000 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as any).code === "number" ? (err as any).code : 1) : 0;
        const res = { code, stdout, stderr };
        if (code !== 0 && !opts.allowFail) reject(new Error(`pulumi ${args.join(" ")} failed (${code}):\n${stdout}\n${stderr}`));
        else resolve(res);
      });
    });
  }

  /** `pulumi preview --json`: each resource step as "op name" (e.g. "update uki"), sorted. */
  async previewSteps(stack: string, extra: string[] = []): Promise<string[]> {
    const res = await this.pulumi(["preview", "--stack", stack, "--json", ...extra]);
    const json = JSON.parse(res.stdout);
    return (json.steps ?? [])
      .filter((s: any) => !String(s.urn).includes("::pulumi:pulumi:Stack::") && !String(s.urn).includes("pulumi:providers:"))
      .map((s: any) => `${s.op} ${String(s.urn).split("::").pop()}`)
      .sort();
  }

  journal(): Array<Record<string, any>> {
    const file = path.join(this.dir, ".ramroot", "store", "journal.jsonl");
    if (!fs.existsSync(file)) return [];
    return fs.readFileSync(file, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
  }

  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The environment of a throw-away Pulumi project in `dir`: its own home, file backend and passphrase. */
export function pulumiEnv(dir: string): NodeJS.ProcessEnv {
  const bin = fs.readFileSync(path.join(cacheDir(), `pulumi-bin-${process.env.PULUMI_VERSION ?? "3.274.1"}`), "utf8").trim();
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: `${path.join(repo, "node_modules", ".bin")}:${bin}:${process.env.PATH}`,
    PULUMI_HOME: path.join(dir, ".pulumi-home"),
    PULUMI_BACKEND_URL: `file://${path.join(dir, ".ramroot", "state")}`,
    PULUMI_CONFIG_PASSPHRASE: "throw-away test passphrase",
    PULUMI_SKIP_UPDATE_CHECK: "true",
    PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION: "true",
    PULUMI_SKIP_CONFIRMATIONS: "true",
    NO_COLOR: "1",
    RAMROOT_STORE: "",
  };
  delete env.PULUMI_CONFIG_PASSPHRASE_FILE;
  return env;
}

export function cacheDir(): string {
  return process.env.RAMROOT_CACHE || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache"), "ramroot");
}
