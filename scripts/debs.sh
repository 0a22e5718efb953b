#!/usr/bin/env bash
# Fetches Debian packages with apt-get download and unpacks them (dpkg-deb -x, no install) into
# the cache, one folder per package and version. Used to assemble test systems, since no Alpine
# package can be fetched on ramroot's build machines.
#
#   scripts/debs.sh PACKAGE[:ARCH]...     prints one unpacked folder per package
#
# Asking apt which version is current takes seconds, so the answer is remembered for a day
# (RAMROOT_DEBS_REFRESH=1 asks again).
#
# A metapackage (linux-image-cloud-amd64) resolves to the package it depends on.
set -euo pipefail
RAMROOT_CACHE=${RAMROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ramroot}
debs="$RAMROOT_CACHE/debs"
mkdir -p "$debs"

ensure_arch() {
	local arch=$1 native
	native=$(dpkg --print-architecture)
	[ "$arch" = "$native" ] && return 0
	if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
		[ "$(id -u)" = 0 ] || { echo "debs.sh: run 'dpkg --add-architecture $arch && apt-get update' as root" >&2; exit 1; }
		dpkg --add-architecture "$arch"
		apt-get update -qq >&2
	fi
	# apt lists for the architecture must exist.
	if ! apt-cache policy "busybox-static:$arch" 2>/dev/null | grep -q Candidate; then
		apt-get update -qq >&2
	fi
}

native=$(dpkg --print-architecture)
mkdir -p "$debs/.resolved"
for spec in "$@"; do
	pkg=${spec%%:*}; arch=$native
	[ "$spec" != "$pkg" ] && arch=${spec#*:}
	memo="$debs/.resolved/${pkg}_$arch"
	if [ -z "${RAMROOT_DEBS_REFRESH:-}" ] && [ -n "$(find "$memo" -mmin -1440 2>/dev/null)" ] && [ -f "$(cat "$memo")/.done" ]; then
		cat "$memo"; continue
	fi
	ensure_arch "$arch"
	ver=$(apt-cache policy "$pkg:$arch" | sed -n 's/^ *Candidate: *//p')
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		apt-get update -qq >&2
		ver=$(apt-cache policy "$pkg:$arch" | sed -n 's/^ *Candidate: *//p')
	fi
	[ -n "$ver" ] && [ "$ver" != "(none)" ] || { echo "debs.sh: no package $pkg for $arch in the apt sources" >&2; exit 1; }
	# A metapackage (no files of its own beyond docs) is replaced by its first linux-image dependency.
	case "$pkg" in linux-image-*-amd64|linux-image-*-arm64|linux-image-amd64|linux-image-arm64)
		if ! echo "$pkg" | grep -q '^linux-image-[0-9]'; then
			dep=$(apt-cache depends "$pkg:$arch" | sed -n 's/^ *Depends: *\(linux-image-[0-9][^: ]*\).*/\1/p' | head -n1)
			[ -n "$dep" ] && { pkg=$dep; ver=$(apt-cache policy "$pkg:$arch" | sed -n 's/^ *Candidate: *//p'); }
		fi;;
	esac
	out="$debs/${pkg}_${ver//:/%}_$arch"
	if [ ! -f "$out/.done" ]; then
		tmp=$(mktemp -d "$debs/.tmp.XXXXXX")
		( cd "$tmp" && apt-get download -q "$pkg:$arch=$ver" >&2 )
		mkdir -p "$tmp/x"
		dpkg-deb -x "$tmp"/*.deb "$tmp/x"
		rm -rf "$out"; mv "$tmp/x" "$out"; rm -rf "$tmp"
		touch "$out/.done"
	fi
	echo "$out" > "$memo.tmp" && mv "$memo.tmp" "$memo"
	echo "$out"
done
