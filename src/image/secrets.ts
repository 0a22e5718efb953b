// Secrets: files made from Pulumi's encrypted stack config, never from git. The declared
// system says which files exist (system/secrets: path, mode, owner, config key); each stack's
// encrypted config holds the values. They travel in an initramfs layer of their own, appended
// after the rootfs segments, so changing a secret rebuilds only that layer and the UKI.
//
// What is protected: the values are encrypted in the stack config and in the Pulumi state, the
// layer and every artifact that contains it are mode 0600 in the store (and on the host),
// nothing prints them, and the layer's name is an HMAC with a per-store key, so a hash in the
// state or in the store cannot be used to test a guess of a low-entropy secret (a password
// hash, a short key). The layer also holds the stack's random salt (ramroot:secretsSalt, a
// stack secret): the rest of the image is reproducible from git and public packages, so without
// the salt the sha256 of a UKI, which the state and the boot records hold in the clear, would
// let anyone test guesses of the values offline.
// What is not: whoever holds the boot stick (or the UKI file) can read the image.
import { createHmac, randomBytes } from "node:crypto";
import { temporaryName } from "../store";
import { readFileSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import * as zlib from "node:zlib";
import { promisify } from "node:util";
import { encodeNewc, type NewcRecord } from "./newc";

export type SecretDecl =
  | { kind: "file"; path: string; mode: number; owner: string; key: string; line: number }
  | { kind: "password"; user: string; key: string; line: number };

const KEY_RE = /^[A-Za-z][A-Za-z0-9_]*$/;

/**
 * Parses system/secrets:
 *   file PATH MODE OWNER CONFIG-KEY     PATH in the image, e.g. file /etc/ssh/ssh_host_ed25519_key 0600 root sshHostKey
 *   password USER CONFIG-KEY            USER's password hash in /etc/shadow, e.g. password root rootPasswordHash
 * OWNER is root, a user name of the rootfs (user or user:group), or uid:gid.
 */
export function parseSecrets(text: string, file: string): SecretDecl[] {
  const out: SecretDecl[] = [];
  const seen = new Set<string>();
  text.split("\n").forEach((raw, i) => {
    const line = i + 1;
    const words = raw.replace(/#.*/, "").trim().split(/\s+/).filter(Boolean);
    if (words.length === 0) return;
    const bad = (why: string) => new Error(`${file}:${line}: ${why}`);
    if (words[0] === "file") {
      if (words.length !== 5) throw bad(`expected "file PATH MODE OWNER CONFIG-KEY", got "${raw.trim()}"`);
      const [, p, mode, owner, key] = words;
      if (!p.startsWith("/") || p.split("/").includes("..") || p === "/") throw bad(`${p} is not an absolute path inside the image (like /etc/ssh/ssh_host_ed25519_key)`);
      if (!/^0?[0-7]{3}$/.test(mode)) throw bad(`mode ${mode} is not octal like 0600`);
      if (!/^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$/.test(owner)) throw bad(`owner ${owner}: use root, USER, USER:GROUP or UID:GID`);
      if (!KEY_RE.test(key)) throw bad(`config key ${key}: use letters, digits and _ (set it with pulumi config set --secret ramroot:${key} ...)`);
      const norm = path.posix.normalize(p);
      if (seen.has(norm)) throw bad(`${norm} is declared twice`);
      seen.add(norm);
      out.push({ kind: "file", path: norm, mode: parseInt(mode, 8), owner, key, line });
    } else if (words[0] === "password") {
      if (words.length !== 3) throw bad(`expected "password USER CONFIG-KEY", got "${raw.trim()}"`);
      const [, user, key] = words;
      if (!KEY_RE.test(key)) throw bad(`config key ${key}: use letters, digits and _`);
      if (seen.has("/etc/shadow")) throw bad(`/etc/shadow is declared twice`);
      if (out.some((d) => d.kind === "password" && d.user === user)) throw bad(`the password of ${user} is declared twice`);
      out.push({ kind: "password", user, key, line });
    } else {
      throw bad(`unknown directive ${words[0]}: use "file" or "password"`);
    }
  });
  if (out.some((d) => d.kind === "password") && seen.has("/etc/shadow")) throw new Error(`${file}: /etc/shadow is both a secret file and edited by a password line`);
  return out;
}

/** The per-store HMAC key, created on first use, readable only by its owner. */
export async function hmacKey(storeRoot: string): Promise<Buffer> {
  const dir = path.join(storeRoot, "keys");
  const file = path.join(dir, "secrets-hmac");
  try {
    return await fs.readFile(file);
  } catch (e: any) {
    if (e.code !== "ENOENT") throw e;
  }
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = temporaryName(file);
  await fs.writeFile(tmp, randomBytes(32), { mode: 0o600 });
  // link() keeps the first key if two processes race.
  await fs.link(tmp, file).catch((e) => {
    if (e.code !== "EEXIST") throw e;
  });
  await fs.rm(tmp, { force: true });
  return fs.readFile(file);
}

/** Names the layer without revealing anything about the values to whoever lacks the key. */
export function secretsDigest(key: Buffer, parts: unknown): string {
  return createHmac("sha256", key).update(JSON.stringify(parts)).digest("hex");
}

/** /etc/shadow with USER's password field replaced, every other line kept. */
export function replaceShadowEntry(shadow: string, user: string, passwordHash: string): string {
  if (/[:\n]/.test(passwordHash)) throw new Error(`the password hash for ${user} contains ':' or a newline: give a crypt(3) hash such as the output of mkpasswd -m sha-512`);
  let found = false;
  const lines = shadow.split("\n").map((l) => {
    const f = l.split(":");
    if (f[0] !== user || f.length < 2) return l;
    found = true;
    f[1] = passwordHash;
    return f.join(":");
  });
  if (!found) throw new Error(`/etc/shadow of the rootfs has no entry for ${user}: add the user in the rootfs (setup.sh) before setting its password`);
  return lines.join("\n");
}

interface Ids { users: Map<string, [number, number]>; groups: Map<string, number> }

async function readIds(rootfs: string): Promise<Ids> {
  const read = (f: string) => fs.readFile(path.join(rootfs, f), "utf8").catch(() => "");
  const users = new Map<string, [number, number]>([["root", [0, 0]]]);
  const groups = new Map<string, number>([["root", 0]]);
  for (const l of (await read("etc/passwd")).split("\n")) {
    const f = l.split(":");
    if (f.length >= 4) users.set(f[0], [Number(f[2]), Number(f[3])]);
  }
  for (const l of (await read("etc/group")).split("\n")) {
    const f = l.split(":");
    if (f.length >= 3) groups.set(f[0], Number(f[2]));
  }
  return { users, groups };
}

function owner(spec: string, ids: Ids, where: string): [number, number] {
  const [u, g] = spec.split(":");
  const uid = /^\d+$/.test(u) ? Number(u) : ids.users.get(u)?.[0];
  if (uid === undefined) throw new Error(`${where}: the rootfs has no user ${u} (etc/passwd)`);
  const gid = g === undefined ? (/^\d+$/.test(u) ? uid : ids.users.get(u)![1]) : /^\d+$/.test(g) ? Number(g) : ids.groups.get(g);
  if (gid === undefined) throw new Error(`${where}: the rootfs has no group ${g} (etc/group)`);
  return [uid, gid];
}

/**
 * Writes the secrets layer: a newc archive of the declared files (and of /etc/shadow when a
 * password is declared), compressed like the rest of the initramfs, mode 0600. Parent folders
 * that the rootfs lacks are created (0755 root); existing ones are repeated with the rootfs's
 * own mode and owner, since the kernel applies an archive's folder entry to an existing folder.
 * Errors never contain a value.
 */
export async function writeSecretsLayer(opts: {
  decls: SecretDecl[];
  values: Record<string, string>;
  /** The stack's salt: its bytes are in the layer, so the image cannot be predicted without it. */
  salt: string;
  rootfs: string;
  compression: "zstd" | "gzip" | "none";
  out: string;
  declFile: string;
}): Promise<void> {
  const ids = await readIds(opts.rootfs);
  const files = new Map<string, { data: Buffer; mode: number; uid: number; gid: number }>();
  for (const d of opts.decls) {
    const value = opts.values[d.key];
    if (value === undefined) throw new Error(`${opts.declFile}:${d.line}: ramroot:${d.key} is not set: pulumi config set --secret ramroot:${d.key} ...`);
    if (d.kind === "file") {
      const [uid, gid] = owner(d.owner, ids, `${opts.declFile}:${d.line}`);
      files.set(d.path.slice(1), { data: Buffer.from(value), mode: d.mode, uid, gid });
    } else {
      const shadowPath = path.join(opts.rootfs, "etc", "shadow");
      const st = await fs.lstat(shadowPath).catch(() => undefined);
      if (!st?.isFile()) throw new Error(`${opts.declFile}:${d.line}: the rootfs has no /etc/shadow to set ${d.user}'s password in`);
      const prev = files.get("etc/shadow");
      const text = prev ? prev.data.toString() : await fs.readFile(shadowPath, "utf8");
      files.set("etc/shadow", { data: Buffer.from(replaceShadowEntry(text, d.user, value)), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid });
    }
  }
  if (opts.salt.length < SALT_MIN) throw new Error(`ramroot:secretsSalt is shorter than ${SALT_MIN} characters: ${saltCommand("STACK")}`);
  files.set(SALT_PATH, { data: Buffer.from(opts.salt + "\n"), mode: 0o400, uid: 0, gid: 0 });
  const dirs = new Set<string>();
  for (const name of files.keys()) for (let d = path.posix.dirname(name); d !== "."; d = path.posix.dirname(d)) dirs.add(d);
  const records: NewcRecord[] = [];
  const entry = (name: string, mode: number, uid: number, gid: number, data?: Buffer): NewcRecord => ({
    name, mode, uid, gid, nlink: data ? 1 : 2, mtime: 0, ino: records.length + 1, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: data?.length ?? 0, data,
  });
  for (const name of [...dirs, ...files.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))) {
    const f = files.get(name);
    if (f) {
      records.push(entry(name, 0o100000 | f.mode, f.uid, f.gid, f.data));
      continue;
    }
    const st = await fs.lstat(path.join(opts.rootfs, name)).catch(() => undefined);
    if (st && !st.isDirectory()) throw new Error(`${opts.declFile}: /${name} is not a folder in the rootfs, so no secret can go under it`);
    records.push(st ? entry(name, 0o040000 | (st.mode & 0o7777), st.uid, st.gid) : entry(name, 0o040755, 0, 0));
  }
  const chunks: Buffer[] = [];
  for await (const c of encodeNewc(records)) chunks.push(Buffer.from(c));
  const raw = Buffer.concat(chunks);
  const packed =
    opts.compression === "zstd" ? await promisify(zlib.zstdCompress)(raw)
    : opts.compression === "gzip" ? await promisify(zlib.gzip)(raw, { level: 9 })
    : raw;
  await fs.writeFile(opts.out, packed, { mode: 0o600 });
}

/** Where the salt is in the image. */
export const SALT_PATH = "etc/ramroot/secrets.salt";
export const SALT_MIN = 32;
/** How to give a stack its salt (npm run pulumi does it when it creates a stack). */
export const saltCommand = (stack: string) => `pulumi config set --secret ramroot:secretsSalt "$(openssl rand -hex 32)" --stack ${stack}`;

/** For the program, which runs synchronously: the declarations of a system folder. */
export function readSecretsDeclSync(systemDir: string): SecretDecl[] {
  const file = path.join(systemDir, "secrets");
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch (e: any) {
    if (e.code !== "ENOENT") throw e;
  }
  return parseSecrets(text, file);
}
