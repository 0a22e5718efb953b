// ramroot's health report: what the booted system says about itself at the end of boot, in a
// stable line format on the serial console. ramroot adds it to every image (components/uki.ts
// puts these files into the small release member, beside /etc/ramroot-release):
//
//   /usr/lib/ramroot/health                 POSIX sh (busybox, dash): prints the report, exit 0
//                                           when the result is ok
//   /etc/local.d/zz-ramroot-health.start    runs it at the end of boot (OpenRC's `local`
//                                           service: rc-update add local default), puts the
//                                           report on /dev/console and in /run/ramroot/health,
//                                           then powers off, but only when QEMU asks for it
//
// The power-off request travels over QEMU's fw_cfg (`-fw_cfg name=opt/org.ramroot/after-boot,
// string=poweroff`, read in the guest from /sys/firmware/qemu_fw_cfg/by_name/...): a device no
// real machine has, so the NAS never powers itself off, and `ramroot qemu` (which passes nothing)
// stays up.
//
// The report, every line prefixed with "ramroot-health: ":
//
//   begin 1 build=<build id>
//   mount ok|missing|readonly <mount point> <source> <type>[ optional=nofail|network]
//   service failed|stopped|inactive <service> <runlevel>
//   result ok|fail problems=<n> mounts=<n> services=<n>
//
// One `mount` line for each /etc/fstab entry that is mounted at boot (swap and noauto lines are
// left out); fields are fstab's own, octal escapes (\040) kept, so none holds a space. A mount
// that is missing (or read-only where fstab does not say ro) is a problem unless it is a network
// filesystem or marked nofail (then `optional=`, reported, no problem). One `service` line for
// each service of the sysinit, boot and default runlevels that OpenRC records as failed
// (/run/openrc/failed/), or as neither started nor starting (stopped; inactive); services that
// are fine are not listed. The result line ends the report and counts what came before.
import { createHash } from "node:crypto";
import { trialTimerFiles } from "../deploy/trial-timer";

export const HEALTH_FORMAT = 1;
/** Paths inside the image. */
export const HEALTH_SCRIPT_PATH = "usr/lib/ramroot/health";
export const HEALTH_HOOK_PATH = "etc/local.d/zz-ramroot-health.start";
/** The fw_cfg item that asks the guest to power off after its report, and its value. */
export const FW_CFG_AFTER_BOOT = "opt/org.ramroot/after-boot";
export const FW_CFG_POWEROFF = "poweroff";
/**
 * The value that asks the guest to wait, after its report, until the host writes
 * CONSOLE_POWEROFF on the serial console (the boot check probes the services meanwhile), then
 * power off as with FW_CFG_POWEROFF; after WAIT_SECONDS without it, it powers off anyway.
 */
export const FW_CFG_WAIT_POWEROFF = "wait-then-poweroff";
export const CONSOLE_POWEROFF = "ramroot-poweroff";
export const WAIT_SECONDS = 600;
const PREFIX = "ramroot-health:";

/** Shell text: raw (backslashes stay), with \${ standing for the shell's own ${ (not interpolated). */
const sh = (s: TemplateStringsArray, ...v: unknown[]) => String.raw(s, ...v).replace(/\\\$\{/g, "${");

export const HEALTH_SCRIPT = sh`#!/bin/sh
# ramroot's health report (written into every image by ramroot: src/boot/health.ts). Prints:
#   ramroot-health: begin 1 build=<build id>
#   ramroot-health: mount ok|missing|readonly <mount point> <source> <type>[ optional=nofail|network]
#   ramroot-health: service failed|stopped|inactive <service> <runlevel>
#   ramroot-health: result ok|fail problems=<n> mounts=<n> services=<n>
# Exit status 0 when the result is ok. Reads /etc/fstab, /proc/mounts, /etc/runlevels and
# OpenRC's state in /run/openrc; RAMROOT_HEALTH_ROOT (a folder standing for /, except for the
# mounts) and RAMROOT_HEALTH_MOUNTS (a file standing for /proc/mounts) are for tests.
root=\${RAMROOT_HEALTH_ROOT:-}
mounts=\${RAMROOT_HEALTH_MOUNTS:-/proc/mounts}
# OpenRC's net_fs_list, and a few more: a missing network filesystem is reported, no failure.
netfs=" afs ceph cifs coda davfs fuse.sshfs gfs glusterfs lustre ncpfs nfs nfs4 ocfs2 shfs smbfs smb3 sshfs 9p virtiofs "
out=""
say() {
	out="$out""ramroot-health: $*
"
}
has() { [ -e "$1" ] || [ -L "$1" ]; }

build=$(sed -n 's/^BUILD_ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/etc/ramroot-release" 2>/dev/null | head -n 1)
[ -n "$build" ] || build=$(sed -n 's/^BUILD_ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/etc/os-release" 2>/dev/null | head -n 1)
case "$build" in "" | *[!0-9A-Za-z._-]*) build=unknown ;; esac
say "begin 1 build=$build"

problems=0
nmounts=0
if [ -r "$root/etc/fstab" ]; then
	while read -r spec file type opts rest; do
		case "$spec" in "" | \#*) continue ;; esac
		[ -n "$file" ] || continue
		[ -n "$type" ] || type=auto
		[ -n "$opts" ] || opts=defaults
		case "$type" in swap) continue ;; esac
		case "$file" in none | swap) continue ;; esac
		case ",$opts," in *,noauto,*) continue ;; esac
		while :; do
			case "$file" in /?*/) file=\${file%/} ;; *) break ;; esac
		done
		optional=""
		case "$netfs" in *" $type "*) optional=network ;; esac
		case ",$opts," in *,_netdev,*) optional=network ;; esac
		case ",$opts," in *,nofail,*) [ -n "$optional" ] || optional=nofail ;; esac
		nmounts=$((nmounts + 1))
		# The last mount on that point is the one in effect (ENVIRON: awk -v would undo \040).
		now=$(F=$file awk '$2 == ENVIRON["F"] { o = $4 } END { print o }' "$mounts" 2>/dev/null)
		if [ -z "$now" ]; then
			state=missing
		else
			state=ok
			case ",$now," in
			*,ro,*) case ",$opts," in *,ro,*) ;; *) state=readonly ;; esac ;;
			esac
		fi
		if [ -n "$optional" ]; then
			say "mount $state $file $spec $type optional=$optional"
		else
			say "mount $state $file $spec $type"
			[ "$state" = ok ] || problems=$((problems + 1))
		fi
	done <"$root/etc/fstab"
fi

svcdir=$root/run/openrc
nservices=0
for level in sysinit boot default; do
	for link in "$root/etc/runlevels/$level"/*; do
		has "$link" || continue
		svc=\${link##*/}
		nservices=$((nservices + 1))
		if has "$svcdir/failed/$svc"; then
			state=failed
		elif has "$svcdir/started/$svc" || has "$svcdir/starting/$svc"; then
			continue
		elif has "$svcdir/inactive/$svc"; then
			state=inactive
		else
			state=stopped
		fi
		say "service $state $svc $level"
		problems=$((problems + 1))
	done
done

if [ "$problems" -eq 0 ]; then result=ok; else result=fail; fi
say "result $result problems=$problems mounts=$nmounts services=$nservices"
printf '%s' "$out"
[ "$result" = ok ]
`;

export const HEALTH_HOOK = sh`#!/bin/sh
# ramroot (src/boot/health.ts): the health report at the end of boot, run by OpenRC's local service
# (rc-update add local default). The report goes to the console and to /run/ramroot/health.
# Under ramroot's QEMU boot check, and only there, the guest then powers itself off cleanly:
# QEMU passes ${FW_CFG_AFTER_BOOT}=${FW_CFG_POWEROFF} through fw_cfg, a device no real machine has.
mkdir -p /run/ramroot
/usr/lib/ramroot/health >/run/ramroot/health.new 2>&1
mv -f /run/ramroot/health.new /run/ramroot/health
cat /run/ramroot/health >/dev/console
cfg=/sys/firmware/qemu_fw_cfg/by_name/${FW_CFG_AFTER_BOOT}/raw
if ! [ -e "$cfg" ]; then
	# Only where QEMU's fw_cfg device is there (ACPI QEMU0002, or a devicetree fw-cfg node).
	for dev in /sys/bus/platform/devices/*; do
		case "\${dev##*/}" in *QEMU0002* | *fw-cfg*) modprobe -q qemu_fw_cfg 2>/dev/null; break ;; esac
	done
fi
case "$(cat "$cfg" 2>/dev/null)" in
${FW_CFG_POWEROFF})
	echo "ramroot: powering off: QEMU asked for it through fw_cfg ${FW_CFG_AFTER_BOOT}" >/dev/console
	poweroff
	;;
${FW_CFG_WAIT_POWEROFF})
	# The host probes the services now, then writes ${CONSOLE_POWEROFF} on the serial console. The
	# reader has a session of its own: the console is then not its controlling terminal, so no
	# job control stops it. The boot has ended: busybox init starts no getty before this returns.
	echo "ramroot: waiting for the host's probes; it says ${CONSOLE_POWEROFF} on the console (QEMU asked through fw_cfg ${FW_CFG_AFTER_BOOT})" >/dev/console
	reader='while IFS= read -r line; do case "$line" in *${CONSOLE_POWEROFF}*) exit 0 ;; esac; done'
	limit="" session=""
	command -v timeout >/dev/null 2>&1 && limit="timeout ${WAIT_SECONDS}"
	command -v setsid >/dev/null 2>&1 && session=setsid
	$limit $session sh -c "$reader" </dev/console
	echo "ramroot: powering off: the host is done (fw_cfg ${FW_CFG_AFTER_BOOT})" >/dev/console
	poweroff
	;;
esac
exit 0
`;

/** The files ramroot adds to every image (the release member): the script, its folder, the hook. */
export function healthFiles(): Array<{ name: string; content?: string; link?: string; mode: number; dir?: boolean }> {
  return [
    { name: "usr/lib/ramroot", mode: 0o755, dir: true },
    { name: HEALTH_SCRIPT_PATH, content: HEALTH_SCRIPT, mode: 0o755 },
    { name: HEALTH_HOOK_PATH, content: HEALTH_HOOK, mode: 0o755 },
    // The trial guard rides along (its script, its OpenRC service and the service's link in the
    // sysinit runlevel): a trial boot must fall back even when nobody can log in.
    ...trialTimerFiles(),
  ];
}

/** Changes whenever the files change: part of the build id (components/uki.ts). */
export function healthFilesHash(): string {
  return createHash("sha256").update(JSON.stringify(healthFiles())).digest("hex");
}

export interface HealthMount {
  state: "ok" | "missing" | "readonly";
  /** As fstab writes it (octal escapes kept). */
  mountPoint: string;
  source: string;
  type: string;
  /** A network filesystem or a nofail line: reported, never a problem. */
  optional?: "nofail" | "network";
}

export interface HealthService {
  state: "failed" | "stopped" | "inactive";
  name: string;
  runlevel: string;
}

export interface HealthReport {
  format: number;
  build: string;
  mounts: HealthMount[];
  services: HealthService[];
  result: "ok" | "fail";
  counts: { problems: number; mounts: number; services: number };
  /** The report's lines as printed, prefix included. */
  lines: string[];
  /** What is wrong, in words (empty when the result is ok), including a report that contradicts itself. */
  problems: string[];
  /** Reported, not a problem: optional mounts that are missing. */
  notes: string[];
}

/** fstab and /proc/mounts escape spaces, tabs and backslashes as octal (\040). */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));

/**
 * The last complete health report in console text (other lines, and text before the prefix on a
 * line, are ignored), or undefined when there is none: no `begin`, or no `result` after it.
 */
export function parseHealth(text: string): HealthReport | undefined {
  const items: string[] = [];
  for (const raw of text.split("\n")) {
    const at = raw.lastIndexOf(PREFIX);
    if (at >= 0) items.push(raw.slice(at + PREFIX.length).replace(/\r/g, "").trim());
  }
  const begin = items.map((l) => l.startsWith("begin ")).lastIndexOf(true);
  if (begin < 0) return undefined;
  const end = items.findIndex((l, i) => i > begin && l.startsWith("result "));
  if (end < 0) return undefined;
  const body = items.slice(begin, end + 1);
  const report: HealthReport = {
    format: 0, build: "", mounts: [], services: [], result: "fail",
    counts: { problems: -1, mounts: -1, services: -1 }, lines: body.map((l) => `${PREFIX} ${l}`), problems: [], notes: [],
  };
  const garbled: string[] = [];
  for (const line of body) {
    const f = line.split(/\s+/);
    switch (f[0]) {
      case "begin": {
        report.format = Number(f[1]);
        report.build = /^build=(.*)$/.exec(f[2] ?? "")?.[1] ?? "";
        if (report.format !== HEALTH_FORMAT) garbled.push(`format ${f[1]} (this ramroot reads format ${HEALTH_FORMAT})`);
        break;
      }
      case "mount": {
        const [, state, mountPoint, source, type, opt] = f;
        const optional = opt ? /^optional=(nofail|network)$/.exec(opt)?.[1] : undefined;
        if (!(state === "ok" || state === "missing" || state === "readonly") || !mountPoint || !source || !type || (opt && !optional) || f.length > 6) {
          garbled.push(`"${line}"`);
          break;
        }
        report.mounts.push({ state, mountPoint, source, type, ...(optional ? { optional: optional as "nofail" | "network" } : {}) });
        break;
      }
      case "service": {
        const [, state, name, runlevel] = f;
        if (!(state === "failed" || state === "stopped" || state === "inactive") || !name || !runlevel || f.length > 4) {
          garbled.push(`"${line}"`);
          break;
        }
        report.services.push({ state, name, runlevel });
        break;
      }
      case "result": {
        const kv = Object.fromEntries(f.slice(2).map((x) => x.split("=")));
        report.result = f[1] === "ok" ? "ok" : "fail";
        report.counts = { problems: Number(kv.problems), mounts: Number(kv.mounts), services: Number(kv.services) };
        if (f[1] !== "ok" && f[1] !== "fail") garbled.push(`result "${f[1]}"`);
        break;
      }
      default:
        // A later format's line kind: kept in `lines`, not understood here.
        break;
    }
  }
  const where = (m: HealthMount) => `${unescape(m.mountPoint)} (${unescape(m.source)}, from /etc/fstab)`;
  for (const m of report.mounts) {
    const what = m.state === "missing" ? "is not mounted" : m.state === "readonly" ? "is mounted read-only (fstab does not say ro)" : undefined;
    if (!what) continue;
    if (m.optional) report.notes.push(`${where(m)} ${what} (${m.optional === "network" ? "a network filesystem" : "nofail"}: not a failure)`);
    else report.problems.push(`${where(m)} ${what}`);
  }
  for (const s of report.services) {
    report.problems.push(s.state === "failed" ? `service ${s.name} failed to start (runlevel ${s.runlevel})`
      : s.state === "inactive" ? `service ${s.name} (runlevel ${s.runlevel}) is inactive, not started`
      : `service ${s.name} (runlevel ${s.runlevel}) was not started`);
  }
  // The result line counts what came before: a line lost or mangled on the console shows here.
  const counted = report.problems.length;
  if (report.counts.problems !== counted || report.counts.mounts !== report.mounts.length || (report.result === "ok") !== (counted === 0))
    garbled.push(`its result line says ${report.result} with problems=${report.counts.problems} mounts=${report.counts.mounts}, the lines above it show ${counted} problems and ${report.mounts.length} mounts`);
  if (garbled.length) report.problems.push(`the health report is garbled: ${garbled.join("; ")}`);
  return report;
}
