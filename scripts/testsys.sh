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
#   etc/inittab, etc/init.d/rcS, etc/local.d/, etc/fstab (UUID=B61B-19E7 /media/usb vfat ...)
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

write_etc() {
	mkdir -p "$T/etc/init.d" "$T/etc/local.d" "$T/proc" "$T/sys" "$T/dev" "$T/run" "$T/tmp" \
		"$T/media/usb" "$T/mnt" "$T/root" "$T/var/log" "$T/var/tmp" "$T/lib/firmware"
	chmod 1777 "$T/tmp" "$T/var/tmp"
	chmod 0700 "$T/root"
	cat >"$T/etc/inittab" <<-'EOF'
	# busybox init
	::sysinit:/etc/init.d/rcS
	::respawn:-/bin/sh
	::ctrlaltdel:/sbin/reboot
	::shutdown:/bin/sync
	::shutdown:/bin/umount -a -r
	EOF
	cat >"$T/etc/fstab" <<-'EOF'
	UUID=B61B-19E7 /media/usb vfat noatime,rw,fmask=177 0 0
	EOF
	cat >"$T/etc/init.d/rcS" <<-'EOF'
	#!/bin/sh
	# ramroot test system: what Alpine's sysinit/boot runlevels and the local service do, in brief.
	export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev 2>/dev/null
	mkdir -p /dev/pts /dev/shm
	mount -t devpts devpts /dev/pts
	mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
	hostname -F /etc/hostname
	for m in virtio_pci virtio_blk vfat nls_cp437 nls_ascii usb-storage sd_mod xhci-pci; do
		modprobe -q "$m" 2>/dev/null
	done
	# The persistence disk appears asynchronously: wait up to 5 s for its UUID.
	i=0
	while [ $i -lt 50 ] && ! findfs UUID=B61B-19E7 >/dev/null 2>&1; do sleep 0.1; i=$((i + 1)); done
	mount -a 2>/dev/null
	if ! grep -q ' /media/usb ' /proc/mounts && dev=$(findfs UUID=B61B-19E7 2>/dev/null); then
		mount -t vfat -o noatime,rw,fmask=177 "$dev" /media/usb
	fi
	# Alpine's local service: every executable /etc/local.d/*.start, in order.
	for f in /etc/local.d/*.start; do
		[ -x "$f" ] && "$f"
	done
	exit 0
	EOF
	chmod 0755 "$T/etc/init.d/rcS"
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
