// The trial guard: what makes a trial boot fall back by itself when the deployer cannot confirm
// it: a userland that comes up without SSH or network, a service that hangs the boot, and, where
// the machine has a hardware watchdog, a boot that hangs before any of that or a userland frozen
// so hard that no process runs. ramroot adds it to every image beside the health report
// (src/boot/health.ts's healthFiles), as three files:
//
//   /usr/lib/ramroot/trial-guard          POSIX sh: the logic (start | stop)
//   /etc/init.d/ramroot-trial             its OpenRC service (openrc-run): start / stop call it
//   /etc/runlevels/sysinit/ramroot-trial  -> /etc/init.d/ramroot-trial: OpenRC starts it in
//                                         sysinit, the earliest point of an OpenRC userland
//                                         (`need sysfs`, `after devfs`, before mdev, udev,
//                                         hwdrivers and modules: it loads its driver itself)
//
// A trial (src/deploy/trial.ts) is a boot entry the deployer made for the new image, booted once
// through BootNext: its description is "ramroot trial BUILD ramroot-trial-seconds=SECONDS" (not
// in its optional data: systemd-stub would take that as the kernel command line). (The entry
// itself is the mark: a variable of ramroot's own GUID would do, but efivarfs makes such a
// variable immutable after a reboot, and a system without chattr could not remove it.) When the
// firmware booted such an entry (BootCurrent; efivarfs is mounted here when it is not yet), the
// guard starts one background process that, once a second until SECONDS after the guard started:
//   - when /run/ramroot/trial-confirmed exists (the deployer makes it once it saw the build
//     healthy), stands down: it disarms the watchdog cleanly (the magic close: 'V', then close,
//     so a confirmed build is never reset) and exits;
//   - else feeds the hardware watchdog, when the machine has one: /sys/class/watchdog/watchdogN,
//     its driver loaded by the guard when the image has a module whose aliases match a device of
//     this machine (i6300esb on the rehearsal host; sbsa_gwdt, the SBSA generic watchdog, on an
//     Ampere Altra), its node /dev/watchdogN (made from sysfs when /dev has none yet). Opening it
//     arms it with the driver's timeout (i6300esb 30 s, sbsa_gwdt 10 s).
// At the deadline it stops feeding (the device is closed without the magic character: the
// hardware keeps counting) and reboots: the firmware boots its default, the untouched image, and
// where `reboot` cannot run, the watchdog resets the machine. A userland frozen so hard that this
// process cannot run (every process stopped, a livelock) no longer feeds the watchdog either: the
// hardware resets the machine. A kernel panic is the cmdline's business (panic=N). Without a
// watchdog, a hang before sysinit, or a frozen userland, waits for a power cycle.
//
// Why not busybox's `watchdog` applet as the feeder: it disarms on SIGTERM (magic close in its
// signal handler), and OpenRC's killprocs sends SIGTERM to every process when a shutdown begins,
// so a shutdown of an unconfirmed trial that then hangs would be left without a watchdog. The
// guard's loop ignores SIGTERM; SIGKILL (killprocs' second pass, or `trial-guard stop`) closes
// the device without the magic character. The price: the timeout is the driver's default (no
// WDIOC_SETTIMEOUT from sh).
//
// A kernel whose watchdog was built with nowayout (CONFIG_WATCHDOG_NOWAYOUT, the nowayout module
// parameter) cannot be disarmed: on confirmation the guard then feeds it for the rest of the boot
// instead (/run/ramroot/trial-watchdog says so), as it does when the device is still active after
// the magic close. Any boot that is not a trial (no UEFI, another entry) leaves the watchdog alone:
// the guard exits before looking for one.
//
// The guard's state, for the deployer (src/deploy/trial.ts waits for it after confirming), one
// line in /run/ramroot/trial-watchdog:
//   none <why>                    a trial without a watchdog (the timer alone)
//   armed <device> timeout=<s>    fed until the confirmation or the deadline
//   disarmed <device>             confirmed, the watchdog stopped by the magic close
//   fed <device> <why>            confirmed, but it cannot be stopped: fed for the rest of the boot
//   released <device>             the deadline passed unconfirmed: no longer fed, rebooting
//   expired                       the deadline passed unconfirmed (no watchdog): rebooting
import { GLOBAL_GUID, TRIAL_DESCRIPTION, TRIAL_SECONDS_KEY } from "./load-option";

export const TRIAL_GUARD_PATH = "usr/lib/ramroot/trial-guard";
export const TRIAL_SERVICE_PATH = "etc/init.d/ramroot-trial";
export const TRIAL_RUNLEVEL_PATH = "etc/runlevels/sysinit/ramroot-trial";
export const TRIAL_CONFIRMED = "/run/ramroot/trial-confirmed";
export const TRIAL_WATCHDOG_STATE = "/run/ramroot/trial-watchdog";
/** The seconds a trial entry without a readable ramroot-trial-seconds gets. */
export const DEFAULT_TRIAL_SECONDS = 300;

/** Shell text: raw (backslashes stay), with \${ standing for the shell's own ${ (not interpolated). */
const sh = (s: TemplateStringsArray, ...v: unknown[]) => String.raw(s, ...v).replace(/\\\$\{/g, "${");

export const TRIAL_GUARD = sh`#!/bin/sh
# ramroot's trial guard (src/deploy/trial-timer.ts), started in OpenRC's sysinit runlevel by
# /etc/init.d/ramroot-trial. When this boot is a trial (the firmware booted a "${TRIAL_DESCRIPTION}"
# entry) that the deployer does not confirm (${TRIAL_CONFIRMED}) within the entry's seconds,
# it reboots to the firmware's default entry; meanwhile it feeds the machine's hardware watchdog,
# so that a userland too frozen to run this guard is reset by the hardware.
#   trial-guard start   look at this boot; on a trial, start the guard (in the background)
#   trial-guard stop    at shutdown: an unconfirmed trial's watchdog stays armed, no longer fed
PATH=/usr/sbin:/usr/bin:/sbin:/bin
run=/run/ramroot
confirmed=${TRIAL_CONFIRMED}
state=${TRIAL_WATCHDOG_STATE}
pidfile=$run/trial-guard.pid
vars=/sys/firmware/efi/efivars

say() { echo "ramroot: $*" >/dev/console 2>/dev/null || echo "ramroot: $*" >&2; }
put_state() { echo "$*" >"$state.new" && mv -f "$state.new" "$state"; }
uptime_s() {
	read -r up _ </proc/uptime
	echo "\${up%%.*}"
}

# Sets build, entry and seconds when the firmware booted a trial entry; else returns 1.
is_trial() {
	grep -q ' /sys ' /proc/mounts || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys 2>/dev/null
	[ -d "$vars" ] || return 1
	if ! grep -q " $vars efivarfs " /proc/mounts; then
		modprobe -q efivarfs 2>/dev/null
		mount -t efivarfs -o nosuid,nodev,noexec efivarfs "$vars" 2>/dev/null || return 1
	fi
	current="$vars/BootCurrent-${GLOBAL_GUID}"
	[ -f "$current" ] || return 1
	# Attributes (4 bytes), then the entry's number, little-endian. (od -j does not skip on efivarfs.)
	cur=$(od -An -tx1 "$current" | tr -d ' \n' | tr a-f A-F)
	cur=\${cur#????????} cur=\${cur#??}\${cur%??}
	entry=Boot$cur
	file="$vars/$entry-${GLOBAL_GUID}"
	[ -f "$file" ] || return 1
	# The entry's description (UCS-2) as words: NULs dropped, the rest of the binary made spaces.
	words=$(tail -c +5 "$file" | tr -d '\000' | tr -c 'A-Za-z0-9=._-' ' ')
	case $words in *"${TRIAL_DESCRIPTION} "*"${TRIAL_SECONDS_KEY}="*) ;; *) return 1 ;; esac
	build=\${words#*${TRIAL_DESCRIPTION} } build=\${build%% *}
	seconds=\${words##*${TRIAL_SECONDS_KEY}=} seconds=\${seconds%% *}
	case $seconds in '' | *[!0-9]*) seconds=${DEFAULT_TRIAL_SECONDS} ;; esac
	return 0
}

# Loads the driver of this machine's watchdog when none is registered: the image's modules under
# drivers/watchdog/ whose aliases match a device's modalias (what hwdrivers would load later).
load_driver() {
	for w in /sys/class/watchdog/watchdog*; do [ -e "$w" ] && return 0; done
	dir=/lib/modules/$(uname -r)
	[ -r "$dir/modules.dep" ] && [ -r "$dir/modules.alias" ] || return 0
	mods=$(sed -n 's|^[^:]*/drivers/watchdog/\([^/:]*\)\.ko[^:]*:.*|\1|p' "$dir/modules.dep" | tr - _ | tr '\n' ' ')
	[ -n "$mods" ] || return 0
	devices=$(cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u)
	[ -n "$devices" ] || return 0
	# modules.alias names modules with underscores: "alias PATTERN MODULE".
	names=$(printf '%s' "$mods" | sed 's/ *$//; s/  */|/g')
	loaded=" "
	grep -E " ($names)\$" "$dir/modules.alias" | while read -r _ pattern module; do
		case $loaded in *" $module "*) continue ;; esac
		for a in $devices; do
			# shellcheck disable=SC2254 # the alias is a glob, as modprobe matches it
			case $a in $pattern)
				modprobe -q "$module" 2>/dev/null && loaded="$loaded$module "
				break
				;;
			esac
		done
	done
	return 0
}

# Sets dev (its node) and sysw (its sysfs folder) for the first watchdog; else returns 1.
find_watchdog() {
	for sysw in /sys/class/watchdog/watchdog*; do
		[ -r "$sysw/dev" ] || continue
		name=\${sysw##*/}
		if [ -c "/dev/$name" ]; then
			dev=/dev/$name
		else
			# No devtmpfs on /dev yet: a node of our own.
			mm=$(cat "$sysw/dev")
			dev=$run/$name
			[ -c "$dev" ] || mknod "$dev" c "\${mm%%:*}" "\${mm#*:}" 2>/dev/null || continue
		fi
		return 0
	done
	return 1
}

# Feeds fd 3 every $1 seconds, for the rest of this boot (a confirmed build whose watchdog cannot
# be stopped).
feed_forever() {
	while :; do
		printf . >&3 2>/dev/null
		sleep "$1"
	done
}

# The background process: feeds the watchdog (fd 3 when armed) until the confirmation or the
# deadline. SIGTERM is ignored (killprocs at a shutdown would otherwise end it mid-way); SIGKILL
# closes the device without the magic character, so the hardware keeps counting.
guard() {
	trap '' HUP INT TERM
	begin=$(uptime_s)
	end=$((begin + seconds))
	armed=""
	if [ -n "$dev" ]; then
		# "command": a redirection that fails (the device in use) does not end the shell.
		if command exec 3>"$dev"; then
			armed=yes
			timeout=$(cat "$sysw/timeout" 2>/dev/null)
			put_state "armed $dev timeout=\${timeout:-unknown}"
		else
			put_state "none $dev-not-opened"
		fi
	fi
	while [ "$(uptime_s)" -lt "$end" ]; do
		if [ -e "$confirmed" ]; then
			took="$(($(uptime_s) - begin)) s into its $seconds s"
			if [ -z "$armed" ]; then
				say "trial boot of build $build confirmed $took"
				exit 0
			fi
			every=$((\${timeout:-10} / 3))
			[ "$every" -ge 1 ] || every=1
			if [ "$(cat "$sysw/nowayout" 2>/dev/null)" = 1 ]; then
				put_state "fed $dev nowayout"
				say "trial boot of build $build confirmed; the watchdog $dev cannot be stopped (nowayout): feeding it for the rest of this boot"
				feed_forever "$every"
			fi
			# The magic close: 'V' as the last byte written, then close.
			printf V >&3
			exec 3>&-
			if [ "$(cat "$sysw/state" 2>/dev/null)" = active ]; then
				command exec 3>"$dev"
				put_state "fed $dev it-did-not-stop"
				say "trial boot of build $build confirmed; the watchdog $dev did not stop at the magic close: feeding it for the rest of this boot"
				feed_forever "$every"
			fi
			put_state "disarmed $dev"
			say "trial boot of build $build confirmed $took: watchdog $dev disarmed"
			exit 0
		fi
		[ -z "$armed" ] || printf . >&3 2>/dev/null
		sleep 1
	done
	if [ -n "$armed" ]; then
		exec 3>&-
		put_state "released $dev"
		say "trial boot of build $build was not confirmed within $seconds s: rebooting to the default entry (the watchdog $dev, no longer fed, resets the machine if the reboot does not)"
	else
		put_state expired
		say "trial boot of build $build was not confirmed within $seconds s: rebooting to the default entry"
	fi
	reboot
	sleep 60
	reboot -f
}

case \${1-} in
start)
	is_trial || exit 0
	mkdir -p "$run"
	if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then exit 0; fi
	rm -f "$state"
	dev="" sysw=""
	load_driver
	if find_watchdog; then
		what="the hardware watchdog $dev armed until then"
	else
		dev=""
		put_state "none no-watchdog-device"
		what="no hardware watchdog on this machine"
	fi
	rm -f "$pidfile"
	guard </dev/null >/dev/null 2>&1 &
	echo $! >"$pidfile"
	# The guard says "armed" once it holds the device, or "none" when it cannot open it.
	i=0
	while [ -n "$dev" ] && [ $i -lt 40 ] && ! [ -s "$state" ]; do
		sleep 0.25 2>/dev/null || sleep 1
		i=$((i + 1))
	done
	if [ -n "$dev" ]; then
		case $(cat "$state" 2>/dev/null) in
		"armed "*) ;;
		none*) what="the hardware watchdog $dev could not be opened (in use?): the timer alone" ;;
		*) what="the hardware watchdog $dev not armed yet" ;;
		esac
	fi
	say "trial boot of build $build ($entry): rebooting to the default entry in $seconds s unless the deployer confirms it; $what"
	exit 0
	;;
stop)
	# An unconfirmed trial that shuts down (the deployer reboots it, or the timer does): the guard
	# stops feeding without the magic close, so a shutdown that hangs ends in a reset.
	[ -s "$pidfile" ] || exit 0
	pid=$(cat "$pidfile")
	if ! [ -e "$confirmed" ] && kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null
		grep -q '^armed ' "$state" 2>/dev/null && put_state "released $(sed -n 's/^armed \([^ ]*\).*/\1/p' "$state")"
	fi
	exit 0
	;;
*)
	echo "usage: trial-guard start|stop" >&2
	exit 2
	;;
esac
`;

export const TRIAL_SERVICE = `#!/sbin/openrc-run
# ramroot's trial guard (src/deploy/trial-timer.ts): a trial boot that the deployer does not
# confirm falls back to the firmware's default entry, through the hardware watchdog where the
# machine has one. Added to every image by ramroot, linked into the sysinit runlevel.
description="ramroot: fall back from an unconfirmed trial boot"

depend() {
	need sysfs
	after devfs
	before dmesg mdev udev hwdrivers modules modloop
	keyword -docker -lxc -openvz -prefix -systemd-nspawn -vserver
}

start() {
	/${TRIAL_GUARD_PATH} start
}

stop() {
	/${TRIAL_GUARD_PATH} stop
}
`;

export function trialTimerFiles(): Array<{ name: string; content?: string; link?: string; mode: number }> {
  return [
    { name: TRIAL_GUARD_PATH, content: TRIAL_GUARD, mode: 0o755 },
    { name: TRIAL_SERVICE_PATH, content: TRIAL_SERVICE, mode: 0o755 },
    { name: TRIAL_RUNLEVEL_PATH, link: `/${TRIAL_SERVICE_PATH}`, mode: 0o777 },
  ];
}

/**
 * After the deployer's confirmation: waits (on the host, up to `seconds`) until the guard has
 * left the armed state, then prints its state line (nothing from an image without the guard).
 */
export function guardWaitCommand(seconds: number): string {
  return `i=0; s=$(cat ${TRIAL_WATCHDOG_STATE} 2>/dev/null); while [ $i -lt ${seconds} ]; do case $s in "armed "*) ;; *) break ;; esac; sleep 1; i=$((i + 1)); s=$(cat ${TRIAL_WATCHDOG_STATE} 2>/dev/null); done; echo "$s"`;
}
