// A build's identity inside the image. The build id is derived from everything that goes into
// the UKI (rootfs, initramfs options, kernel, stub, cmdline), so two builds of the same inputs
// carry the same id and a running system can say exactly which build it is: `. /etc/os-release;
// echo $BUILD_ID`, or /etc/ramroot-release. The files travel in a small extra initrd member
// appended after the rootfs segments, so the rootfs segments stay byte-identical across builds.
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

/** An uncompressed newc archive of a few regular files (into folders the rootfs already has). */
export async function smallArchive(files: Array<{ name: string; content: string; mode?: number }>): Promise<Buffer> {
  const records: NewcRecord[] = files.map((f, i) => {
    const data = Buffer.from(f.content);
    return { name: f.name, mode: 0o100000 | (f.mode ?? 0o644), uid: 0, gid: 0, nlink: 1, mtime: 0, ino: i + 1, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: data.length, data };
  });
  const chunks: Buffer[] = [];
  for await (const c of encodeNewc(records)) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks);
}
