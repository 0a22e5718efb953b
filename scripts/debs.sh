#!/usr/bin/env bash
# Fetches Debian packages with apt-get download and unpacks them (dpkg-deb -x, no install) into
# the cache, one folder per package and version. Used to assemble test systems, since no Alpine
# package can be fetched on ramroot's build machines.
#
#   scripts/debs.sh PACKAGE[:ARCH]...     prints one unpacked folder per package, in order
#
# Asking apt which version is current takes seconds, so the answer is remembered for a day
# (RAMROOT_DEBS_REFRESH=1 asks again); the packages that need asking are asked about in one
# apt-cache call, and fetched in one apt-get call.
#
# A metapackage (linux-image-cloud-amd64) resolves to the package it depends on.
set -euo pipefail
RAMROOT_CACHE=${RAMROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ramroot}
debs="$RAMROOT_CACHE/debs"
mkdir -p "$debs/.resolved"
native=$(dpkg --print-architecture)

die() { echo "debs.sh: $*" >&2; exit 1; }

ensure_arch() {
	local arch=$1
	[ "$arch" = "$native" ] && return 0
	if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
		[ "$(id -u)" = 0 ] || die "run 'dpkg --add-architecture $arch && apt-get update' as root"
		dpkg --add-architecture "$arch"
		apt-get update -qq >&2
	fi
	# apt lists for the architecture must exist.
	if ! apt-cache policy "busybox-static:$arch" 2>/dev/null | grep -q Candidate; then
		apt-get update -qq >&2
	fi
}

# Candidate versions of PKG:ARCH..., one "PKG:ARCH VERSION" line each ("(none)" when unknown),
# from a single apt-cache policy call. apt names a native package without its architecture.
candidates() {
	apt-cache policy "$@" 2>/dev/null | awk -v native="$native" '
		/^[^ ].*:$/ { name = substr($0, 1, length($0) - 1); if (name !~ /:/) name = name ":" native; next }
		/^  Candidate:/ && name != "" { print name, $2; name = "" }'
}

declare -A version
resolve() {
	local want=() spec line
	for spec in "$@"; do want+=("$spec"); done
	[ ${#want[@]} -gt 0 ] || return 0
	while read -r spec line; do version[$spec]=$line; done < <(candidates "${want[@]}")
	local missing=()
	for spec in "${want[@]}"; do
		case "${version[$spec]:-(none)}" in "(none)") missing+=("$spec") ;; esac
	done
	if [ ${#missing[@]} -gt 0 ] && [ -z "${updated:-}" ]; then
		updated=1
		apt-get update -qq >&2
		while read -r spec line; do version[$spec]=$line; done < <(candidates "${missing[@]}")
	fi
	for spec in "${want[@]}"; do
		case "${version[$spec]:-(none)}" in "(none)") die "no package ${spec%%:*} for ${spec#*:} in the apt sources" ;; esac
	done
}

# Normalise every argument to PKG:ARCH; find the ones the memo does not answer.
specs=() ask=() arches=""
for arg in "$@"; do
	pkg=${arg%%:*} arch=$native
	[ "$arg" != "$pkg" ] && arch=${arg#*:}
	spec="$pkg:$arch"
	specs+=("$spec")
	memo="$debs/.resolved/${pkg}_$arch"
	if [ -z "${RAMROOT_DEBS_REFRESH:-}" ] && [ -n "$(find "$memo" -mmin -1440 2>/dev/null)" ] && [ -f "$(cat "$memo")/.done" ]; then
		continue
	fi
	ask+=("$spec")
	case " $arches " in *" $arch "*) ;; *) arches="$arches $arch" ;; esac
done

if [ ${#ask[@]} -gt 0 ]; then
	for arch in $arches; do ensure_arch "$arch"; done
	resolve "${ask[@]}"
	# A metapackage (no files of its own beyond docs) is replaced by its first linux-image dependency.
	declare -A real
	deps=()
	for spec in "${ask[@]}"; do
		pkg=${spec%%:*} arch=${spec#*:}
		real[$spec]=$spec
		case "$pkg" in linux-image-*-amd64 | linux-image-*-arm64 | linux-image-amd64 | linux-image-arm64)
			if ! echo "$pkg" | grep -q '^linux-image-[0-9]'; then
				dep=$(apt-cache depends "$spec" | sed -n 's/^ *Depends: *\(linux-image-[0-9][^: ]*\).*/\1/p' | head -n1)
				[ -n "$dep" ] && { real[$spec]="$dep:$arch"; deps+=("$dep:$arch"); }
			fi ;;
		esac
	done
	[ ${#deps[@]} -gt 0 ] && resolve "${deps[@]}"
	# Fetch what is not unpacked yet, in one apt-get call, then unpack each.
	fetch=()
	declare -A out
	for spec in "${ask[@]}"; do
		r=${real[$spec]} pkg=${real[$spec]%%:*} arch=${real[$spec]#*:} ver=${version[${real[$spec]}]}
		out[$spec]="$debs/${pkg}_${ver//:/%}_$arch"
		[ -f "${out[$spec]}/.done" ] || fetch+=("$r=$ver")
	done
	if [ ${#fetch[@]} -gt 0 ]; then
		tmp=$(mktemp -d "$debs/.tmp.XXXXXX")
		trap 'rm -rf "$tmp"' EXIT
		( cd "$tmp" && apt-get download -q "${fetch[@]}" >&2 )
		for spec in "${ask[@]}"; do
			o=${out[$spec]}
			[ -f "$o/.done" ] && continue
			pkg=${real[$spec]%%:*} arch=${real[$spec]#*:} ver=${version[${real[$spec]}]}
			# apt-get download names the file PKG_VERSION_ARCH.deb, the epoch's colon as %3a.
			deb="$tmp/${pkg}_${ver//:/%3a}_$arch.deb"
			[ -f "$deb" ] || deb=$(ls "$tmp/${pkg}_"*"_$arch.deb" 2>/dev/null | head -n1)
			[ -f "$deb" ] || die "apt-get download gave no .deb for $pkg:$arch=$ver"
			rm -rf "$tmp/x"; mkdir -p "$tmp/x"
			dpkg-deb -x "$deb" "$tmp/x"
			rm -rf "$o"; mv "$tmp/x" "$o"
			touch "$o/.done"
		done
		rm -rf "$tmp"
		trap - EXIT
	fi
	for spec in "${ask[@]}"; do
		memo="$debs/.resolved/${spec%%:*}_${spec#*:}"
		echo "${out[$spec]}" >"$memo.tmp" && mv "$memo.tmp" "$memo"
	done
fi

for spec in "${specs[@]}"; do
	cat "$debs/.resolved/${spec%%:*}_${spec#*:}"
done
