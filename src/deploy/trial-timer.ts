// The trial timer: what makes a trial boot fall back by itself when its userland comes up but
// the deployer cannot confirm it (no SSH, no network, a service that hangs the boot's end).
// ramroot adds it to every image beside the health report (src/boot/health.ts's healthFiles).
//
// A trial (src/deploy/trial.ts) is a boot entry the deployer made for the new image, booted once
// through BootNext: its description is "ramroot trial BUILD ramroot-trial-seconds=SECONDS" (not
// in its optional data: systemd-stub would take that as the kernel command line). (The entry itself is the mark: a variable of ramroot's own
// GUID would do, but efivarfs makes such a variable immutable after a reboot, and a system
// without chattr could not remove it.) At the end of boot (OpenRC's local service, before
// the health report: local.d runs its scripts in name order), when the firmware booted such an
// entry (BootCurrent), the timer starts: unless /run/ramroot/trial-confirmed exists SECONDS later
// (the deployer makes it once it saw the build healthy), the system reboots, and the firmware
// boots its default, the untouched image. Any other boot, and an image booted without UEFI, is
// left alone. A kernel panic is the cmdline's business (panic=N), a hang before the local
// service a hardware watchdog's.
import { GLOBAL_GUID, TRIAL_DESCRIPTION, TRIAL_SECONDS_KEY } from "./load-option";

export const TRIAL_TIMER_PATH = "etc/local.d/00-ramroot-trial.start";
export const TRIAL_CONFIRMED = "/run/ramroot/trial-confirmed";

export const TRIAL_TIMER = `#!/bin/sh
# ramroot's trial timer (src/deploy/trial-timer.ts): when this boot is a trial the deployer has not
# confirmed within the time it set, reboot to the firmware's default entry.
vars=/sys/firmware/efi/efivars
[ -d "$vars" ] || exit 0
grep -q " $vars efivarfs " /proc/mounts || mount -t efivarfs efivarfs "$vars" 2>/dev/null
current="$vars/BootCurrent-${GLOBAL_GUID}"
[ -f "$current" ] || exit 0
# Attributes (4 bytes), then the entry's number, little-endian. (od -j does not skip on efivarfs.)
cur=$(od -An -tx1 "$current" | tr -d ' \\n' | tr a-f A-F)
cur=\${cur#????????} cur=\${cur#??}\${cur%??}
entry="$vars/Boot$cur-${GLOBAL_GUID}"
[ -f "$entry" ] || exit 0
# The entry's description (UCS-2) as words: NULs dropped, the rest of the binary made spaces.
words=$(tail -c +5 "$entry" | tr -d '\\000' | tr -c 'A-Za-z0-9=._-' ' ')
case $words in *"${TRIAL_DESCRIPTION} "*"${TRIAL_SECONDS_KEY}="*) ;; *) exit 0 ;; esac
build=\${words#*${TRIAL_DESCRIPTION} } build=\${build%% *}
seconds=\${words##*${TRIAL_SECONDS_KEY}=} seconds=\${seconds%% *}
case $seconds in '' | *[!0-9]*) seconds=300 ;; esac
echo "ramroot: trial boot of build $build (Boot$cur): rebooting to the default entry in $seconds s unless the deployer confirms it" >/dev/console
(
	sleep "$seconds"
	[ -e ${TRIAL_CONFIRMED} ] && exit 0
	echo "ramroot: trial boot of build $build was not confirmed within $seconds s: rebooting to the default entry" >/dev/console
	reboot
	sleep 60
	reboot -f
) </dev/null >/dev/null 2>&1 &
exit 0
`;

export function trialTimerFiles(): Array<{ name: string; content: string; mode: number }> {
  return [{ name: TRIAL_TIMER_PATH, content: TRIAL_TIMER, mode: 0o755 }];
}
