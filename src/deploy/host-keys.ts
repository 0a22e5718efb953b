// Pinned SSH host keys: parsed from known_hosts, ssh-keyscan or .pub text, and named by the
// fingerprint `ssh-keygen -l` prints.
import { createHash } from "node:crypto";

export interface PinnedKey { type: string; blob: Buffer }

/** Parses known_hosts / ssh-keyscan / .pub lines: the "TYPE BASE64" pair on each, whatever surrounds it. */
export function parseHostKeys(text: string): PinnedKey[] {
  const keys: PinnedKey[] = [];
  for (const line of text.split(/\r?\n/)) {
    const words = line.trim().split(/\s+/);
    if (!words[0] || words[0].startsWith("#")) continue;
    const i = words.findIndex((w, j) => /^(ssh-|ecdsa-sha2-|sk-)/.test(w) && j + 1 < words.length && /^[A-Za-z0-9+/]+={0,2}$/.test(words[j + 1]));
    if (i < 0) throw new Error(`not an SSH public key (expected "ssh-ed25519 AAAA..."): ${JSON.stringify(line.trim().slice(0, 40))}`);
    const blob = Buffer.from(words[i + 1], "base64");
    // The blob starts with its own type name (uint32 length + name): it must agree.
    const n = blob.length >= 4 ? blob.readUInt32BE(0) : -1;
    const inner = n > 0 && n < 64 && blob.length >= 4 + n ? blob.subarray(4, 4 + n).toString("latin1") : "";
    if (inner !== words[i]) throw new Error(`SSH public key of type ${words[i]} holds a ${inner || "malformed"} key`);
    keys.push({ type: words[i], blob });
  }
  if (!keys.length) throw new Error("no SSH host key given (pin one: ssh-keyscan -t ed25519 HOST)");
  return keys;
}

export function blobFingerprint(blob: Buffer): string {
  return "SHA256:" + createHash("sha256").update(blob).digest("base64").replace(/=+$/, "");
}

/** "SHA256:..." as `ssh-keygen -lf` prints it, for the (first) key in `hostKey`. */
export function fingerprint(hostKey: string): string {
  return blobFingerprint(parseHostKeys(hostKey)[0].blob);
}

/** The host key algorithms to ask for: the pinned keys' types, so a server with several keys presents a pinned one. */
export function hostKeyAlgorithms(keys: PinnedKey[]): string[] {
  const algs = new Set<string>();
  for (const k of keys) {
    if (k.type === "ssh-rsa") ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"].forEach((a) => algs.add(a));
    else algs.add(k.type);
  }
  return [...algs];
}
