// Deploys a boot image to a host over SSH: replaces EFI/BOOT/BOOTAA64.EFI on its USB stick
// atomically, verified by hash, keeping the replaced image as `.prev` so that it can be rolled back.
//
// Only ssh2 (no OpenSSH client) and, on the host, POSIX sh with commands that both GNU coreutils
// and busybox have: sha256sum, df -Pk, ls -ln, cp, ln, mv, rm, sync, test. Where the host has
// `openssl`, files are hashed with `openssl dgst -sha256` (same sha256, several times faster
// where the CPU has SHA instructions), else with sha256sum.
//
// The host's key is pinned: the connection is refused before authentication unless the server
// presents exactly the pinned key. Nothing is sent then.
//
// Files on the host, for the target path P (default /media/usb/EFI/BOOT/BOOTAA64.EFI):
//   P                 the boot image; never deleted, only replaced by rename within its folder
//   P.prev            the image P held before the last deploy (or rollback)
//   P.ramroot-new     upload / copy in progress (a temporary; may be partial)
//   P.ramroot-prev    P on its way to P.prev: a hard link to P, or where the filesystem has
//                     none (FAT), a copy (a temporary; may be partial)
// Temporaries are verified by sha256 on the host before they are renamed, and removed or
// replaced by the next run. At every point the target path holds a complete image: the old one
// until the final rename, the new one after it.
//
// Deploy order. One remote shell does the host's part of a deploy (a login shell can cost more
// than the work: it starts once). In the background it reads the state: sha256 of P, its size,
// the sha256 of P.prev only where it may equal P (same size), a leftover P.ramroot-new. Meanwhile
// it takes commands on its stdin, in order: `verify` syncs and hashes P.ramroot-new; `prev` links
// P to P.ramroot-prev (where links fail: copies, syncs and verifies it); `commit`, only after a
// verify that gave the new image's sha256, renames P.ramroot-prev to P.prev (sync), then
// P.ramroot-new to P (sync). Meanwhile the client writes P.ramroot-new over SFTP:
//   - a delta, when one of the local `bases` (e.g. the image deployed last time) is the host's
//     current image (same sha256) and the server has the SFTP copy-data extension (OpenSSH >= 9.0):
//     the ranges the new image shares with it (content-defined chunks, src/delta.ts) are copied
//     on the host from P, only the rest is sent. Where the host's image has a base's size, this
//     starts before its hash is known, so the host copies (and verifies) while it hashes; bytes
//     of the image are only sent once the host's image is known not to be the new one (other
//     size, other bytes where ours are to be sent, read back, or its hash). A delta that does not
//     verify (a base that is not what it claims) is followed by a full upload.
//   - else the whole file (SFTP, or `cat` on a server without SFTP).
// Running deployImage again after any failure finishes the job (a verified upload is reused;
// a .prev that already equals P is left alone). A failed upload leaves P.prev as it was.
//
// In src/deploy/: the SSH session (ssh-session.ts, host-keys.ts), the line protocol of a remote
// script (conversation.ts), free space (space.ts), the delta writer (delta-upload.ts).
import * as fs from "node:fs";
import type { SFTPWrapper } from "ssh2";
import { chunkFile, chunkListOf, computeDelta, writeChunkCache, type ChunkList, type Delta } from "./delta";
import { peMachine } from "./pe";
import { Conversation } from "./deploy/conversation";
import { differsWhereSent, writeDelta } from "./deploy/delta-upload";
import { DEFAULT_PATH, DEFAULT_TIMEOUT_MS, sftpCall, shq, withSession, type Log, type Session, type SshTarget } from "./deploy/ssh-session";
import { mb, parseDf, spaceCheck, type DfSpace } from "./deploy/space";

export { DEFAULT_PATH, shq, type Log, type SshTarget } from "./deploy/ssh-session";
export { fingerprint, parseHostKeys } from "./deploy/host-keys";
export { parseDf, spaceCheck, type DfSpace } from "./deploy/space";

export interface RemoteState {
  /** sha256 (hex) of the file at the target path; undefined when there is none. */
  sha256?: string;
  size?: number;
  /** sha256 of path.prev; undefined when there is none. */
  prevSha256?: string;
  prevSize?: number;
}

export interface DeployResult {
  /** false when the host already had this image (nothing was sent). */
  changed: boolean;
  /** Image bytes uploaded (0 when unchanged or when a verified upload from an interrupted run was reused). */
  bytesSent: number;
  /** sha256 of the image now kept as path.prev (undefined when there is none). */
  previous?: string;
  /** Wall time of the upload alone, or of writing the delta (0 when nothing was sent). */
  uploadMs: number;
  /**
   * Only when the new image was written from a delta: the base (sha256 of the host's image it
   * was built from), the bytes copied on the host from it, the bytes sent, the number of ranges.
   */
  delta?: { base: string; copied: number; literal: number; ranges: number };
}

/** A local file that may be the host's current image. */
export interface DeployBase {
  path: string;
  /** Its sha256 (hex), when known; computed (once per chunk cache) otherwise. */
  sha256?: string;
}

export interface DeployOptions {
  /**
   * Local files that may hold what the host has now, e.g. the image deployed there last time.
   * When the host's image has the sha256 of one of them and the server has the SFTP copy-data
   * extension (OpenSSH >= 9.0), only the bytes the new image does not share with it are sent;
   * the rest is copied on the host. Missing files are skipped.
   */
  bases?: Array<string | DeployBase>;
  /**
   * A folder for chunk lists by sha256 (src/delta.ts), e.g. the store's cache/chunks: a base
   * listed there is not read again, and the list of the image deployed now is kept for the next
   * deploy (computed during a full upload, too).
   */
  chunkCache?: string;
}


// ---------------------------------------------------------------------------------------------
// Remote shell


/**
 * Shell functions every remote script starts with. h: sha256 of a regular file, "-" if absent
 * (openssl where it works, else sha256sum).
 * sz: size in bytes, "-" if absent. flush: sync the named files if sync takes names (GNU, busybox
 * >= 1.27), else everything; flushdir: the same for a renamed file and its folder.
 */
const PRELUDE = `set -u
# The image holds the secrets layer: readable by root only, whatever the login's umask.
umask 077
die() { printf 'ramroot: %s\\n' "$*" >&2; exit 1; }
h() {
  if [ -f "$1" ]; then
    r=$(openssl dgst -sha256 -r < "$1" 2>/dev/null) || r=; r=\${r%% *}
    case $r in *[!0-9a-f]*) r= ;; esac
    [ \${#r} = 64 ] || { r=$(sha256sum < "$1") || die "sha256sum $1 failed"; r=\${r%% *}; }
    printf '%s' "$r"
  elif [ -e "$1" ]; then die "$1 is not a regular file"; else printf -; fi
}
sz() { if [ -f "$1" ]; then set -f; set -- $(ls -ln "$1"); set +f; printf '%s' "$5"; else printf -; fi; }
flush() { sync "$@" 2>/dev/null || sync; }
# After a rename: the folder holds the new directory entry; sync it and the file.
flushdir() { sync "$1" "\${1%/*}" 2>/dev/null || sync; }
`;


/** Runs a POSIX sh script (via `sh -c`, whatever the login shell); resolves stdout, rejects on a non-zero exit with stderr. */
function run(s: Session, name: string, script: string, ioBytes = 0): Promise<string> {
  return s.exec(name, ["sh", "-c", PRELUDE + script], ioBytes);
}

/** Starts a POSIX sh script that talks: it prints lines, and reads commands from its stdin. */
async function converse(s: Session, name: string, script: string): Promise<Conversation> {
  return new Conversation((n, ms, fn) => s.step(n, ms, fn), await s.spawn(name, ["sh", "-c", PRELUDE + script]));
}

/**
 * Uploads a local file to `remote` (truncating it). Progress lines every ~10%. The timeout is
 * an inactivity timeout: the step fails when no bytes were acknowledged for timeoutMs.
 */
async function upload(s: Session, file: string, remote: string, size: number, log: Log): Promise<void> {
  const started = Date.now();
  let reported = 0;
  const progress = (done: number) => {
    // One line per tenth reached (the highest one when a chunk crosses several).
    const tenth = size > 0 ? Math.floor((done * 10) / size) : 10;
    if (tenth <= reported) return;
    reported = tenth;
    const secs = Math.max((Date.now() - started) / 1000, 1e-3);
    log(`upload ${tenth * 10}% (${mb(done)} of ${mb(size)}, ${(done / 1e6 / secs).toFixed(1)} MB/s)`);
  };
  const sftp = await s.sftp();
  if (sftp) {
    await s.step(`upload to ${remote}`, s.timeoutMs, (touch) => new Promise<void>((resolve, reject) => {
      // Many large writes in flight: throughput close to scp's, far above a naive stream.
      sftp.fastPut(file, remote, {
        concurrency: 16, chunkSize: 1024 * 1024, fileSize: size, mode: 0o600,
        step: (done) => { touch(); progress(done); },
      }, (err) => (err ? reject(err) : resolve()));
    }), true);
    if (size === 0) await run(s, `create ${remote}`, `: > ${shq(remote)}`);
  } else {
    log("the server has no SFTP subsystem: uploading through cat");
    await s.step(`upload to ${remote}`, s.timeoutMs, async (touch) => {
      const p = await s.spawn(`upload to ${remote}`, ["sh", "-c", `cat > ${shq(remote)}`]);
      const errOut: Buffer[] = [];
      p.stderr.on("data", (d: Buffer) => errOut.push(d));
      p.stdout.resume(); // cat prints nothing, but ssh2 only closes a channel whose output was read
      let done = 0;
      const rs = fs.createReadStream(file, { highWaterMark: 256 * 1024 });
      rs.on("data", (d) => { done += d.length; touch(); progress(done); });
      const failed = new Promise<never>((_, reject) => rs.on("error", reject));
      rs.pipe(p.stdin);
      const code = await Promise.race([p.exited, failed]);
      if (code !== 0) throw new Error(Buffer.concat(errOut).toString().trim() || `cat exited with ${code}`);
    }, true);
  }
}

function paths(t: SshTarget) {
  const p = t.path ?? DEFAULT_PATH;
  if (!p.startsWith("/") || p.endsWith("/") || p.includes("\0") || /\/\.\.?(\/|$)/.test(p)) {
    throw new Error(`deploy path must be an absolute file path, got ${JSON.stringify(p)}`);
  }
  const dir = p.slice(0, p.lastIndexOf("/")) || "/";
  return { p, dir, prev: `${p}.prev`, tnew: `${p}.ramroot-new`, tprev: `${p}.ramroot-prev` };
}


// ---------------------------------------------------------------------------------------------
// Probe: one remote command reads everything a decision needs.

interface Probe {
  cur: string | undefined; curSize: number | undefined;
  prev: string | undefined; prevSize: number | undefined;
  /** The upload temporary: its size, and its hash when its size equals `newSize`. */
  tnewSize: number | undefined; tnew: string | undefined;
  df?: DfSpace;
  /** With `heads`: the first HEAD_BYTES of the image and of path.prev, and the host's `uname -m`. */
  heads?: { cur: Buffer; prev: Buffer; uname: string };
}

/** Bytes of an image read to tell its architecture: the PE header is well inside them. */
const HEAD_BYTES = 4096;

async function probe(s: Session, opts: { newSize?: number; newSha?: string; cleanup?: boolean; df?: boolean; heads?: boolean }): Promise<Probe> {
  const { p, dir, prev, tnew, tprev } = paths(s.target);
  const script = `
p=${shq(p)}; d=${shq(dir)}
[ -d "$d" ] || die "folder $d does not exist"
# The files are hashed at the same time, each in a subshell that prints one short line.
line() { x=$(h "$2") || exit 1; printf '%s %s %s\\n' "$1" "$x" "$(sz "$2")"; }
line cur "$p" & j1=$!
line prev ${shq(prev)} & j2=$!
ns=$(sz ${shq(tnew)}); n=-
${opts.newSize !== undefined ? `[ "$ns" = ${opts.newSize} ] && { n=$(h ${shq(tnew)}) || exit 1; }` : ""}
wait $j1 || exit 1; wait $j2 || exit 1
printf 'new %s %s\\n' "$n" "$ns"
${opts.cleanup ? `rm -f ${shq(tprev)}; [ "$n" = ${opts.newSha ?? "-"} ] || rm -f ${shq(tnew)}` : ""}
${opts.heads ? `for f in cur:"$p" prev:${shq(prev)}; do printf 'head%s ' "\${f%%:*}"; f=\${f#*:}; [ ! -f "$f" ] || head -c ${HEAD_BYTES} "$f" | od -An -v -tx1 | tr -d ' \\n'; echo; done
printf 'uname %s\\n' "$(uname -m)"` : ""}
${opts.df ? `echo df; df -Pk "$d"` : ""}
`;
  const out = await run(s, `read the state of ${p}`, script, opts.newSize ?? 0);
  const [state, df] = out.split(/^df$/m);
  const get = (key: string) => {
    const m = new RegExp(`^${key} (\\S+) (\\S+)$`, "m").exec(state);
    if (!m) throw new Error(`${s.where}: unexpected answer from the host: ${JSON.stringify(out.slice(0, 300))}`);
    const num = (x: string) => (x === "-" ? undefined : Number(x));
    return { hash: m[1] === "-" ? undefined : m[1], size: num(m[2]) };
  };
  const cur = get("cur"), pv = get("prev"), nw = get("new");
  const text = (key: string) => new RegExp(`^${key} ?(.*)$`, "m").exec(state)?.[1] ?? "";
  return {
    cur: cur.hash, curSize: cur.size, prev: pv.hash, prevSize: pv.size, tnew: nw.hash, tnewSize: nw.size,
    df: df !== undefined ? parseDf(df) : undefined,
    heads: opts.heads ? { cur: Buffer.from(text("headcur"), "hex"), prev: Buffer.from(text("headprev"), "hex"), uname: text("uname") } : undefined,
  };
}

/**
 * The architecture an image at `p` must be for: the removable-media name says it (the firmware
 * boots EFI/BOOT/BOOTAA64.EFI on arm64, BOOTX64.EFI on x86_64), else the host's `uname -m`.
 */
export function bootArch(p: string, uname: string): { arch: string; because: string } {
  const name = p.slice(p.lastIndexOf("/") + 1);
  if (/^BOOTAA64\.EFI$/i.test(name)) return { arch: "aarch64", because: `${name} is the arm64 boot file` };
  if (/^BOOTX64\.EFI$/i.test(name)) return { arch: "x86_64", because: `${name} is the x86_64 boot file` };
  const arch = uname === "arm64" ? "aarch64" : uname;
  return { arch, because: `the host is ${uname}` };
}

/** The hash (and size) of the image at the target path and of path.prev: what refresh compares. */
export async function remoteState(t: SshTarget, log: Log = () => {}): Promise<RemoteState> {
  return withSession(t, log, async (s) => {
    const r = await probe(s, {});
    return { sha256: r.cur, size: r.curSize, prevSha256: r.prev, prevSize: r.prevSize };
  });
}

interface DeployState {
  cur?: string; curSize?: number;
  /** The sha256 of path.prev, when it was read (it is only when it may equal the current image). */
  prev?: string; prevSize?: number;
  /** path.prev is (or is known to be) a different image from the current one. */
  prevDiffers: boolean;
  /** The upload temporary: its size, and its hash when its size equals the new image's. */
  tnew?: string; tnewSize?: number;
  df: DfSpace;
}

/**
 * The remote half of a deploy (see the top of this file). It reads the state in the background
 * (printing it, then "@probed") while it takes commands on its stdin, one at a time:
 *   verify        sync and hash the upload temporary: "@verified SHA"
 *   prev SHA      link P to the .prev temporary, or copy it and check the copy has SHA: "@prev linked|copied"
 *   commit        (only after a verify that gave our sha256) rename the .prev temporary to .prev,
 *                 then the upload to P, syncing each: "@committed"
 *   hashprev      "@prevhash SHA" of .prev
 *   abort         remove the temporaries and exit
 * At the end of its stdin it exits, leaving what is there for the next run. A failure of the
 * state reading ends the whole script. `speculative`: the client may already be writing the
 * upload temporary, so the state reading leaves it alone.
 */
function deployScript(t: SshTarget, size: number, sha256: string, speculative: boolean): string {
  const { p, dir, prev, tnew, tprev } = paths(t);
  return `
p=${shq(p)}; v=${shq(prev)}; tn=${shq(tnew)}; tp=${shq(tprev)}; d=${shq(dir)}
[ -d "$d" ] || die "folder $d does not exist"
line() { x=$(h "$2") || exit 1; printf '%s %s %s\\n' "$1" "$x" "$(sz "$2")"; }
probe() {
  # .prev is hashed only when it may be the same image as P: no P, or the same size. "=": the same file.
  j2=
  if [ -e "$p" ] && [ -e "$v" ] && [ "$p" -ef "$v" ]; then printf 'prev = %s\\n' "$(sz "$v")"
  elif [ ! -e "$p" ] || [ "$(sz "$p")" = "$(sz "$v")" ]; then line prev "$v" & j2=$!
  else printf 'prev ? %s\\n' "$(sz "$v")"; fi
  j3=
  ${speculative ? `printf 'new - -\\n'` : `tnl() { ns=$(sz "$tn"); n=-; if [ "$ns" = ${size} ]; then n=$(h "$tn") || exit 1; fi; [ "$n" = ${sha256} ] || rm -f "$tn"; printf 'new %s %s\\n' "$n" "$ns"; }
  tnl & j3=$!`}
  line cur "$p" || return 1
  [ -z "$j2" ] || wait $j2 || return 1
  [ -z "$j3" ] || wait $j3 || return 1
  rm -f "$tp"
  echo df; df -Pk "$d" || return 1
  echo @probed
}
# The main shell waits in read: a failed probe ends it (its message is on stderr).
{ ( probe ) || kill $$; } &
made=; ok=
while IFS= read -r cmd; do
  case $cmd in
  verify)
    # Flush and hash at the same time (the hash reads the page cache).
    chmod 600 "$tn" 2>/dev/null # FAT has no modes (the NAS mounts it fmask=177)
    flush "$tn" & f=$!
    x=$(h "$tn") || exit 1
    wait $f
    ok=; [ "$x" != ${sha256} ] || ok=1
    echo "@verified $x" ;;
  "prev "*)
    rm -f "$tp"
    if ln "$p" "$tp" 2>/dev/null; then made=linked
    else
      cp "$p" "$tp" || die "copying $p to $tp failed"
      flush "$tp" & f=$!
      x=$(h "$tp") || exit 1
      wait $f
      [ "$x" = "\${cmd#prev }" ] || { rm -f "$tp"; die "the copy $tp of $p has sha256 $x, expected \${cmd#prev }"; }
      made=copied
    fi
    echo "@prev $made" ;;
  commit)
    [ "$ok" = 1 ] || die "$tn is not verified: not renaming it"
    # Two renames within the folder, each flushed. Between them P still holds the current image
    # and .prev the same image; a rerun leaves .prev alone and does the last one.
    if [ -n "$made" ]; then mv -f "$tp" "$v" || die "renaming $tp to $v failed"; flushdir "$v"; fi
    mv -f "$tn" "$p" || die "renaming $tn to $p failed"
    flushdir "$p"
    echo @committed; exit 0 ;;
  hashprev) echo "@prevhash $(h "$v")" ;;
  abort) rm -f "$tn" "$tp"; exit 0 ;;
  esac
done
`;
}

function parseDeployState(where: string, lines: string[]): DeployState {
  const i = lines.indexOf("df");
  const state = lines.slice(0, i < 0 ? lines.length : i);
  const get = (key: string) => {
    const l = state.find((x) => x.startsWith(`${key} `));
    const m = l && /^\S+ (\S+) (\S+)$/.exec(l);
    if (!m || i < 0) throw new Error(`${where}: unexpected answer from the host: ${JSON.stringify(lines.join("\n").slice(0, 300))}`);
    return { hash: m[1] === "-" ? undefined : m[1], size: m[2] === "-" ? undefined : Number(m[2]) };
  };
  const cur = get("cur"), pv = get("prev"), nw = get("new");
  const prev = pv.hash === "=" ? cur.hash : pv.hash === "?" ? undefined : pv.hash;
  return {
    cur: cur.hash, curSize: cur.size, prev, prevSize: pv.size, prevDiffers: pv.hash === "?" || (pv.hash !== "=" && pv.hash !== cur.hash),
    tnew: nw.hash, tnewSize: nw.size, df: parseDf(lines.slice(i + 1).join("\n")),
  };
}


interface Candidate { path: string; sha256?: string; size: number }

/**
 * Puts `file` (whose sha256 is `sha256`, hex) at the target path unless the host already has it.
 * With `opts.bases`, sends only a delta when the host's image is one of them. See the top of this
 * file for the order of the steps and why each failure leaves a bootable host.
 */
export async function deployImage(t: SshTarget, file: string, sha256: string, log: Log = () => {}, opts: DeployOptions = {}): Promise<DeployResult> {
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`deployImage: sha256 must be 64 lowercase hex digits, got ${JSON.stringify(sha256)}`);
  const size = (await fs.promises.stat(file)).size;
  const { p, dir, prev, tnew } = paths(t);

  // The bases that exist (a base that is the new image itself is no use).
  const cands: Candidate[] = [];
  for (const b of opts.bases ?? []) {
    const c = typeof b === "string" ? { path: b } : b;
    if (c.sha256 === sha256) continue;
    const st = await fs.promises.stat(c.path).catch(() => undefined);
    if (st?.isFile()) cands.push({ path: c.path, sha256: c.sha256, size: st.size });
    else log(`base ${c.path}: not found, not used`);
  }
  // Chunk lists (src/delta.ts) and deltas, each computed once; base lists from the cache when there.
  const lists = new Map<Candidate, Promise<ChunkList>>();
  const listOf = (c: Candidate) => {
    let l = lists.get(c);
    if (!l) {
      l = chunkListOf(c.path, { sha256: c.sha256, cacheDir: opts.chunkCache, verify: true });
      l.catch(() => {});
      lists.set(c, l);
    }
    return l;
  };
  const shaOf = async (c: Candidate) => c.sha256 ?? (await listOf(c)).sha256;
  const deltas = new Map<Candidate, Promise<{ next: ChunkList; delta: Delta }>>();
  const deltaOf = (c: Candidate) => {
    let d = deltas.get(c);
    if (!d) {
      d = listOf(c).then(async (base) => {
        const next = await chunkFile(file, { like: base, likeFile: c.path });
        return { next, delta: computeDelta(base, next) };
      });
      d.catch(() => {});
      deltas.set(c, d);
    }
    return d;
  };
  // The first base is the likely one: its delta is worked out while the connection is made.
  if (cands.length) deltaOf(cands[0]);

  return withSession(t, log, async (s) => {
    const timeout = s.timeoutMs;
    let sftp: SFTPWrapper | undefined;
    let copyData = false;
    // Speculation: when the host's image has the size of a base, the delta is written while the
    // host hashes its image (copies from it right away; the bytes of ours only once the image is
    // known not to be ours: its size differs from ours, its bytes where ours go differ, or its
    // hash says so).
    let specBase: Candidate | undefined;
    let specRoom = false;
    let curSftpSize: number | undefined;
    if (cands.length) {
      sftp = await s.sftp();
      copyData = (sftp as any)?._extensions?.["copy-data"] === "1";
      if (sftp && copyData) {
        const stat = (f: string) => sftpCall<any>((cb) => sftp!.stat(f, cb)).catch(() => undefined);
        const room = sftpCall<any>((cb) => (sftp as any).ext_openssh_statvfs(dir, cb)).then((v) => Number(v.f_bavail) * Number(v.f_frsize), () => undefined);
        const [cur, tn, avail] = await Promise.all([stat(p), stat(tnew), room.catch(() => undefined)]);
        curSftpSize = cur?.isFile() ? cur.size : undefined;
        specBase = curSftpSize !== undefined ? cands.find((c) => c.size === curSftpSize) : undefined;
        specRoom = avail !== undefined && spaceCheck(avail, [["new image", size], ["copy", curSftpSize ?? 0]]).ok;
        // A leftover temporary of our size may be a verified upload: the probe decides about it.
        if (tn?.size === size || !specRoom) specBase = undefined;
      }
    }

    const conv = await converse(s, `read the state of ${p}`, deployScript(t, size, sha256, !!specBase));
    let verifies = 0;
    // Host-side bytes the remote script may go through before it answers a verify (a .prev copy, 3 passes).
    let prevIo = 0;
    const verify = () => { conv.send("verify"); verifies++; };
    const verified = async () => {
      let r: { line: string } | undefined;
      for (; verifies > 0; verifies--) r = await conv.expect(`verify ${tnew}`, timeout + Math.ceil((2 * size + prevIo) / 1024), "@verified");
      return r?.line.slice(10);
    };
    // The bases whose delta could not be worked out here (unreadable, or not what their sha256 says).
    const unusable = new Set<Candidate>();
    const writeFrom = (c: Candidate, gate: Promise<boolean>) => s.step(`write ${tnew} (delta)`, timeout, async (touch) => {
      let d: { next: ChunkList; delta: Delta };
      try {
        d = await deltaOf(c);
      } catch (e: any) {
        unusable.add(c);
        log(`no delta from ${c.path}: ${e.message}`);
        return undefined;
      }
      if (d.delta.copied === 0) {
        unusable.add(c);
        log(`no delta from ${c.path}: the images have no chunk in common`);
        return undefined;
      }
      const t0 = performance.now();
      const sent = await writeDelta(sftp!, p, tnew, file, d.delta, gate, touch);
      if (sent >= 0) verify();
      return { ...d, sent, ms: performance.now() - t0 };
    }, true);
    let gate: (go: boolean) => void = () => {};
    let spec: Promise<{ sent: number; next: ChunkList; delta: Delta; ms: number } | undefined> | undefined;
    if (specBase) {
      const gateP = new Promise<boolean>((r) => { gate = r; });
      if (curSftpSize !== size) gate(true);
      // Of our size: if its bytes differ from ours where we send some, it is not ours either.
      else deltaOf(specBase).then((d) => differsWhereSent(sftp!, p, file, d.delta)).then((yes) => { if (yes) gate(true); }, () => {});
      spec = writeFrom(specBase, gateP);
      spec.catch(() => {});
    }

    let st: DeployState;
    try {
      const probed = await conv.expect(`read the state of ${p}`, timeout + Math.ceil(2 * size / 1024), "@probed");
      st = parseDeployState(s.where, probed.before);
    } catch (err) {
      gate(false);
      throw err;
    }
    if (st.cur === sha256) {
      gate(false);
      await spec?.catch(() => {});
      let previous = st.prev;
      try {
        if (previous === undefined && st.prevSize !== undefined) {
          conv.send("hashprev");
          const r = await conv.expect(`read the hash of ${prev}`, timeout + Math.ceil(st.prevSize / 1024), "@prevhash");
          previous = r.line.slice(10);
        }
      } finally {
        // Only host-side copies were made, if any: take them away.
        if (spec) await conv.finish("abort"); else conv.end();
      }
      log(`${p} on ${s.where} already is ${sha256.slice(0, 12)}: nothing to send`);
      return { changed: false, bytesSent: 0, previous, uploadMs: 0 };
    }
    log(`${p} on ${s.where}: ${st.cur ? st.cur.slice(0, 12) : "absent"} -> ${sha256.slice(0, 12)}`);
    const reuse = !specBase && st.tnew === sha256;
    const copyPrev = st.cur !== undefined && st.prevDiffers;
    if (!specBase) {
      // The temporaries that were not reusable were just removed; what remains must fit next to
      // the current image and the .prev (which is only replaced at the end). (A speculative delta
      // checked this before it started, and is filling the space now.)
      const space = spaceCheck(st.df.available, [["new image", reuse ? 0 : size], ["copy of the current image", copyPrev ? st.curSize ?? 0 : 0]]);
      if (!space.ok) {
        conv.end();
        throw new Error(
          `${s.where}: not enough space in ${dir} (${st.df.mountedOn}): need ${mb(space.need)} (${space.detail}), ` +
          `${mb(st.df.available)} available. The current image and ${prev} stay where they are; free space on that ` +
          `filesystem (e.g. remove ${prev} if you do not need a rollback) and deploy again.`);
      }
    }

    let bytesSent = 0;
    let uploadMs = 0;
    let deltaInfo: DeployResult["delta"];
    let nextList: ChunkList | undefined;
    let fullList: Promise<ChunkList | undefined> | undefined;
    const fullUpload = async () => {
      // The chunk list of what is deployed now, for the next deploy's delta (CPU beside the network).
      if (opts.chunkCache && !fullList) fullList = chunkFile(file).catch(() => undefined);
      const t0 = performance.now();
      await upload(s, file, tnew, size, log);
      uploadMs += performance.now() - t0;
      bytesSent += size;
      verify();
    };
    try {
      // .prev: a hard link (or a verified copy) of the current image, made while the new one is written.
      if (copyPrev) {
        conv.send(`prev ${st.cur}`);
        prevIo = 3 * (st.curSize ?? 0);
      }

      // Which base is the host's image?
      let base: Candidate | undefined;
      if (!reuse && st.cur && copyData) {
        for (const c of cands) {
          if (c.size === st.curSize && (await shaOf(c).catch(() => undefined)) === st.cur) { base = c; break; }
        }
      }
      let written: { sent: number; next: ChunkList; delta: Delta; ms: number } | undefined;
      if (spec) {
        gate(specBase === base);
        const w = await spec.catch((e) => (specBase === base ? Promise.reject(e) : undefined));
        if (specBase === base) written = w;
        else {
          log(`${p} on ${s.where} is not ${specBase!.path} (same size, other content): its copies are discarded`);
          await verified(); // a verify of those, if one was asked for
        }
      }
      if (base && !written && !unusable.has(base)) written = await writeFrom(base, Promise.resolve(true));
      if (written) {
        const { delta } = written;
        bytesSent = written.sent;
        uploadMs = written.ms;
        nextList = written.next;
        deltaInfo = { base: st.cur!, copied: delta.copied, literal: delta.literal, ranges: delta.ops.length };
        log(`${tnew}: written from ${p} (${base!.path}) and this image: ${mb(delta.copied)} copied on the host, ` +
          `${mb(delta.literal)} sent, ${delta.ops.length} ranges`);
      } else if (reuse) {
        log(`${tnew} from an interrupted deploy already holds this image: not sending it again`);
        verify();
      } else {
        await fullUpload();
      }

      let got = await verified();
      if (got !== sha256 && written) {
        // The base was not what it claimed to be (or the delta is wrong): send everything.
        log(`${tnew} written from the delta has sha256 ${got}, expected ${sha256}: sending the whole image`);
        deltaInfo = undefined;
        nextList = undefined;
        await fullUpload();
        got = await verified();
      }
      if (got !== sha256) {
        throw new Error(`${s.where}: verify ${tnew}: the uploaded ${tnew} has sha256 ${got}, expected ${sha256} (removed it; the current image is untouched)`);
      }
      log(`${tnew}: written, flushed, sha256 verified`);
      conv.send("commit");
      await conv.expect(`rename ${tnew} to ${p}`, timeout + Math.ceil(prevIo / 1024), "@committed");
      const how = conv.history.find((l) => l.startsWith("@prev "))?.slice(6);
      if (copyPrev) log(`${prev}: now the previous image ${st.cur!.slice(0, 12)}${how === "linked" ? " (a hard link: no copy)" : ""}`);
      log(`${p}: now ${sha256.slice(0, 12)} (synced, verified)`);
    } catch (err) {
      // The connection may still be up (a remote error, a bad hash): take the temporaries away so
      // they do not hold space on the stick. When it is gone, the next run removes them.
      gate(false);
      await conv.finish("abort");
      throw err;
    }
    await saveList(nextList ?? (await fullList));
    return { changed: true, bytesSent, previous: st.cur !== undefined ? st.cur : st.prev, uploadMs, ...(deltaInfo ? { delta: deltaInfo } : {}) };

    async function saveList(list: ChunkList | undefined) {
      if (!opts.chunkCache || !list) return;
      await writeChunkCache(opts.chunkCache, sha256, list).catch((e) => log(`chunk cache ${opts.chunkCache}: ${e.message} (not kept)`));
    }
  });
}

/**
 * Swaps the target and path.prev: the previous image goes back into place and the replaced one
 * becomes path.prev, so calling it again goes back to the newer image. Both are copied on the
 * host to temporaries, flushed and verified first; then the target is replaced (rename), then
 * .prev (rename), then sync. Fails when there is no path.prev or it equals the target.
 */
export async function rollback(t: SshTarget, log: Log = () => {}): Promise<{ current: string; previous: string }> {
  const { p, dir, prev, tnew, tprev } = paths(t);
  return withSession(t, log, async (s) => {
    const st = await probe(s, { cleanup: true, df: true, heads: true });
    if (!st.prev) throw new Error(`${s.where}: no previous image at ${prev}: nothing to roll back to (${p} is ${st.cur ?? "absent"})`);
    if (!st.cur) throw new Error(`${s.where}: ${p} does not exist; refusing to roll back without a current image (deploy one; ${prev} is ${st.prev})`);
    if (st.prev === st.cur) throw new Error(`${s.where}: ${prev} is the same image as ${p} (${st.cur}): nothing to roll back to`);
    // An image that is not a PE for the host's architecture (a stray copy, a truncated or
    // foreign file) would leave the host unbootable, at once as the image or at the next
    // rollback as .prev. Its first 4 KiB were read with the state: the PE header is there.
    const want = bootArch(p, st.heads!.uname);
    for (const [file, head, role] of [[prev, st.heads!.prev, "the rollback would boot it"], [p, st.heads!.cur, `the rollback would keep it as ${prev}, the next rollback's image`]] as const) {
      const pe = peMachine(head);
      if ("arch" in pe && pe.arch === want.arch) continue;
      const what = "why" in pe ? `not a PE image: ${pe.why}` : `a PE image for ${pe.arch}`;
      throw new Error(`${s.where}: ${file} is not a boot image for ${want.arch} (${want.because}; it is ${what}) and ${role}: nothing was changed; deploy a good image instead (pulumi up)`);
    }
    const space = spaceCheck(st.df!.available, [["copy of .prev", st.prevSize ?? 0], ["copy of the current image", st.curSize ?? 0]]);
    if (!space.ok) {
      throw new Error(`${s.where}: not enough space in ${dir} (${st.df!.mountedOn}) to roll back: need ${mb(space.need)} (${space.detail}), ${mb(st.df!.available)} available`);
    }
    log(`rolling back ${p} on ${s.where}: ${st.cur.slice(0, 12)} -> ${st.prev.slice(0, 12)}`);
    const io = 3 * ((st.curSize ?? 0) + (st.prevSize ?? 0));
    await run(s, `swap ${p} and ${prev}`, `
c=${shq(p)}; v=${shq(prev)}; tn=${shq(tnew)}; tp=${shq(tprev)}
cp "$v" "$tn" || die "copying $v to $tn failed"
cp "$c" "$tp" || die "copying $c to $tp failed"
flush "$tn" "$tp"
n=$(h "$tn") || exit 1
[ "$n" = ${st.prev} ] || { rm -f "$tn" "$tp"; die "the copy $tn of $v has sha256 $n, expected ${st.prev}"; }
n=$(h "$tp") || exit 1
[ "$n" = ${st.cur} ] || { rm -f "$tn" "$tp"; die "the copy $tp of $c has sha256 $n, expected ${st.cur}"; }
mv -f "$tn" "$c" || die "renaming $tn to $c failed"
mv -f "$tp" "$v" || die "renaming $tp to $v failed"
flushdir "$c"; flushdir "$v"
n=$(h "$c") || exit 1
[ "$n" = ${st.prev} ] || die "after the rename $c has sha256 $n, expected ${st.prev}"
`, io);
    log(`${p}: now ${st.prev.slice(0, 12)}; ${prev}: ${st.cur.slice(0, 12)}`);
    return { current: st.prev, previous: st.cur };
  });
}

// ---------------------------------------------------------------------------------------------
// After a deploy: commands on the host (a reboot), and waiting for it to come back.

/**
 * Runs each command on the host in order (POSIX sh); stops at the first that fails. A command
 * that ends the connection (reboot) counts as done.
 */
export async function runOnHost(t: SshTarget, commands: string[], log: Log = () => {}): Promise<void> {
  await withSession(t, log, async (s) => {
    for (const cmd of commands) {
      log(`on ${s.where}: ${cmd}`);
      try {
        const out = await run(s, cmd, cmd);
        for (const line of out.trimEnd().split("\n").filter(Boolean)) log(`  ${line}`);
      } catch (e: any) {
        if (/reboot|poweroff|shutdown/.test(cmd) && /closed|ECONNRESET|end/i.test(String(e.message))) return;
        throw new Error(`${s.where}: \`${cmd}\` failed: ${e.message}`);
      }
    }
  });
}

/**
 * Waits until the host answers over SSH and reports `buildId` in /etc/ramroot-release (what
 * every ramroot image carries), retrying until `timeoutMs`.
 */
export async function waitForBuild(t: SshTarget, buildId: string, timeoutMs: number, log: Log = () => {}): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer yet";
  while (Date.now() < deadline) {
    try {
      const seen = await withSession({ ...t, timeoutMs: Math.min(t.timeoutMs ?? DEFAULT_TIMEOUT_MS, 15_000) }, () => {}, (s) =>
        run(s, "read /etc/ramroot-release", `sed -n 's/^BUILD_ID="\\{0,1\\}\\([0-9a-f]*\\)"\\{0,1\\}$/\\1/p' /etc/ramroot-release 2>/dev/null || true`));
      if (seen.trim() === buildId) {
        log(`${t.host} is up and runs build ${buildId}`);
        return;
      }
      last = `it runs build ${seen.trim() || "(unknown)"}`;
    } catch (e: any) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 3000));
  }
  throw new Error(`${t.host} did not come back with build ${buildId} within ${Math.round(timeoutMs / 1000)} s (${last}); the new image is in place and the previous one is at .prev: \`ramroot rollback --stack production\` puts it back`);
}
