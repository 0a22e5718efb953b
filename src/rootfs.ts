// The root filesystem tree: a base (an Alpine build, or a test tree made from Debian packages)
// with the declared system's skeleton copied over it, as alpine-make-rootfs does with
// FS_SKEL_DIR: system/root/etc/x becomes /etc/x, modes kept, owned by root.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";

/**
 * A content hash of a tree: names, types, permission bits, owners, link targets, device
 * numbers and file contents, in sorted order. Timestamps are left out on purpose: they do not
 * reach the image (the initramfs normalises them), so touching a file must not rebuild.
 */
export async function hashTree(dir: string, opts: { rootOwned?: boolean } = {}): Promise<string> {
  const st = await fs.lstat(dir).catch(() => undefined);
  if (!st) throw new Error(`${dir} does not exist`);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
  const h = createHash("sha256");
  const visit = async (rel: string): Promise<void> => {
    const abs = path.join(dir, rel);
    const s = await fs.lstat(abs);
    const owner = opts.rootOwned ? "0:0" : `${s.uid}:${s.gid}`;
    const head = `${rel}\0${s.mode.toString(8)}\0${owner}\0`;
    if (s.isDirectory()) {
      h.update(head + "d\n");
      const names = (await fs.readdir(abs)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
      for (const n of names) await visit(rel ? `${rel}/${n}` : n);
    } else if (s.isSymbolicLink()) {
      h.update(head + "l" + (await fs.readlink(abs)) + "\n");
    } else if (s.isFile()) {
      h.update(head + `f${s.size}\0`);
      for await (const chunk of createReadStream(abs, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
      h.update("\n");
    } else {
      h.update(head + `r${s.rdev}\n`);
    }
  };
  await visit("");
  return h.digest("hex");
}

/** Copies `base` to `out` (an empty folder), then the skeleton over it, owned by root. */
export async function assembleRootfs(opts: { base: string; skeleton?: string; out: string }): Promise<void> {
  const { execa } = await import("execa");
  await execa("cp", ["-a", "--reflink=auto", `${opts.base}/.`, opts.out]);
  if (opts.skeleton) {
    await execa("cp", ["-a", "--remove-destination", `${opts.skeleton}/.`, opts.out]);
    if (process.getuid?.() === 0) {
      for (const rel of await listTree(opts.skeleton)) await fs.lchown(path.join(opts.out, rel), 0, 0);
    }
  }
  // The tree's own folder becomes / in the booted system.
  await fs.chmod(opts.out, 0o755);
}

async function listTree(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    out.push(r);
    if (e.isDirectory()) out.push(...(await listTree(dir, r)));
  }
  return out;
}

/**
 * The real path of `rel` inside the tree `root`, following symlinks as the booted system
 * would: an absolute link target is inside the tree, never on the build host.
 */
export async function resolveInRoot(root: string, rel: string): Promise<string> {
  let parts = rel.split("/").filter((p) => p && p !== ".");
  const done: string[] = [];
  for (let hops = 0; parts.length > 0; ) {
    const part = parts.shift()!;
    if (part === "..") {
      done.pop();
      continue;
    }
    const abs = path.join(root, ...done, part);
    const st = await fs.lstat(abs).catch(() => undefined);
    if (st?.isSymbolicLink()) {
      if (++hops > 40) throw new Error(`${rel}: too many levels of symbolic links in ${root}`);
      const target = await fs.readlink(abs);
      if (target.startsWith("/")) done.length = 0;
      parts = [...target.split("/").filter((p) => p && p !== "."), ...parts];
      continue;
    }
    done.push(part);
  }
  return path.join(root, ...done);
}
