#!/usr/bin/env bash
# Assembles a small bootable base tree, shaped like Alpine's layout, from Debian packages: the
# rootfs the qemu stack and the tests boot until the Alpine rootfs lands (no Alpine package can
# be fetched on ramroot's build machines).
#
#   scripts/testsys.sh ARCH [OUT]      ARCH: aarch64 | x86_64; prints the finished folder
#
# OUT defaults to $RAMROOT_CACHE/testsys/<arch>-<hash of this script and the package versions>.
# A complete OUT (it holds etc/ramroot-testsys) is reused as it is. The tree is built in a temporary folder
# beside OUT and renamed into place, so an OUT that exists is complete.
#
# The tree:
#   bin/busybox + applet symlinks (busybox --list-full)   sbin/init is busybox init
#   etc/inittab (Alpine's: openrc sysinit/boot/default/shutdown), etc/local.d/, etc/runlevels/
#     (empty, as on a fresh Alpine: a system enables its services), var/run -> /run,
#   etc/fstab (UUID=B61B-19E7 /media/usb vfat ...)
#   sbin/openrc, sbin/rc-update, sbin/rc-service, etc/init.d/*: an OpenRC stand-in (busybox sh)
#     that keeps OpenRC's state in /run/openrc, with stand-ins for the services the example
#     system enables, so that an Alpine-style system/ (inittab, setup.sh's rc-update add ...)
#     boots on this tree and ramroot's health report reads it as it reads OpenRC's
#   etc/passwd, etc/group, etc/hostname, etc/os-release, etc/ramroot-testsys (KERNEL=<release>)
#   lib/modules/<release>/  a depmod'ed subset: virtio, vfat/fat, nls, usb-storage, qemu_fw_cfg,
#     efivarfs, the power button's (button, evdev, gpio_keys) and their deps
#   Debian's OpenSSH (usr/sbin/sshd, usr/lib/openssh/sftp-server, usr/bin/ssh-keygen) and
#     efibootmgr (usr/sbin/efibootmgr, where Alpine has it), with every shared library they link
#     against (lib/<triplet>/, usr/lib/<triplet>/) and glibc's ELF interpreter; etc/ssh/sshd_config
#     laid out as Alpine's (Include sshd_config.d, the HostKey lines commented), an sshd user,
#     etc/nsswitch.conf; etc/udhcpc/default.script (busybox udhcpc's, as Alpine's busybox has one)
#   boot/vmlinuz-<release>, boot/vmlinuz (symlink), boot/efistub (systemd-stub, also at
#   usr/lib/systemd/boot/efi/linux{x64,aa64}.efi.stub as Alpine's systemd-efistub puts it)
# /boot goes into the UKI, never into the initramfs.
#
# Environment: RAMROOT_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/ramroot).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RAMROOT_CACHE=${RAMROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ramroot}
export RAMROOT_CACHE

# What the boot check's QEMU devices need (hwdrivers loads them by modalias), qemu_fw_cfg (ramroot's
# health hook reads QEMU's request to power off through it), plus what a real NAS needs to reach
# its USB stick, efivarfs (efibootmgr reads and writes the UEFI variables through it), and what a
# power button press needs to reach acpid: the ACPI button driver (built into the arm64 kernel),
# evdev (/dev/input/event*, which busybox acpid reads; loaded by the input devices' modalias) and
# gpio_keys (the button of an arm64 devicetree machine); virtio_rng (a machine's RNG, as QEMU's);
# i6300esb (the rehearsal host's hardware watchdog, which the image's trial guard arms during a
# trial boot). Missing ones (built in, or absent from the flavour: the cloud kernels have no
# USB, and the cloud amd64 one no i6300esb) are skipped.
MODULES="virtio_pci virtio_blk virtio_scsi virtio_net virtio_console vfat fat nls_cp437 nls_ascii nls_utf8 nls_iso8859-1
  qemu_fw_cfg usb-storage uas sd_mod xhci-pci xhci-plat-hcd ehci-pci ehci-platform ohci-pci
  efivarfs button evdev gpio_keys virtio_rng i6300esb"

die() { echo "testsys.sh: $*" >&2; exit 1; }

usage() { die "usage: testsys.sh aarch64|x86_64 [OUT]"; }

# Debian packages whose programs go into the tree (install_debian_programs: PACKAGE:PATH[:DEST]),
# and the library packages they link against. Only the libraries that the programs' ELF files need
# (NEEDED, followed) are copied; a library none of these packages has stops the build, naming it.
DEBIAN_PROGRAMS="openssh-server:usr/sbin/sshd openssh-sftp-server:usr/lib/openssh/sftp-server
  openssh-client:usr/bin/ssh-keygen efibootmgr:bin/efibootmgr:usr/sbin/efibootmgr"
DEBIAN_TOOLS="openssh-server openssh-sftp-server openssh-client efibootmgr"
DEBIAN_LIBS="libc6 libcrypt1 libwrap0 libnsl2 libtirpc3 libaudit1 libcap-ng0 libpam0g libsystemd0 libcap2
  libgcrypt20 libgpg-error0 liblz4-1 liblzma5 libzstd1 libselinux1 libpcre2-8-0 libgssapi-krb5-2 libkrb5-3
  libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2 libssl3 zlib1g libefivar1 libefiboot1"

select_packages() {
	case "$ARCH" in
	x86_64) DEBARCH=amd64 KERNELPKG=linux-image-cloud-amd64 STUB=linuxx64.efi.stub ;;
	aarch64) DEBARCH=arm64 KERNELPKG=linux-image-arm64 STUB=linuxaa64.efi.stub ;;
	*) usage ;;
	esac
	# The host's busybox (same Debian version) lists the applets: the target one may not run here.
	local dirs p specs=()
	for p in $DEBIAN_TOOLS $DEBIAN_LIBS; do specs+=("$p:$DEBARCH"); done
	dirs=$(bash "$here/debs.sh" "busybox-static:$DEBARCH" "$KERNELPKG:$DEBARCH" "systemd-boot-efi:$DEBARCH" \
		"busybox-static:$(dpkg --print-architecture)" "${specs[@]}")
	# shellcheck disable=SC2206
	local a=($dirs)
	BUSYBOX=${a[0]} KERNEL=${a[1]} SDBOOT=${a[2]} HOSTBUSYBOX=${a[3]}
	DEBDIRS=("${a[@]:4}")
}

default_out() {
	local h
	h=$( { cat "$0"; basename "$BUSYBOX"; basename "$KERNEL"; basename "$SDBOOT"; for d in "${DEBDIRS[@]}"; do basename "$d"; done; } | sha256sum | cut -c1-16)
	echo "$RAMROOT_CACHE/testsys/$ARCH-$h"
}

install_busybox() {
	mkdir -p "$T/bin" "$T/sbin" "$T/usr/bin" "$T/usr/sbin"
	cp "$BUSYBOX/bin/busybox" "$T/bin/busybox"
	chmod 0755 "$T/bin/busybox"
	local applet
	for applet in $("$HOSTBUSYBOX/bin/busybox" --list-full); do
		[ "$applet" = bin/busybox ] && continue
		mkdir -p "$T/$(dirname "$applet")"
		ln -sfn /bin/busybox "$T/$applet"
	done
	[ -L "$T/sbin/init" ] && [ -L "$T/sbin/modprobe" ] && [ -L "$T/bin/sh" ] || die "busybox lacks init, modprobe or sh"
}

install_kernel() {
	KVER=$(basename "$(ls -d "$KERNEL"/lib/modules/*/ | head -n1)")
	[ -n "$KVER" ] || die "no lib/modules in $KERNEL"
	mkdir -p "$T/boot"
	cp "$KERNEL/boot/vmlinuz-$KVER" "$T/boot/vmlinuz-$KVER"
	ln -s "vmlinuz-$KVER" "$T/boot/vmlinuz"
	cp "$KERNEL/boot/config-$KVER" "$T/boot/config-$KVER"
	mkdir -p "$T/usr/lib/systemd/boot/efi"
	cp "$SDBOOT/usr/lib/systemd/boot/efi/$STUB" "$T/usr/lib/systemd/boot/efi/$STUB"
	cp "$SDBOOT/usr/lib/systemd/boot/efi/$STUB" "$T/boot/efistub"
}

# Resolves the module list to files, with their dependencies (modinfo -F depends), copies them
# uncompressed, and runs depmod so that busybox modprobe finds them in the guest.
install_modules() {
	local src="$KERNEL/lib/modules/$KVER" dst="$T/lib/modules/$KVER"
	mkdir -p "$dst"
	cp "$src"/modules.builtin "$src"/modules.builtin.modinfo "$src"/modules.order "$dst"/ 2>/dev/null || true
	declare -A path
	local f name
	while IFS= read -r f; do
		name=$(basename "$f"); name=${name%%.ko*}; name=${name//-/_}
		path[$name]=$f
	done < <(cd "$src" && find kernel -name '*.ko*')
	local queue=() seen=" " m dep
	for m in $MODULES; do queue+=("${m//-/_}"); done
	while [ ${#queue[@]} -gt 0 ]; do
		m=${queue[0]}; queue=("${queue[@]:1}")
		case "$seen" in *" $m "*) continue ;; esac
		seen="$seen$m "
		[ -n "${path[$m]:-}" ] || continue # built in or not in this flavour
		f=${path[$m]}
		mkdir -p "$dst/$(dirname "$f")"
		case "$f" in
		*.ko.xz) xz -dc "$src/$f" >"$dst/${f%.xz}" ;;
		*.ko.zst) zstd -qdc "$src/$f" >"$dst/${f%.zst}" ;;
		*.ko.gz) gzip -dc "$src/$f" >"$dst/${f%.gz}" ;;
		*) cp "$src/$f" "$dst/$f" ;;
		esac
		for dep in $(modinfo -F depends "$src/$f" | tr ',' ' '); do queue+=("${dep//-/_}"); done
	done
	depmod -b "$T" "$KVER"
}

# A path inside an unpacked package with its symbolic links followed inside that package (an
# absolute link target is the package's own path, as it is once installed). Prints the path
# relative to the package.
deref() {
	local root=$1 rel=$2 target i
	for i in 1 2 3 4 5 6 7 8; do
		[ -L "$root/$rel" ] || { echo "$rel"; return 0; }
		target=$(readlink "$root/$rel")
		case "$target" in /*) rel=${target#/} ;; *) rel=$(dirname "$rel")/$target ;; esac
		rel=$(realpath -ms --relative-to=/ "/$rel")
	done
	die "too many symbolic links at $root/$rel"
}

# Debian's OpenSSH and efibootmgr in the busybox tree, with what they link against. Each program of
# DEBIAN_PROGRAMS goes to its path; every shared library its ELF file needs (NEEDED, followed
# recursively) is looked up by name in the library folders of the fetched packages and copied to
# the same path (symbolic links resolved inside the package); the ELF interpreter that the
# programs ask for (PT_INTERP: /lib/ld-linux-aarch64.so.1, /lib64/ld-linux-x86-64.so.2) is made as
# the package makes it. glibc finds the libraries in its default folders (lib/<triplet>,
# usr/lib/<triplet>), so no ld.so.cache is needed.
install_debian_programs() {
	declare -A pkgdir soname
	local names i d f rel
	read -ra names <<<"$DEBIAN_TOOLS $DEBIAN_LIBS"
	for i in "${!names[@]}"; do pkgdir[${names[$i]}]=${DEBDIRS[$i]}; done
	for d in "${DEBDIRS[@]}"; do
		while IFS= read -r f; do
			rel=${f#"$d"/}
			# The multiarch folder wins over a compatibility copy elsewhere.
			case "${soname[$(basename "$rel")]:-}" in *-linux-gnu/*) continue ;; esac
			soname[$(basename "$rel")]="$d|$rel"
		done < <(find "$d/lib" "$d/usr/lib" \( -type f -o -type l \) -name '*.so*' 2>/dev/null | LC_ALL=C sort)
	done
	local queue=() seen=" " spec pkg src dst interp="" lib entry
	for spec in $DEBIAN_PROGRAMS; do
		IFS=: read -r pkg src dst <<<"$spec"
		dst=${dst:-$src}
		[ -n "${pkgdir[$pkg]:-}" ] || die "no package $pkg among DEBIAN_TOOLS"
		[ -f "${pkgdir[$pkg]}/$src" ] || die "$pkg has no $src"
		mkdir -p "$T/$(dirname "$dst")"
		cp "${pkgdir[$pkg]}/$src" "$T/$dst"
		chmod 0755 "$T/$dst"
		queue+=("$T/$dst")
		f=$(readelf -l "$T/$dst" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')
		[ -n "$f" ] || die "$pkg's $src has no ELF interpreter: not a dynamically linked program"
		interp=$f
	done
	while [ ${#queue[@]} -gt 0 ]; do
		f=${queue[0]}; queue=("${queue[@]:1}")
		for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
			case "$seen" in *" $lib "*) continue ;; esac
			seen="$seen$lib "
			entry=${soname[$lib]:-}
			[ -n "$entry" ] || die "no package of DEBIAN_LIBS has $lib (needed by ${f#"$T"/}): add the Debian package that has it"
			d=${entry%%|*} rel=${entry#*|}
			mkdir -p "$T/$(dirname "$rel")"
			cp "$d/$(deref "$d" "$rel")" "$T/$rel"
			queue+=("$T/$rel")
		done
	done
	# The interpreter: a link (or the file) where the programs look for it, as libc6 has it.
	d=${pkgdir[libc6]}
	rel=${interp#/}
	[ -e "$d/$rel" ] || [ -L "$d/$rel" ] || die "libc6 has no $interp"
	if ! [ -e "$T/$rel" ]; then
		mkdir -p "$T/$(dirname "$rel")"
		if [ -L "$d/$rel" ]; then ln -s "$(readlink "$d/$rel")" "$T/$rel"; else cp "$d/$rel" "$T/$rel"; fi
	fi
	rel=$(deref "$d" "$rel")
	[ -f "$T/$rel" ] || { mkdir -p "$T/$(dirname "$rel")"; cp "$d/$rel" "$T/$rel"; }
	# Not a library any program names, but sshd reads it for diffie-hellman-group-exchange.
	mkdir -p "$T/etc/ssh/sshd_config.d"
	cp "${pkgdir[openssh-server]}/etc/ssh/moduli" "$T/etc/ssh/moduli"
}

# A stand-in for OpenRC, in busybox sh, that behaves like OpenRC where ramroot's health report
# (src/boot/health.ts) looks: an Alpine inittab, setup.sh's `rc-update add` lines and the runlevels
# work here, and /run/openrc records what started and what failed.
#   openrc RUNLEVEL   sysinit first mounts /proc, /sys and /run (OpenRC's init.sh and sysfs);
#                     then, for every runlevel, starts each service linked in
#                     /etc/runlevels/RUNLEVEL that is not started yet, through rc-service.
#                     `openrc shutdown` stops the started services (last started first, with
#                     RC_GOINGDOWN=YES), then starts the shutdown runlevel's (killprocs, savecache,
#                     mount-ro).
#   rc-service SVC start|stop|restart|status   runs /etc/init.d/SVC ACTION and keeps OpenRC's state:
#                     /run/openrc/starting/SVC while it starts, then started/SVC, or failed/SVC and
#                     " * ERROR: SVC failed to start" (links to /etc/init.d/SVC, as OpenRC's).
#   rc-update add|del SVC [RUNLEVEL]   the link /etc/runlevels/RUNLEVEL/SVC -> /etc/init.d/SVC;
#                     refuses a service without an /etc/init.d script, as OpenRC's does.
#   etc/init.d/*      small labelled stand-ins for the services the example setup.sh enables.
# Not OpenRC: no dependency tree (a fixed order: FIRST, then the rest by name, then LAST), no
# parallel start, no rc.conf, openrc-run only as a small stand-in (install_openrc_run_standin; the stand-ins below are plain sh taking start|stop), no
# `need`/`use`, no hotplug or inactive states of its own.
install_openrc_standin() {
	cat >"$T/sbin/openrc" <<'EOF'
#!/bin/sh
# ramroot test system: a stand-in for OpenRC's `openrc RUNLEVEL` (scripts/testsys.sh), in busybox
# sh. Starts the services linked in /etc/runlevels/RUNLEVEL through rc-service, which records
# /run/openrc/started/SVC or failed/SVC as OpenRC does; `openrc shutdown` stops what was started,
# last first, then starts the shutdown runlevel. No dependency tree: a fixed order instead.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
svcdir=/run/openrc
# Where OpenRC's dependencies put them (devfs before mdev and hwdrivers, modules before
# localmount, localmount before what writes to disks; local after everything; mount-ro last).
FIRST="sysfs devfs dmesg mdev hwdrivers modules sysctl hostname hwclock swclock fsck root localmount"
LAST="killprocs savecache mount-ro local"
has() { [ -e "$1" ] || [ -L "$1" ]; }
# The services of runlevel $1, in start order.
ordered() {
	dir=/etc/runlevels/$1
	for s in $FIRST; do has "$dir/$s" && echo "$s"; done
	for f in "$dir"/*; do
		has "$f" || continue
		s=${f##*/}
		case " $FIRST $LAST " in *" $s "*) ;; *) echo "$s" ;; esac
	done
	for s in $LAST; do has "$dir/$s" && echo "$s"; done
}
level=${1:-default}
case "$level" in
sysinit)
	echo "   OpenRC (ramroot test-system stand-in) is starting up Linux $(uname -r) ($(uname -m))"
	grep -q ' /proc ' /proc/mounts 2>/dev/null || mount -t proc -o nosuid,nodev,noexec proc /proc
	grep -q ' /sys ' /proc/mounts || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
	grep -q ' /run ' /proc/mounts || mount -t tmpfs -o mode=0755,nosuid,nodev,size=10% tmpfs /run
	# As OpenRC's sysfs service: the UEFI variables, where the kernel booted through UEFI (efivarfs
	# is a module of Debian's kernels; the kernel would ask modprobe for it too).
	if [ -d /sys/firmware/efi/efivars ] && ! grep -q ' /sys/firmware/efi/efivars ' /proc/mounts; then
		modprobe -q efivarfs 2>/dev/null
		mount -t efivarfs -o nosuid,nodev,noexec efivarfs /sys/firmware/efi/efivars
	fi
	;;
esac
mkdir -p "$svcdir/started" "$svcdir/starting" "$svcdir/stopping" "$svcdir/failed" "$svcdir/inactive"
echo "$level" >"$svcdir/softlevel"
case "$level" in
shutdown | reboot)
	export RC_GOINGDOWN=YES
	keep=" $(ordered sysinit | tr '\n' ' ') $(ordered shutdown | tr '\n' ' ') "
	order=" $(ordered boot | tr '\n' ' ') $(ordered default | tr '\n' ' ') "
	# Started by hand (rc-service) and not in a runlevel: stopped first.
	for f in "$svcdir"/started/*; do
		has "$f" || continue
		s=${f##*/}
		case "$order$keep" in *" $s "*) ;; *) order=" $s$order" ;; esac
	done
	reversed=""
	for s in $order; do reversed="$s $reversed"; done
	for s in $reversed; do
		case "$keep" in *" $s "*) continue ;; esac
		has "$svcdir/started/$s" && rc-service "$s" stop
	done
	for s in $(ordered shutdown); do rc-service "$s" start; done
	;;
*)
	[ -d "/etc/runlevels/$level" ] || { echo " * ERROR: runlevel $level does not exist" >&2; exit 1; }
	for s in $(ordered "$level"); do
		has "$svcdir/started/$s" || rc-service "$s" start
	done
	;;
esac
exit 0
EOF
	cat >"$T/sbin/rc-service" <<'EOF'
#!/bin/sh
# ramroot test system: a stand-in for OpenRC's `rc-service SERVICE start|stop|restart|status`
# (scripts/testsys.sh) and the state keeping of openrc-run: runs /etc/init.d/SERVICE ACTION and
# records it under /run/openrc as OpenRC does: starting/SERVICE while it starts, then
# started/SERVICE, or failed/SERVICE with " * ERROR: SERVICE failed to start"; stopping/ likewise.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
svcdir=/run/openrc
usage() { echo "usage: rc-service SERVICE start|stop|restart|status | --exists SERVICE | --list" >&2; exit 1; }
case "${1:-}" in
-e | --exists) [ -n "${2:-}" ] && [ -x "/etc/init.d/$2" ]; exit ;;
-l | --list) ls /etc/init.d; exit 0 ;;
"" | -*) usage ;;
esac
svc=$1 action=${2:-}
script=/etc/init.d/$svc
case "$svc" in */* | .*) echo " * rc-service: bad service name $svc" >&2; exit 1 ;; esac
[ -x "$script" ] || { echo " * rc-service: service \`$svc' does not exist" >&2; exit 1; }
mkdir -p "$svcdir/started" "$svcdir/starting" "$svcdir/stopping" "$svcdir/failed" "$svcdir/inactive"
has() { [ -e "$svcdir/$1/$svc" ] || [ -L "$svcdir/$1/$svc" ]; }
mark() { ln -sfn "$script" "$svcdir/$1/$svc"; }
unmark() { rm -f "$svcdir/$1/$svc"; }
start() {
	if has started; then echo " * WARNING: $svc has already been started"; return 0; fi
	unmark failed
	mark starting
	echo " * Starting $svc ..."
	"$script" start
	rc=$?
	unmark starting
	if [ $rc -eq 0 ]; then
		mark started
		return 0
	fi
	mark failed
	echo " * ERROR: $svc failed to start"
	return 1
}
stop() {
	if ! has started; then echo " * WARNING: $svc is already stopped"; return 0; fi
	mark stopping
	echo " * Stopping $svc ..."
	"$script" stop
	rc=$?
	unmark stopping
	if [ $rc -eq 0 ]; then
		unmark started
		return 0
	fi
	echo " * ERROR: $svc failed to stop"
	return 1
}
case "$action" in
start) start ;;
stop) stop ;;
restart) stop && start ;;
status)
	if has starting; then echo " * status: starting"; exit 0
	elif has started; then echo " * status: started"; exit 0
	elif has failed; then echo " * status: crashed"; exit 32
	else echo " * status: stopped"; exit 3
	fi
	;;
*) usage ;;
esac
EOF
	cat >"$T/sbin/rc-update" <<'EOF'
#!/bin/sh
# ramroot test system: a stand-in for OpenRC's `rc-update add|del SERVICE [RUNLEVEL]` (default
# runlevel: default) and `rc-update show` (scripts/testsys.sh): the link
# /etc/runlevels/RUNLEVEL/SERVICE -> /etc/init.d/SERVICE. As OpenRC's, it refuses a service that
# has no /etc/init.d script.
usage() { echo "usage: rc-update add|del SERVICE [RUNLEVEL] | show" >&2; exit 1; }
case "${1:-}" in
add | del) [ -n "${2:-}" ] || usage; svc=$2 level=${3:-default} ;;
show | "") for d in /etc/runlevels/*/; do echo "$(basename "$d"):" $(ls "$d"); done; exit 0 ;;
*) usage ;;
esac
case "$svc$level" in */* | .*) echo " * rc-update: bad name $svc $level" >&2; exit 1 ;; esac
if [ "$1" = add ]; then
	if ! [ -e "/etc/init.d/$svc" ]; then
		echo " * rc-update: service \`$svc' does not exist" >&2
		exit 1
	fi
	mkdir -p "/etc/runlevels/$level"
	if [ -L "/etc/runlevels/$level/$svc" ]; then
		echo " * rc-update: $svc already installed in runlevel \`$level'; skipping"
		exit 0
	fi
	ln -sfn "/etc/init.d/$svc" "/etc/runlevels/$level/$svc"
	echo " * service $svc added to runlevel $level"
else
	if ! [ -L "/etc/runlevels/$level/$svc" ]; then
		echo " * rc-update: service \`$svc' is not in the runlevel \`$level'" >&2
		exit 1
	fi
	rm -f "/etc/runlevels/$level/$svc"
	echo " * service $svc removed from runlevel $level"
fi
EOF
	chmod 0755 "$T/sbin/openrc" "$T/sbin/rc-update" "$T/sbin/rc-service"
	install_initd_standins
	install_openrc_run_standin
}

# A stand-in for OpenRC's openrc-run, the interpreter of /etc/init.d scripts that start with
# #!/sbin/openrc-run (a system's own services, such as the example's srvmonitor): the script is
# sourced with RC_SVCNAME set, after /etc/conf.d/RC_SVCNAME; start, stop and status are its own
# functions, else the defaults: `command` with `command_args`, in the background with
# command_background=yes (its pid in `pidfile`, its output appended to output_log and error_log),
# stopped by SIGTERM to that pid; start_pre, start_post, stop_pre and stop_post around them;
# ebegin, eend, einfo, ewarn, eerror and yesno as OpenRC's. Not as the real one: depend() is read
# by nobody (the stand-in's openrc has a fixed order), no supervise-daemon, no command_user, no
# extra_commands.
install_openrc_run_standin() {
	cat >"$T/sbin/openrc-run" <<'EOF'
#!/bin/sh
# ramroot test system: a stand-in for OpenRC's openrc-run (scripts/testsys.sh), the interpreter
# of #!/sbin/openrc-run scripts: `/sbin/openrc-run /etc/init.d/SVC start|stop|status`.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
script=${1:?usage: openrc-run SCRIPT start|stop|restart|status}
shift
while [ $# -gt 0 ]; do
	case "$1" in --lockfd) shift 2 ;; --*) shift ;; *) break ;; esac
done
action=${1:-}
RC_SVCNAME=${script##*/}
SVCNAME=$RC_SVCNAME
RC_SERVICE=$script
export RC_SVCNAME SVCNAME RC_SERVICE
einfo() { echo " * $*"; }
ewarn() { echo " * WARNING: $*"; }
eerror() { echo " * ERROR: $*"; }
ebegin() { echo " * $* ..."; }
eend() {
	_r=${1:-0}
	[ $# -gt 0 ] && shift
	[ "$_r" -eq 0 ] || [ $# -eq 0 ] || eerror "$*"
	return "$_r"
}
yesno() { case "$1" in [Yy][Ee][Ss] | [Tt][Rr][Uu][Ee] | [Oo][Nn] | 1) return 0 ;; esac; return 1; }
depend() { :; }
start_pre() { :; }
start_post() { :; }
stop_pre() { :; }
stop_post() { :; }
running() { [ -n "${pidfile:-}" ] && [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
default_start() {
	[ -n "${command:-}" ] || return 0
	[ -x "$command" ] || { eerror "$RC_SVCNAME: $command does not exist or is not executable"; return 1; }
	# No "Starting NAME ...": rc-service says it (as OpenRC says it once).
	if yesno "${command_background:-no}"; then
		[ -n "${pidfile:-}" ] || { eerror "$RC_SVCNAME: command_background needs a pidfile"; return 1; }
		mkdir -p "${pidfile%/*}"
		# shellcheck disable=SC2086
		setsid "$command" $command_args </dev/null >>"${output_log:-/dev/null}" 2>>"${error_log:-/dev/null}" &
		echo $! >"$pidfile"
		# A program that cannot start (a bad flag, a port in use) is gone a moment later.
		sleep 0.3
		running || { rm -f "$pidfile"; eend 1 "$RC_SVCNAME: $command exited at start (its output: ${error_log:-none kept})"; return 1; }
	else
		# shellcheck disable=SC2086
		"$command" $command_args </dev/null >>"${output_log:-/dev/null}" 2>>"${error_log:-/dev/null}" || { eend 1 "$command failed"; return 1; }
	fi
	eend 0
}
default_stop() {
	[ -n "${pidfile:-}" ] && [ -s "$pidfile" ] || return 0
	pid=$(cat "$pidfile")
	kill -TERM "$pid" 2>/dev/null
	i=0
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
	rm -f "$pidfile"
	eend 0
}
start() { default_start; }
stop() { default_stop; }
status() { if running; then einfo "status: started"; else einfo "status: stopped"; return 3; fi; }
[ -f "/etc/conf.d/$RC_SVCNAME" ] && . "/etc/conf.d/$RC_SVCNAME"
. "$script"
case "$action" in
start) start_pre && start && start_post ;;
stop) stop_pre && stop && stop_post ;;
restart) stop_pre && stop && stop_post && start_pre && start && start_post ;;
status) status ;;
*) eerror "usage: $script start|stop|restart|status"; exit 1 ;;
esac
EOF
	chmod 0755 "$T/sbin/openrc-run"
}

# Writes etc/init.d/$1 from stdin, executable.
initd() {
	cat >"$T/etc/init.d/$1"
	chmod 0755 "$T/etc/init.d/$1"
}

# Stand-ins for the services of the example system/setup.sh. Each is plain sh taking start|stop
# (OpenRC's are openrc-run scripts) and says in its first lines what the real one does and what
# this one does instead.
install_initd_standins() {
	mkdir -p "$T/etc/init.d"
	initd devfs <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's devfs service. As the real one:
# devtmpfs on /dev, devpts, /dev/shm and the /dev/fd links.
case "$1" in
start)
	grep -q ' /dev ' /proc/mounts || mount -t devtmpfs -o exec,nosuid,mode=0755,size=10M devtmpfs /dev || exit 1
	mkdir -p /dev/pts /dev/shm
	grep -q ' /dev/pts ' /proc/mounts || mount -t devpts -o gid=5,mode=0620,noexec,nosuid devpts /dev/pts
	grep -q ' /dev/shm ' /proc/mounts || mount -t tmpfs -o nodev,nosuid,noexec shm /dev/shm
	[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
	[ -e /dev/stdin ] || ln -s fd/0 /dev/stdin
	[ -e /dev/stdout ] || ln -s fd/1 /dev/stdout
	[ -e /dev/stderr ] || ln -s fd/2 /dev/stderr
	;;
stop) ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd dmesg <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's dmesg service. As the real one:
# the console's kernel log level from /etc/conf.d/dmesg (dmesg_level, default 1).
dmesg_level=1
[ -f /etc/conf.d/dmesg ] && . /etc/conf.d/dmesg
case "$1" in
start) dmesg -n "$dmesg_level" ;;
stop) ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd mdev <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for Alpine's mdev service. As the real one:
# mdev as the kernel's hotplug helper, then `mdev -s` for the devices already there.
case "$1" in
start)
	[ -w /proc/sys/kernel/hotplug ] && echo /sbin/mdev >/proc/sys/kernel/hotplug
	mdev -s
	;;
stop) [ -w /proc/sys/kernel/hotplug ] && echo "" >/proc/sys/kernel/hotplug; exit 0 ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd hwdrivers <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for Alpine's hwdrivers service. As the real
# one: loads the module for every device's modalias (busybox modprobe reads modules.alias),
# twice, so that the devices the first pass's drivers bring (virtio_pci's disks) get theirs too.
# It looks in /sys/devices, where every modalias file is, not in all of /sys as the real one:
# the same files, in a third of the time under QEMU's TCG. The test tree holds only a subset of
# the kernel's modules: the rest are skipped.
case "$1" in
start)
	for pass in 1 2; do
		find /sys/devices -name modalias -type f -print0 2>/dev/null | xargs -0 sort -u | xargs modprobe -b -a -q 2>/dev/null
	done
	exit 0
	;;
stop) ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd modules <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's modules service. As the real
# one: loads the modules named in /etc/modules and /etc/modules-load.d/*.conf, one per line.
case "$1" in
start)
	for f in /etc/modules /etc/modules-load.d/*.conf; do
		[ -f "$f" ] || continue
		sed -e 's/#.*//' "$f" | while read -r m args; do
			[ -n "$m" ] && modprobe -q "$m" $args
		done
	done
	exit 0
	;;
stop) ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd sysctl <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's sysctl service. As the real
# one: applies /etc/sysctl.conf and /etc/sysctl.d/*.conf.
case "$1" in
start)
	rc=0
	for f in /etc/sysctl.d/*.conf /etc/sysctl.conf; do
		[ -f "$f" ] && { sysctl -q -p "$f" || rc=1; }
	done
	exit $rc
	;;
stop) ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd hostname <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's hostname service. As the real
# one: the host name from /etc/hostname (else "localhost").
case "$1" in
start)
	if [ -s /etc/hostname ]; then hostname -F /etc/hostname; else hostname localhost; fi
	;;
stop) ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd bootmisc <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's bootmisc service. The real one
# cleans /tmp and /var/run and prepares /var/log; this one makes the folders.
case "$1" in
start) mkdir -p /var/log /var/tmp /var/lib /run/lock && chmod 1777 /var/tmp ;;
stop) ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd syslog <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for Alpine's syslog service. As the real
# one: busybox syslogd (SYSLOGD_OPTS from /etc/conf.d/syslog), writing /var/log/messages.
SYSLOGD_OPTS=""
[ -f /etc/conf.d/syslog ] && . /etc/conf.d/syslog
case "$1" in
start) mkdir -p /var/log && syslogd $SYSLOGD_OPTS ;;
stop) killall -q syslogd; exit 0 ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd localmount <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's localmount service. As the real
# one: `mount -a` of /etc/fstab's local filesystems (not network ones, not noauto), and it never
# fails (a filesystem that does not mount is reported, not fatal: ramroot's health report is
# what names it). Stopping while the system goes down (RC_GOINGDOWN=YES) syncs and unmounts
# every mounted filesystem but /, /dev, /proc, /sys and /run, last mounted first.
netfs="afs ceph cifs coda davfs fuse.sshfs gfs glusterfs lustre ncpfs nfs nfs4 ocfs2 shfs smbfs smb3 sshfs 9p virtiofs"
case "$1" in
start)
	# busybox mount: one "no" before the list excludes every type in it.
	types=noproc
	for t in $netfs; do types="$types,$t"; done
	if ! mount -a -t "$types" -O no_netdev; then
		echo " * Some local filesystem failed to mount"
	fi
	exit 0
	;;
stop)
	[ "$RC_GOINGDOWN" = YES ] || exit 0
	sync
	for m in $(awk '{ m[NR] = $2 "|" $3 } END { for (i = NR; i > 0; i--) print m[i] }' /proc/mounts); do
		point=${m%|*} type=${m##*|}
		case "$point" in / | /dev | /dev/* | /proc | /proc/* | /sys | /sys/* | /run | /run/*) continue ;; esac
		case " $netfs " in *" $type "*) continue ;; esac
		point=$(printf '%b' "$point")
		umount "$point" || echo " * Failed to unmount $point"
	done
	exit 0
	;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd seedrng <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's seedrng service. As the real
# one: feeds the saved seed in seed_dir (/etc/conf.d/seedrng, default /var/lib/seedrng) to the
# kernel at start and saves a new one at start and stop. busybox's seedrng applet is not in this
# busybox: the seed is made from /proc/sys/kernel/random/uuid, which never waits for the kernel's
# RNG to be ready (the real one asks getrandom() not to wait either; /dev/urandom would, about
# a second under QEMU's TCG), and is never credited.
seed_dir=/var/lib/seedrng
[ -f /etc/conf.d/seedrng ] && . /etc/conf.d/seedrng
save() {
	mkdir -p "$seed_dir" || return 1
	for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14; do cat /proc/sys/kernel/random/uuid; done >"$seed_dir/seed.no-credit.new" &&
		mv -f "$seed_dir/seed.no-credit.new" "$seed_dir/seed.no-credit"
}
case "$1" in
start)
	for f in "$seed_dir/seed.credit" "$seed_dir/seed.no-credit"; do
		[ -f "$f" ] && cat "$f" >/dev/urandom
	done
	save
	;;
stop) save ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd networking <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for Alpine's networking service. As the real
# one: ifup for every `auto` interface of /etc/network/interfaces; it succeeds when at least one
# came up (lo does; the boot check's QEMU has no network card, so eth0 does not).
case "$1" in
start)
	rc=1
	for i in $(awk '$1 == "auto" { for (n = 2; n <= NF; n++) print $n }' /etc/network/interfaces 2>/dev/null); do
		if ifup "$i" >/dev/null 2>&1; then rc=0; else ifdown "$i" >/dev/null 2>&1; fi
	done
	exit $rc
	;;
stop) ifdown -a >/dev/null 2>&1; exit 0 ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd sshd <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for Alpine's sshd service (openssh-server-openrc),
# which starts Debian's OpenSSH sshd (in the tree with what it links against). As the real one:
# settings from /etc/conf.d/sshd (cfgfile, SSHD_OPTS, sshd_disable_keygen, key_types_to_generate,
# <type>_bit_size); unless sshd_disable_keygen=yes, the host keys of key_types_to_generate that do
# not exist are made (default: the types that the configuration's HostKey lines name, else rsa,
# ecdsa and ed25519); `sshd -t` checks the configuration; sshd starts and writes /run/sshd.pid. It
# fails, saying why, when any of this fails (no sshd, no host key, a bad configuration, a port in
# use). Not as the real one: Debian's sshd needs its privilege separation folder /run/sshd
# (Alpine's is /var/empty), made here; no openrc-run supervision.
cfgfile=/etc/ssh/sshd_config
pidfile=/run/sshd.pid
command=/usr/sbin/sshd
SSHD_OPTS=""
sshd_disable_keygen=no
key_types_to_generate=""
[ -f /etc/conf.d/sshd ] && . /etc/conf.d/sshd
yesno() { case "$1" in [Yy][Ee][Ss] | [Tt][Rr][Uu][Ee] | [Oo][Nn] | 1) return 0 ;; esac; return 1; }
keygen() {
	types=$key_types_to_generate
	if [ -z "$types" ]; then
		types=$(sed -n 's|^[[:space:]]*[Hh][Oo][Ss][Tt][Kk][Ee][Yy][[:space:]][[:space:]]*/etc/ssh/ssh_host_\([a-z0-9]*\)_key[[:space:]]*$|\1|p' \
			"$cfgfile" /etc/ssh/sshd_config.d/*.conf 2>/dev/null)
		[ -n "$types" ] || types="rsa ecdsa ed25519"
	fi
	for type in $types; do
		key=/etc/ssh/ssh_host_${type}_key
		[ -f "$key" ] && continue
		eval "bits=\${${type}_bit_size:-}"
		echo " * Generating $type SSH host key: $key (the image has none, so it changes at every boot)"
		ssh-keygen -q -f "$key" -N '' -t "$type" ${bits:+-b "$bits"} || { echo " * ERROR: ssh-keygen failed to make $key"; return 1; }
	done
}
case "$1" in
start)
	[ -x "$command" ] || { echo " * ERROR: $command does not exist"; exit 1; }
	mkdir -p /run/sshd /var/empty && chmod 0755 /run/sshd || exit 1
	if ! yesno "$sshd_disable_keygen"; then keygen || exit 1; fi
	out=$("$command" -t -f "$cfgfile" $SSHD_OPTS 2>&1) || { echo " * ERROR: sshd -t: $out"; exit 1; }
	rm -f "$pidfile"
	"$command" -f "$cfgfile" -o "PidFile=$pidfile" $SSHD_OPTS || { echo " * ERROR: sshd did not start"; exit 1; }
	# sshd writes its pid file once it listens; a port it cannot bind ends it first.
	i=0
	while ! [ -s "$pidfile" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	[ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo " * ERROR: sshd exited at start (its messages are in /var/log/messages)"; exit 1; }
	;;
stop)
	[ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
	rm -f "$pidfile"
	exit 0
	;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd acpid <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for Alpine's acpid service (busybox-openrc). As
# the real one: busybox acpid with ACPID_OPTS from /etc/conf.d/acpid. It reads the input devices
# (/dev/input/event*: evdev) and, for each ACPI event, runs /etc/acpi/<action> (a program, or a
# folder for run-parts); the power button's is /etc/acpi/PWRF/00000080, which the system provides
# (e.g. `poweroff`). busybox acpid needs /etc/acpi: without it the service fails.
ACPID_OPTS=""
[ -f /etc/conf.d/acpid ] && . /etc/conf.d/acpid
case "$1" in
start)
	[ -d /etc/acpi ] || { echo " * ERROR: acpid: no /etc/acpi (the actions for ACPI events)"; exit 1; }
	acpid $ACPID_OPTS
	;;
stop)
	# By its pid file (busybox acpid's default): `killall acpid` would match this script too.
	[ -s /run/acpid.pid ] && kill "$(cat /run/acpid.pid)" 2>/dev/null
	exit 0
	;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd local <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's local service. As the real one:
# runs the executable /etc/local.d/*.start in order at start (*.stop at stop), their output
# discarded unless rc_verbose=yes (/etc/conf.d/local), and never fails.
rc_verbose=no
[ -f /etc/conf.d/local ] && . /etc/conf.d/local
case "$rc_verbose" in [Yy][Ee][Ss] | [Tt][Rr][Uu][Ee] | [Oo][Nn] | 1) verbose=1 ;; *) verbose="" ;; esac
case "$1" in
start | stop)
	for f in /etc/local.d/*."$1"; do
		[ -x "$f" ] || continue
		if [ -n "$verbose" ]; then "$f"; else "$f" >/dev/null 2>&1; fi || echo " * Execution of \"$f\" failed."
	done
	exit 0
	;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd killprocs <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's killprocs service (shutdown
# runlevel). As the real one (killall5): SIGTERM to every process but init, kernel threads and
# our own session (openrc shutdown), then SIGKILL to what is left after at most a second.
# /proc/PID/stat after the command name: state ppid pgrp session ... (read without a subprocess).
fields() { read -r stat <"$1" 2>/dev/null && echo "${stat##*) }"; }
action=${1:-}
set -- $(fields /proc/$$/stat)
mysid=$4
others() {
	for d in /proc/[0-9]*; do
		pid=${d#/proc/}
		[ "$pid" = 1 ] || [ "$pid" = 2 ] && continue
		read -r stat <"$d/stat" 2>/dev/null || continue
		set -- ${stat##*) }
		[ $# -ge 4 ] || continue
		[ "$2" = 2 ] && continue
		[ "$4" = "$mysid" ] && continue
		echo "$pid"
	done
}
case "$action" in
start)
	pids=$(others)
	[ -n "$pids" ] || exit 0
	kill -TERM $pids 2>/dev/null
	# Then only those pids are watched (a scan of /proc costs most of a second under TCG).
	i=0
	while [ $i -lt 10 ]; do
		alive=""
		for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
		[ -n "$alive" ] || exit 0
		pids=$alive
		sleep 0.1
		i=$((i + 1))
	done
	kill -KILL $pids 2>/dev/null
	exit 0
	;;
stop) ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd savecache <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for Alpine's savecache service (shutdown
# runlevel). The real one saves the apk cache to the LBU medium when one is configured; there is
# no apk here: it does nothing.
case "$1" in
start | stop) exit 0 ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
	initd mount-ro <<'EOF'
#!/bin/sh
# ramroot test system (scripts/testsys.sh): stand-in for OpenRC's mount-ro service (shutdown
# runlevel, after killprocs and savecache). As the real one: syncs, then unmounts (or, when
# busy, remounts read-only: umount -r) every filesystem still mounted but /, /dev, /proc, /sys
# and /run (the RAM root has nothing to protect).
case "$1" in
start)
	sync
	rc=0
	for point in $(awk '{ m[NR] = $2 } END { for (i = NR; i > 0; i--) print m[i] }' /proc/mounts); do
		case "$point" in / | /dev | /dev/* | /proc | /proc/* | /sys | /sys/* | /run | /run/*) continue ;; esac
		point=$(printf '%b' "$point")
		umount -r "$point" || { echo " * Failed to unmount or remount $point read-only"; rc=1; }
	done
	sync
	exit $rc
	;;
stop) ;;
*) echo "usage: $0 start|stop" >&2; exit 1 ;;
esac
EOF
}

write_etc() {
	mkdir -p "$T/etc/init.d" "$T/etc/local.d" "$T/proc" "$T/sys" "$T/dev" "$T/run" "$T/tmp" \
		"$T/media/usb" "$T/mnt" "$T/root" "$T/var/log" "$T/var/tmp" "$T/lib/firmware"
	chmod 1777 "$T/tmp" "$T/var/tmp"
	chmod 0700 "$T/root"
	ln -s /run "$T/var/run"
	mkdir -p "$T/etc/runlevels/sysinit" "$T/etc/runlevels/boot" "$T/etc/runlevels/default" "$T/etc/runlevels/shutdown"
	# Alpine's runlevels; a shell on the console (a system's own inittab replaces this one).
	cat >"$T/etc/inittab" <<-'EOF'
	::sysinit:/sbin/openrc sysinit
	::sysinit:/sbin/openrc boot
	::wait:/sbin/openrc default
	::respawn:-/bin/sh
	::ctrlaltdel:/sbin/reboot
	::shutdown:/sbin/openrc shutdown
	EOF
	cat >"$T/etc/fstab" <<-'EOF'
	UUID=B61B-19E7 /media/usb vfat noatime,rw,fmask=177 0 0
	EOF
	install_openrc_standin
	cat >"$T/etc/local.d/README" <<-'EOF'
	Executables named *.start here run at the end of boot, in order (as Alpine's local service).
	EOF
	# sshd's privilege separation user, as Alpine's alpine-baselayout has it.
	printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'sshd:x:22:22:sshd:/dev/null:/sbin/nologin' >"$T/etc/passwd"
	printf '%s\n' 'root::0:0:99999:7:::' 'sshd:!::0:::::' >"$T/etc/shadow"
	chmod 0600 "$T/etc/shadow"
	printf '%s\n' 'root:x:0:root' 'sshd:x:22:sshd' >"$T/etc/group"
	# glibc's programs (sshd) look users up in the files; Alpine's musl needs no such file.
	cat >"$T/etc/nsswitch.conf" <<-'EOF'
	passwd: files
	group: files
	shadow: files
	hosts: files dns
	EOF
	# Laid out as Alpine's sshd_config: the drop-in folder first, the host keys commented (sshd then
	# loads those of the default types that exist: a system names its own), root by key only.
	cat >"$T/etc/ssh/sshd_config" <<-'EOF'
	# ramroot test system (scripts/testsys.sh): Debian's sshd, configured as Alpine's openssh-server
	# ships it. See sshd_config(5).
	Include /etc/ssh/sshd_config.d/*.conf
	#Port 22
	#HostKey /etc/ssh/ssh_host_rsa_key
	#HostKey /etc/ssh/ssh_host_ecdsa_key
	#HostKey /etc/ssh/ssh_host_ed25519_key
	#PermitRootLogin prohibit-password
	#PasswordAuthentication yes
	AuthorizedKeysFile	.ssh/authorized_keys
	# Debian's SFTP server, at Debian's path.
	Subsystem	sftp	/usr/lib/openssh/sftp-server
	EOF
	# busybox udhcpc's script (ifup's dhcp method runs udhcpc), as Alpine's busybox package has one
	# (at /usr/share/udhcpc; Debian's busybox looks in /etc/udhcpc): the lease's address, routers
	# and name servers.
	mkdir -p "$T/etc/udhcpc"
	cat >"$T/etc/udhcpc/default.script" <<-'EOF'
	#!/bin/sh
	# ramroot test system (scripts/testsys.sh): busybox udhcpc's event script. udhcpc runs it with
	# deconfig, bound, renew, leasefail or nak, the lease in the environment.
	case "$1" in
	deconfig)
		ip -4 addr flush dev "$interface"
		ip link set "$interface" up
		;;
	bound | renew)
		ip -4 addr flush dev "$interface"
		ip -4 addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
		if [ -n "$router" ]; then
			while ip -4 route del default dev "$interface" 2>/dev/null; do :; done
			for r in $router; do ip -4 route add default via "$r" dev "$interface" && break; done
		fi
		if [ -n "$dns" ]; then
			: >/etc/resolv.conf.new
			[ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf.new
			for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf.new; done
			mv -f /etc/resolv.conf.new /etc/resolv.conf
		fi
		;;
	esac
	exit 0
	EOF
	chmod 0755 "$T/etc/udhcpc/default.script"
	mkdir -p "$T/var/empty" "$T/var/lib"
	echo ramroot-test >"$T/etc/hostname"
	cat >"$T/etc/os-release" <<-EOF
	NAME="ramroot test system"
	ID=ramroot-testsys
	ID_LIKE=alpine
	PRETTY_NAME="ramroot test system (Debian busybox and kernel $KVER)"
	VERSION_ID=1
	EOF
	cat >"$T/etc/ramroot-testsys" <<-EOF
	KERNEL=$KVER
	ARCH=$ARCH
	BUSYBOX=$(basename "$BUSYBOX")
	KERNELPKG=$(basename "$KERNEL")
	STUBPKG=$(basename "$SDBOOT")
	EOF
}

main() {
	[ $# -ge 1 ] && [ $# -le 2 ] || usage
	ARCH=$1
	select_packages
	OUT=${2:-$(default_out)}
	if [ -f "$OUT/etc/ramroot-testsys" ]; then echo "$OUT"; exit 0; fi
	mkdir -p "$(dirname "$OUT")"
	T=$(mktemp -d "$OUT.tmp.XXXXXX")
	trap 'rm -rf "$T"' EXIT
	chmod 0755 "$T"
	install_busybox
	install_kernel
	install_modules
	install_debian_programs
	write_etc
	# A concurrent run may have finished first: its tree is identical, keep it (it may be in use).
	if ! mv -T "$T" "$OUT" 2>/dev/null; then
		[ -f "$OUT/etc/ramroot-testsys" ] || die "cannot move $T to $OUT"
		rm -rf "$T"
	fi
	trap - EXIT
	echo "$OUT"
}

main "$@"
