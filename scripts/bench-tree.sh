#!/usr/bin/env bash
# Builds (or reuses) the benchmark's base tree: the aarch64 test system (bootable: busybox,
# init, the skeleton's boot marker works) with a whole Debian arm64 generic kernel's modules
# and a handful of userland packages over it. About 450 MB in 6-7k files, the size of a real
# NAS image.
#
#   scripts/bench-tree.sh [OUT]     prints the finished folder
#
# OUT defaults to $RAMROOT_CACHE/bench-tree/<hash of this script, the test system and the
# package versions>. A complete OUT (it holds etc/ramroot-bench-tree) is reused as it is. The
# tree is built beside OUT and renamed into place, so an OUT that exists is complete.
#
# Package files never replace the test system's (cp -n): busybox's applets stay, so the tree
# still boots under the qemu stack.
#
# Environment: RAMROOT_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/ramroot).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RAMROOT_CACHE=${RAMROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ramroot}
export RAMROOT_CACHE

PACKAGES="linux-image-arm64:arm64 libc6:arm64 coreutils:arm64 perl-base:arm64 libpython3.11-stdlib:arm64
  libpython3.11-minimal:arm64 python3.11-minimal:arm64 systemd:arm64 libssl3:arm64 openssl:arm64"

die() { echo "bench-tree.sh: $*" >&2; exit 1; }

main() {
	[ $# -le 1 ] || die "usage: bench-tree.sh [OUT]"
	local testsys dirs out h T d kver
	testsys=$(bash "$here/testsys.sh" aarch64 | tail -n1)
	# shellcheck disable=SC2086
	dirs=$(bash "$here/debs.sh" $PACKAGES)
	h=$( { cat "$0"; basename "$testsys"; for d in $dirs; do basename "$d"; done; } | sha256sum | cut -c1-16)
	out=${1:-$RAMROOT_CACHE/bench-tree/aarch64-$h}
	if [ -f "$out/etc/ramroot-bench-tree" ]; then echo "$out"; exit 0; fi
	mkdir -p "$(dirname "$out")"
	T=$(mktemp -d "$out.tmp.XXXXXX")
	trap 'rm -rf "$T"' EXIT
	cp -a "$testsys/." "$T/"
	for d in $dirs; do
		cp -an "$d/." "$T/"
		rm -f "$T/.done"
	done
	chmod 0755 "$T"
	kver=$(sed -n 's/^KERNEL=//p' "$T/etc/ramroot-testsys")
	depmod -b "$T" "$kver"
	{
		echo "TESTSYS=$(basename "$testsys")"
		for d in $dirs; do echo "PACKAGE=$(basename "$d")"; done
	} >"$T/etc/ramroot-bench-tree"
	if ! mv -T "$T" "$out" 2>/dev/null; then
		[ -f "$out/etc/ramroot-bench-tree" ] || die "cannot move $T to $out"
		rm -rf "$T"
	fi
	trap - EXIT
	echo "$out"
}

main "$@"
