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
#   etc/inittab (Alpine's: openrc sysinit/boot/default/shutdown), etc/local.d/, etc/runlevels/,
#   etc/fstab (UUID=B61B-19E7 /media/usb vfat ...)
#   sbin/openrc, sbin/rc-update, sbin/rc-service: a tiny OpenRC stand-in (busybox sh), so that
#     an Alpine-style system/ (inittab, setup.sh's rc-update add ...) boots on this tree
#   etc/passwd, etc/group, etc/hostname, etc/os-release, etc/ramroot-testsys (KERNEL=<release>)
#   lib/modules/<release>/  a depmod'ed subset: virtio, vfat/fat, nls, usb-storage and their deps
#   boot/vmlinuz-<release>, boot/vmlinuz (symlink), boot/efistub (systemd-stub, also at
#   usr/lib/systemd/boot/efi/linux{x64,aa64}.efi.stub as Alpine's systemd-efistub puts it)
# /boot goes into the UKI, never into the initramfs.
#
# Environment: RAMROOT_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/ramroot).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RAMROOT_CACHE=${RAMROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ramroot}
export RAMROOT_CACHE

# Modules the rc script loads, plus what a real NAS needs to reach its USB stick. Missing ones
# (built in, or absent from the flavour: the cloud kernels have no USB) are skipped.
MODULES="virtio_pci virtio_blk virtio_scsi virtio_net virtio_console vfat fat nls_cp437 nls_ascii nls_utf8 nls_iso8859-1
  usb-storage uas sd_mod xhci-pci xhci-plat-hcd ehci-pci ehci-platform ohci-pci"

die() { echo "testsys.sh: $*" >&2; exit 1; }

usage() { die "usage: testsys.sh aarch64|x86_64 [OUT]"; }

select_packages() {
	case "$ARCH" in
	x86_64) DEBARCH=amd64 KERNELPKG=linux-image-cloud-amd64 STUB=linuxx64.efi.stub ;;
	aarch64) DEBARCH=arm64 KERNELPKG=linux-image-arm64 STUB=linuxaa64.efi.stub ;;
	*) usage ;;
	esac
	# The host's busybox (same Debian version) lists the applets: the target one may not run here.
	local dirs
	dirs=$(bash "$here/debs.sh" "busybox-static:$DEBARCH" "$KERNELPKG:$DEBARCH" "systemd-boot-efi:$DEBARCH" \
		"busybox-static:$(dpkg --print-architecture)")
	# shellcheck disable=SC2206
	local a=($dirs)
	BUSYBOX=${a[0]} KERNEL=${a[1]} SDBOOT=${a[2]} HOSTBUSYBOX=${a[3]}
}

default_out() {
	local h
	h=$( { cat "$0"; basename "$BUSYBOX"; basename "$KERNEL"; basename "$SDBOOT"; } | sha256sum | cut -c1-16)
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

# A stand-in for OpenRC, in busybox sh: enough for an Alpine inittab and setup.sh to work here.
#   openrc RUNLEVEL     sysinit: /proc, /sys, /dev, /run, modules; boot: hostname, mount -a (the
#                       persistence stick); default: /etc/local.d/*.start (OpenRC's local service);
#                       shutdown: *.stop, unmount. Each prints the services enabled in that runlevel.
#   rc-update add|del SVC [RUNLEVEL]   the symlink /etc/runlevels/RUNLEVEL/SVC -> /etc/init.d/SVC, as OpenRC
#   rc-service ...      does nothing (no service scripts here)
install_openrc_standin() {
	cat >"$T/sbin/openrc" <<-'EOF'
	#!/bin/sh
	# ramroot test system: a stand-in for OpenRC's `openrc RUNLEVEL` (scripts/testsys.sh).
	export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	level=${1:-default}
	case "$level" in
	sysinit)
		mount -t proc proc /proc
		mount -t sysfs sysfs /sys
		mount -t devtmpfs devtmpfs /dev 2>/dev/null
		mkdir -p /dev/pts /dev/shm
		mount -t devpts devpts /dev/pts
		mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
		for m in virtio_pci virtio_blk vfat nls_cp437 nls_ascii usb-storage sd_mod xhci-pci; do
			modprobe -q "$m" 2>/dev/null
		done
		;;
	boot)
		hostname -F /etc/hostname 2>/dev/null
		# The persistence disk appears asynchronously: wait up to 5 s for its UUID.
		i=0
		while [ $i -lt 50 ] && ! findfs UUID=B61B-19E7 >/dev/null 2>&1; do sleep 0.1; i=$((i + 1)); done
		mount -a 2>/dev/null
		if ! grep -q ' /media/usb ' /proc/mounts && dev=$(findfs UUID=B61B-19E7 2>/dev/null); then
			mount -t vfat -o noatime,rw,fmask=177 "$dev" /media/usb
		fi
		;;
	default)
		# OpenRC's local service, when enabled (or when nothing was ever enabled). The links
		# point at service scripts this tree does not have: test them with -L.
		set -- /etc/runlevels/*/*
		if [ -L /etc/runlevels/default/local ] || ! [ -L "$1" ]; then
			for f in /etc/local.d/*.start; do
				[ -x "$f" ] && "$f"
			done
		fi
		;;
	shutdown)
		for f in /etc/local.d/*.stop; do
			[ -x "$f" ] && "$f"
		done
		sync
		umount -a -r 2>/dev/null
		;;
	*) echo "openrc: unknown runlevel $level" >&2; exit 1 ;;
	esac
	echo "openrc (ramroot stand-in): $level:" $(ls /etc/runlevels/"$level" 2>/dev/null)
	exit 0
	EOF
	cat >"$T/sbin/rc-update" <<-'EOF'
	#!/bin/sh
	# ramroot test system: OpenRC's rc-update add|del SERVICE [RUNLEVEL] (default runlevel: default).
	usage() { echo "usage: rc-update add|del SERVICE [RUNLEVEL] | show" >&2; exit 1; }
	case "${1:-}" in
	add|del) [ -n "${2:-}" ] || usage; svc=$2 level=${3:-default} ;;
	show|"") for d in /etc/runlevels/*/; do echo "$(basename "$d"):" $(ls "$d"); done; exit 0 ;;
	*) usage ;;
	esac
	case "$svc$level" in */*|.*) echo "rc-update: bad name $svc $level" >&2; exit 1 ;; esac
	mkdir -p "/etc/runlevels/$level"
	if [ "$1" = add ]; then
		ln -sfn "/etc/init.d/$svc" "/etc/runlevels/$level/$svc"
		echo " * service $svc added to runlevel $level"
	else
		rm -f "/etc/runlevels/$level/$svc"
		echo " * service $svc removed from runlevel $level"
	fi
	EOF
	cat >"$T/sbin/rc-service" <<-'EOF'
	#!/bin/sh
	# ramroot test system: there are no service scripts; rc-service does nothing.
	exit 0
	EOF
	chmod 0755 "$T/sbin/openrc" "$T/sbin/rc-update" "$T/sbin/rc-service"
}

write_etc() {
	mkdir -p "$T/etc/init.d" "$T/etc/local.d" "$T/proc" "$T/sys" "$T/dev" "$T/run" "$T/tmp" \
		"$T/media/usb" "$T/mnt" "$T/root" "$T/var/log" "$T/var/tmp" "$T/lib/firmware"
	chmod 1777 "$T/tmp" "$T/var/tmp"
	chmod 0700 "$T/root"
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
	echo 'root:x:0:0:root:/root:/bin/sh' >"$T/etc/passwd"
	echo 'root::0:0:99999:7:::' >"$T/etc/shadow"
	chmod 0600 "$T/etc/shadow"
	echo 'root:x:0:root' >"$T/etc/group"
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
