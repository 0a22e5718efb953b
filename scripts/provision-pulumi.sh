#!/usr/bin/env bash
# Provisions the Pulumi CLI (with its Node.js language host) into a cache outside the repo,
# keyed by version. On a machine that can reach get.pulumi.com a user would simply install the
# CLI; here it cannot, so the CLI is built from the Go module proxy (shared/notes/pulumi.md).
#
#   PULUMI_VERSION   CLI version to provision              (default 3.274.1)
#   RAMROOT_CACHE    cache folder                          (default ~/.cache/ramroot)
#
# Prints the bin folder on success. Idempotent: a complete cached build is reused.
set -euo pipefail

PULUMI_VERSION=${PULUMI_VERSION:-3.274.1}
RAMROOT_CACHE=${RAMROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ramroot}
dest="$RAMROOT_CACHE/pulumi/v$PULUMI_VERSION/bin"

log() { echo "provision-pulumi: $*" >&2; }

here=$(cd "$(dirname "$0")/.." && pwd)
langsrc="$here/tools/pulumi-language-nodejs/main.go"
langsum=$(sha256sum "$langsrc" | cut -c1-16)

if [ -x "$dest/pulumi" ] && [ -x "$dest/pulumi-language-nodejs" ] &&
	{ [ -f "$dest/.official" ] || [ "$(cat "$dest/.langhost" 2>/dev/null)" = "$langsum" ]; }; then
	echo "$dest"; exit 0
fi

# A user's machine: an installed CLI (with its bundled language host) is used as it is; the
# SDK feature-detects the engine, so any recent 3.x works.
if [ -z "${RAMROOT_BUILD_PULUMI:-}" ] && command -v pulumi >/dev/null 2>&1; then
	bindir=$(dirname "$(readlink -f "$(command -v pulumi)")")
	if [ -x "$bindir/pulumi-language-nodejs" ]; then echo "$bindir"; exit 0; fi
fi
# Next, the official installer, into the cache (fails fast where get.pulumi.com is unreachable).
if [ -z "${RAMROOT_BUILD_PULUMI:-}" ] && command -v curl >/dev/null 2>&1 &&
	curl -fsSL --connect-timeout 10 --max-time 60 -o "/tmp/pulumi-install.$$.sh" https://get.pulumi.com 2>/dev/null; then
	if sh "/tmp/pulumi-install.$$.sh" --version "$PULUMI_VERSION" --install-root "$RAMROOT_CACHE/pulumi/v$PULUMI_VERSION" --no-edit-path >&2; then
		rm -f "/tmp/pulumi-install.$$.sh"; touch "$dest/.official"; echo "$dest"; exit 0
	fi
	rm -f "/tmp/pulumi-install.$$.sh"
fi

command -v go >/dev/null 2>&1 || {
	log "neither Pulumi CLI v$PULUMI_VERSION nor Go is installed; install one of them (https://www.pulumi.com/docs/install/ or Go >= 1.24)"
	exit 1
}

work="$RAMROOT_CACHE/pulumi/build-$PULUMI_VERSION"
mkdir -p "$work"
cd "$work"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOPATH="${GOPATH:-$RAMROOT_CACHE/gopath}" GOCACHE="${GOCACHE:-$RAMROOT_CACHE/gocache}"

log "building Pulumi CLI v$PULUMI_VERSION from Go modules into $dest; the first build takes minutes"
cat > go.mod <<GOMOD
module ramroot.local/pulumi-build

go 1.24
GOMOD
mkdir -p cmd/pulumi-language-nodejs
cp "$langsrc" cmd/pulumi-language-nodejs/main.go
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
GO
go get "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION" "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION" >&2
# Carry over pkg's own non-local replace directives (a clipboard fork among them).
pkgdir=$(go list -m -f '{{.Dir}}' "github.com/pulumi/pulumi/pkg/v3")
awk '/^replace[ \t]*\(/{b=1;next} b&&/^\)/{b=0;next} b{print;next} /^replace /{sub(/^replace /,"");print}' "$pkgdir/go.mod" |
	grep -v '=> *\.' | while read -r from _ to ver; do
		[ -n "$from" ] && go mod edit -replace "$from=$to@$ver"
	done
go mod tidy >&2
tmp="$dest.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
ldflags="-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION"
if [ -x "$dest/pulumi" ]; then
	cp -p "$dest/pulumi" "$tmp/pulumi"
else
	go build -trimpath -tags osusergo,grpcnotrace -ldflags "$ldflags" -o "$tmp/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi >&2
fi
go build -trimpath -ldflags "$ldflags" -o "$tmp/pulumi-language-nodejs" ./cmd/pulumi-language-nodejs >&2
echo "$langsum" > "$tmp/.langhost"
# The dynamic-provider plugin is the small launcher @pulumi/pulumi ships; the engine finds it
# next to the CLI, and it resolves @pulumi/pulumi from the project it runs in.
if [ -f "$here/node_modules/@pulumi/pulumi/pulumi-resource-pulumi-nodejs" ]; then
	install -m 0755 "$here/node_modules/@pulumi/pulumi/pulumi-resource-pulumi-nodejs" "$tmp/"
fi
"$tmp/pulumi" version >&2
rm -rf "$dest"; mv "$tmp" "$dest"
echo "$dest"
