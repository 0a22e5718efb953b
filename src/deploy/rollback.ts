// Rollback: P and P.prev change places on the host, so the previous image boots again and a
// second rollback returns to the newer one. Refused, changing nothing, unless both are PE
// images for the host's architecture.
import { peMachine } from "../image/pe";
import { HostProtocol, hostFiles, type HostState } from "./host-protocol";
import { withSession, type Log, type SshTarget } from "./ssh-session";
import { mb, spaceCheck } from "./space";
import { ARCH_NAMES, ARCHES, archOfBootFile } from "../arch";

/**
 * The architecture an image at `p` must be for: the removable-media name says it (the firmware
 * boots EFI/BOOT/BOOTAA64.EFI on arm64, BOOTX64.EFI on x86_64), else the host's `uname -m`.
 */
export function bootArch(p: string, uname: string): { arch: string; because: string } {
  const name = p.slice(p.lastIndexOf("/") + 1);
  const byName = archOfBootFile(name);
  if (byName) return { arch: byName, because: `${name} is the ${byName} boot file` };
  const arch = ARCH_NAMES.find((a) => ARCHES[a].debian === uname || ARCHES[a].node === uname) ?? uname;
  return { arch, because: `the host is ${uname}` };
}

/**
 * Swaps the target and path.prev: the previous image goes back into place and the replaced one
 * becomes path.prev, so calling it again goes back to the newer image. Both are copied on the
 * host to temporaries, flushed and verified first; then the target is replaced (rename), then
 * .prev (rename), then sync. Fails when there is no path.prev or it equals the target.
 */
export async function rollback(t: SshTarget, log: Log = () => {}): Promise<{ current: string; previous: string }> {
  const files = hostFiles(t.path);
  return withSession(t, log, async (s) => {
    const ch = await new HostProtocol(s, files).rollback();
    try {
      const st = await ch.state();
      const { cur, prev } = refuse(s.where, files.path, files.prev, files.dir, st);
      log(`rolling back ${files.path} on ${s.where}: ${cur.slice(0, 12)} -> ${prev.slice(0, 12)}`);
      await ch.swap(cur, prev, (st.curSize ?? 0) + (st.prevSize ?? 0));
      log(`${files.path}: now ${prev.slice(0, 12)}; ${files.prev}: ${cur.slice(0, 12)}`);
      return { current: prev, previous: cur };
    } finally {
      ch.end();
    }
  });
}

/** Throws unless the state allows a rollback; resolves the two images' sha256. */
function refuse(where: string, p: string, prev: string, dir: string, st: HostState): { cur: string; prev: string } {
  if (!st.prev) throw new Error(`${where}: no previous image at ${prev}: nothing to roll back to (${p} is ${st.cur ?? "absent"})`);
  if (!st.cur) throw new Error(`${where}: ${p} does not exist; refusing to roll back without a current image (deploy one; ${prev} is ${st.prev})`);
  if (st.prev === st.cur) throw new Error(`${where}: ${prev} is the same image as ${p} (${st.cur}): nothing to roll back to`);
  // An image that is not a PE for the host's architecture (a stray copy, a truncated or foreign
  // file) would leave the host unbootable, at once as the image or at the next rollback as
  // .prev. Its first 4 KiB were read with the state: the PE header is there.
  const heads = st.heads!;
  const want = bootArch(p, heads.uname);
  for (const [file, head, role] of [[prev, heads.prev, "the rollback would boot it"], [p, heads.cur, `the rollback would keep it as ${prev}, the next rollback's image`]] as const) {
    const pe = peMachine(head);
    if ("arch" in pe && pe.arch === want.arch) continue;
    const what = "why" in pe ? `not a PE image: ${pe.why}` : `a PE image for ${pe.arch}`;
    throw new Error(`${where}: ${file} is not a boot image for ${want.arch} (${want.because}; it is ${what}) and ${role}: nothing was changed; deploy a good image instead (pulumi up)`);
  }
  const df = st.df!;
  const space = spaceCheck(df.available, [["copy of .prev", st.prevSize ?? 0], ["copy of the current image", st.curSize ?? 0]]);
  if (!space.ok) {
    throw new Error(`${where}: not enough space in ${dir} (${df.mountedOn}) to roll back: need ${mb(space.need)} (${space.detail}), ${mb(df.available)} available`);
  }
  return { cur: st.cur, prev: st.prev };
}
