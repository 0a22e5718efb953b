// /etc/fstab of the built system, read on the build host. Alpine's builder removes empty folders
// such as /media/usb when it cleans up, so a mount point the skeleton does not ship as a file's
// parent may be gone: the configure stage makes every mount point that fstab names, and a line
// whose mount point cannot be made stops the build, naming the line.

export interface FstabEntry {
  /** 1-based line number in /etc/fstab. */
  line: number;
  spec: string;
  file: string;
  type: string;
  options: string[];
}

/** fstab(5) escapes spaces and tabs in fields as octal (\040, \011). */
const unescape = (field: string) => field.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));

/** The entries of an fstab text; `shown` names the file in errors. */
export function parseFstab(text: string, shown = "/etc/fstab"): FstabEntry[] {
  const out: FstabEntry[] = [];
  text.split("\n").forEach((raw, i) => {
    const fields = raw.replace(/#.*/, "").trim().split(/\s+/).filter(Boolean);
    if (fields.length === 0) return;
    if (fields.length < 2) throw new Error(`${shown}:${i + 1}: "${raw.trim()}" has no mount point: write SPEC MOUNTPOINT TYPE OPTIONS [DUMP [PASS]]`);
    out.push({ line: i + 1, spec: unescape(fields[0]!), file: unescape(fields[1]!), type: fields[2] ?? "auto", options: (fields[3] ?? "defaults").split(",") });
  });
  return out;
}

/** The entries that mount a filesystem at a folder (not swap). */
export function mountEntries(entries: FstabEntry[]): FstabEntry[] {
  return entries.filter((e) => e.type !== "swap" && e.file !== "none" && e.file !== "swap");
}
