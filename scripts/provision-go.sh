#!/usr/bin/env bash
# Makes sure this machine has a Go that can build the system's Go programs (system/go.mod; README:
# Go programs), idempotently, and prints the folder of its go command. ramroot builds with
# GOTOOLCHAIN=auto, so that go.mod selects the toolchain: that needs Go 1.21 or later.
#   1. a go on PATH that is 1.21 or later is used as it is;
#   2. else the one provisioned before ($RAMROOT_CACHE/go-bin names its folder);
#   3. else the toolchain that system/go.mod names (its toolchain line; else its go line when that
#      names a release; else go1.26.8) is fetched from the Go module proxy as the module
#      golang.org/toolchain@v0.0.1-<toolchain>.<os>-<arch>, which the go command checks against
#      the Go checksum database, as GOTOOLCHAIN=auto does, into $RAMROOT_CACHE/gopath. The go
#      command that fetches it is any Go on the machine, else Debian's golang-go (Go 1.19 on
#      Debian 12: too old to build with GOTOOLCHAIN, old enough to download a module), which this
#      installs with apt when run as root.
# Usage: provision-go.sh [SYSTEM_DIR]   (default: system)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export RAMROOT_CACHE=${RAMROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ramroot}
system=${1:-$here/system}
log() { echo "provision-go: $*" >&2; }

# The version a go command reports ("go1.26.8"), without switching toolchains.
version() { GOTOOLCHAIN=local GOFLAGS='' "$1" env GOVERSION 2>/dev/null || true; }
# Whether a version is 1.21 or later.
recent() { [[ $1 =~ ^go([0-9]+)\.([0-9]+) ]] && { [ "${BASH_REMATCH[1]}" -gt 1 ] || [ "${BASH_REMATCH[2]}" -ge 21 ]; }; }

if go=$(command -v go) && recent "$(version "$go")"; then
	dirname "$go"
	exit 0
fi
pointer=$RAMROOT_CACHE/go-bin
if [ -f "$pointer" ] && [ -x "$(cat "$pointer")/go" ] && recent "$(version "$(cat "$pointer")/go")"; then
	cat "$pointer"
	exit 0
fi

# The toolchain go.mod names.
want=go1.26.8
if [ -f "$system/go.mod" ]; then
	named=$(sed -n 's/^toolchain[[:space:]]\{1,\}\(go[0-9][0-9.a-z]*\)[[:space:]]*$/\1/p' "$system/go.mod" | head -n 1)
	[ -n "$named" ] || named=$(sed -n 's/^go[[:space:]]\{1,\}\([0-9]\{1,\}\.[0-9]\{1,\}\.[0-9]\{1,\}\)[[:space:]]*$/go\1/p' "$system/go.mod" | head -n 1)
	[ -z "$named" ] || want=$named
fi
case "$(uname -m)" in
x86_64) goarch=amd64 ;;
aarch64 | arm64) goarch=arm64 ;;
*) log "no Go toolchain for this machine ($(uname -m)): install Go 1.21 or later from https://go.dev/dl/"; exit 1 ;;
esac
module=golang.org/toolchain@v0.0.1-$want.linux-$goarch

# A go command to fetch it with: any, else Debian's.
bootstrap=""
for g in "$(command -v go || true)" /usr/lib/go/bin/go /usr/bin/go; do
	if [ -n "$g" ] && [ -x "$g" ] && [ -n "$(version "$g")" ]; then bootstrap=$g; break; fi
done
if [ -z "$bootstrap" ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		log "installing Debian's golang-go, to fetch $want with it"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go ca-certificates >/dev/null
		bootstrap=/usr/bin/go
	else
		log "no Go here: install Debian's golang-go as root (apt-get install golang-go) and run npm run setup again, or install Go 1.21 or later from https://go.dev/dl/"
		exit 1
	fi
fi

export GOPATH=$RAMROOT_CACHE/gopath
log "fetching $want from the Go module proxy ($module) with $bootstrap ($(version "$bootstrap"))"
# Outside any module; the proxy, checksum database and GOPRIVATE settings are the user's.
dir=$(cd / && GOFLAGS=-mod=mod GOTOOLCHAIN=local "$bootstrap" mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$dir" ] || [ ! -f "$dir/bin/go" ]; then
	log "the download of $module did not give a Go toolchain"
	exit 1
fi
# A module's files are unpacked read-only and without execute bits: the go command sets them on
# the commands, as its own toolchain switch does.
chmod a+x "$dir/bin/"* "$dir/pkg/tool/"*/*
recent "$(version "$dir/bin/go")" || { log "$dir/bin/go does not run"; exit 1; }
mkdir -p "$RAMROOT_CACHE"
echo "$dir/bin" >"$pointer.tmp" && mv "$pointer.tmp" "$pointer"
log "$want in $dir/bin (recorded in $pointer)"
echo "$dir/bin"
