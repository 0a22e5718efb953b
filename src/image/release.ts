// A build's identity inside the image. The build id is derived from everything that goes into
// the UKI (rootfs, initramfs options, kernel, stub, cmdline), so two builds of the same inputs
// carry the same id and a running system can say exactly which build it is: `. /etc/os-release;
// echo $BUILD_ID`, or /etc/ramroot-release. The files travel in a small extra initrd member
// appended after the rootfs segments, so the rootfs segments stay byte-identical across builds.
// The same member carries ramroot's health report (src/boot/health.ts).
import { encodeNewc, type NewcRecord } from "./newc";

export function buildIdOf(ukiHash: string): string {
  return ukiHash.slice(0, 16);
}

/** os-release text with ramroot's identity lines replacing any earlier ones. */
export function osReleaseWithBuild(text: string | undefined, buildId: string): string {
  const keep = (text ?? 'NAME="ramroot"\nID=ramroot\n').split("\n").filter((l) => l.trim() !== "" && !/^(BUILD_ID|IMAGE_ID|IMAGE_VERSION)=/.test(l));
  return [...keep, "IMAGE_ID=ramroot", `IMAGE_VERSION=${buildId}`, `BUILD_ID=${buildId}`, ""].join("\n");
}

export function releaseFile(fields: Record<string, string>): string {
  return Object.entries(fields).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join("\n") + "\n";
}

/**
 * An uncompressed newc archive of a few regular files, symbolic links and folders, owned by root. A file's
 * parent must be in the rootfs or listed before it (the kernel makes no missing parents). A
 * folder entry for a folder the rootfs has sets its mode and owner, so list only new ones.
 */
export async function smallArchive(files: Array<{ name: string; content?: string; link?: string; mode?: number; dir?: boolean }>): Promise<Buffer> {
  const records: NewcRecord[] = files.map((f, i) => {
    // A symbolic link's data is its target.
    const data = Buffer.from(f.dir ? "" : f.link ?? f.content ?? "");
    const type = f.dir ? 0o040000 : f.link !== undefined ? 0o120000 : 0o100000;
    return { name: f.name, mode: type | (f.mode ?? (f.dir ? 0o755 : 0o644)), uid: 0, gid: 0, nlink: f.dir ? 2 : 1, mtime: 0, ino: i + 1, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: data.length, data };
  });
  const chunks: Buffer[] = [];
  for await (const c of encodeNewc(records)) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks);
}
