// A remote command that talks: it prints lines, and takes commands on its stdin. Answers are
// lines that start with "@"; other lines belong to the answer they precede.
import type { RemoteProcess } from "./ssh-session";

/** Runs fn under a timeout whose error names the host and the step (Session.step). */
export type Step = <T>(name: string, ms: number, fn: (touch: () => void) => Promise<T>) => Promise<T>;

export class Conversation {
  private lines: string[] = [];
  /** Every line so far. */
  readonly history: string[] = [];
  private partial = "";
  private errOut: Buffer[] = [];
  private ended?: Error;
  private wake?: () => void;
  /** Resolves once the command has exited and its output was read. */
  readonly closed: Promise<void>;

  constructor(private step: Step, private proc: RemoteProcess) {
    proc.stdout.on("data", (d: Buffer) => {
      const parts = (this.partial + d.toString("utf8")).split("\n");
      this.partial = parts.pop()!;
      this.lines.push(...parts);
      this.history.push(...parts);
      this.wake?.();
    });
    proc.stderr.on("data", (d: Buffer) => this.errOut.push(d));
    this.closed = proc.exited.then((code) => {
      const stderr = Buffer.concat(this.errOut).toString("utf8").trim().replace(/^ramroot: /gm, "");
      this.ended = new Error(stderr || (code === 0 ? "the remote script ended early" : `remote script exited with ${code}`));
      this.wake?.();
    });
  }

  send(line: string): void {
    if (!this.ended) this.proc.stdin.write(line + "\n");
  }

  /** No more commands: the script exits at the end of its stdin. */
  end(): void {
    if (!this.ended) this.proc.stdin.end();
  }

  /**
   * Waits for a line that starts with one of `prefixes`; resolves that line and the plain lines
   * before it (which it consumes). Other answers stay queued: the script may answer one command
   * before another's answer is awaited. Rejects when the script ends first (with its stderr) or
   * the step times out.
   */
  expect(step: string, ms: number, ...prefixes: string[]): Promise<{ before: string[]; line: string }> {
    return this.step(step, ms, () => new Promise((resolve, reject) => {
      const check = () => {
        const i = this.lines.findIndex((l) => prefixes.some((p) => l.startsWith(p)));
        if (i >= 0) {
          this.wake = undefined;
          const before = this.lines.slice(0, i);
          const line = this.lines[i];
          this.lines = [...before.filter((l) => l.startsWith("@")), ...this.lines.slice(i + 1)];
          resolve({ before: before.filter((l) => !l.startsWith("@")), line });
        } else if (this.ended) {
          this.wake = undefined;
          reject(this.ended);
        }
      };
      this.wake = check;
      check();
    }));
  }

  /** Sends `line` as the last command and waits (briefly) until the script has exited. */
  async finish(line: string): Promise<void> {
    if (this.ended) return;
    this.send(line);
    this.proc.stdin.end();
    await Promise.race([this.closed, new Promise((r) => setTimeout(r, 5000).unref())]);
  }
}
