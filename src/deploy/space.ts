// Free space on the host's stick: `df -P` read, and what a deploy or a rollback needs there.

/** Room kept free beyond the files themselves (FAT cluster rounding, directory entries). */
const SPACE_SLACK = 1 << 20;

export interface DfSpace {
  /** Bytes available to an unprivileged user on the filesystem. */
  available: number;
  total: number;
  mountedOn: string;
}

/**
 * Parses `df -P` / `df -Pk` output (GNU or busybox): the header names the block size
 * ("1024-blocks", "512-blocks"), the last line is the filesystem. Mount points with spaces are kept.
 */
export function parseDf(output: string): DfSpace {
  const lines = output.split(/\r?\n/).filter((l) => l.trim());
  const unit = /(\d+)-blocks/i.exec(lines[0] ?? "");
  if (!unit || lines.length < 2) throw new Error(`cannot read df -P output: ${JSON.stringify(output.slice(0, 200))}`);
  const m = /^(.*?)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+%|-)\s+(.*)$/.exec(lines[lines.length - 1].trim());
  if (!m) throw new Error(`cannot read df -P output: ${JSON.stringify(output.slice(0, 200))}`);
  const bs = Number(unit[1]);
  return { total: Number(m[2]) * bs, available: Number(m[4]) * bs, mountedOn: m[6] };
}

/** Bytes needed on the filesystem before the work starts, and whether they are there. */
export function spaceCheck(available: number, parts: Array<[string, number]>): { need: number; ok: boolean; detail: string } {
  const need = parts.reduce((s, [, n]) => s + n, 0) + SPACE_SLACK;
  const detail = parts.filter(([, n]) => n > 0).map(([what, n]) => `${what} ${mb(n)}`).join(" + ");
  return { need, ok: available >= need, detail: detail ? `${detail} + ${mb(SPACE_SLACK)} slack` : `${mb(SPACE_SLACK)} slack` };
}

/** Bytes as "12.3 MB", how log lines and errors say sizes. */
export const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
