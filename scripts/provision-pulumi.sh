#!/usr/bin/env bash
# Provisions the Pulumi CLI (with its Node.js language host) into a cache outside the repo,
# keyed by version. An installed CLI is used as it is; otherwise the CLI is built from the Go
# module proxy (get.pulumi.com's installer is not used: it is a script that changes under one
# URL, so there is no sha256 to pin it to, and build machines cannot reach it), with our own
# language host, tools/pulumi-language-nodejs, built in its own module (go.mod/go.sum pinned to
# the SDK of this CLI version).
#
#   PULUMI_VERSION   CLI version to provision              (default 3.274.1)
#   RAMROOT_CACHE    cache folder                          (default ~/.cache/ramroot)
#
# Prints the bin folder on success. Idempotent: a complete cached build is reused; a change to
# the language host's sources (not its tests) rebuilds the host alone.
set -euo pipefail

PULUMI_VERSION=${PULUMI_VERSION:-3.274.1}
RAMROOT_CACHE=${RAMROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ramroot}
dest="$RAMROOT_CACHE/pulumi/v$PULUMI_VERSION/bin"

log() { echo "provision-pulumi: $*" >&2; }

here=$(cd "$(dirname "$0")/.." && pwd)
langdir="$here/tools/pulumi-language-nodejs"
langsum=$(cd "$langdir" && find . -maxdepth 1 -type f \( -name '*.go' ! -name '*_test.go' -o -name go.mod -o -name go.sum \) -print0 |
	LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)

# .official: a cache made by the installer in earlier releases, kept as it is.
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

if ! command -v go >/dev/null 2>&1; then
	# provision-go.sh fetches the toolchain the host's go.mod names, with Debian's golang-go.
	gobin=$(bash "$here/scripts/provision-go.sh" "$langdir") || {
		log "neither Pulumi CLI v$PULUMI_VERSION nor Go is installed; install one of them (https://www.pulumi.com/docs/install/ or Go >= 1.24)"
		exit 1
	}
	PATH="$gobin:$PATH"
fi

export CGO_ENABLED=0 GOPATH="${GOPATH:-$RAMROOT_CACHE/gopath}" GOCACHE="${GOCACHE:-$RAMROOT_CACHE/gocache}"
tmp="$dest.tmp.$$"
trap 'rm -rf "$tmp" "$dest.old.$$"' EXIT
mkdir -p "$tmp"
ldflags="-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION"
if [ -x "$dest/pulumi" ]; then
	cp -p "$dest/pulumi" "$tmp/pulumi"
else
	log "building Pulumi CLI v$PULUMI_VERSION from Go modules into $dest; the first build takes minutes"
	work="$RAMROOT_CACHE/pulumi/build-$PULUMI_VERSION"
	mkdir -p "$work"
	# A subshell: its folder and GOFLAGS stay in it.
	(
	cd "$work"
	# The language host had a folder here before it had a module of its own.
	rm -rf cmd
	cat > go.mod <<GOMOD
module ramroot.local/pulumi-build

go 1.24
GOMOD
	cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
GO
	export GOFLAGS=-mod=mod
	go get "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION" "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION" >&2
	# Carry over pkg's own non-local replace directives (a clipboard fork among them).
	pkgdir=$(go list -m -f '{{.Dir}}' "github.com/pulumi/pulumi/pkg/v3")
	awk '/^replace[ \t]*\(/{b=1;next} b&&/^\)/{b=0;next} b{print;next} /^replace /{sub(/^replace /,"");print}' "$pkgdir/go.mod" |
		grep -v '=> *\.' | while read -r from _ to ver; do
			[ -n "$from" ] && go mod edit -replace "$from=$to@$ver"
		done
	go mod tidy >&2
	go build -trimpath -tags osusergo,grpcnotrace -ldflags "$ldflags" -o "$tmp/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi >&2
	)
fi
sdk=$(cd "$langdir" && go list -mod=readonly -m -f '{{.Version}}' github.com/pulumi/pulumi/sdk/v3)
[ "$sdk" = "v$PULUMI_VERSION" ] ||
	log "note: the language host is pinned to SDK $sdk (tools/pulumi-language-nodejs/go.mod), the CLI is v$PULUMI_VERSION"
# -mod=readonly: exactly the versions go.sum records, and a go.mod that needs an edit is an error.
# -buildvcs=false: the host is built inside the repository, whose git state is not its version.
(cd "$langdir" && go build -mod=readonly -buildvcs=false -trimpath -ldflags "$ldflags" -o "$tmp/pulumi-language-nodejs" .) >&2
echo "$langsum" > "$tmp/.langhost"
# The dynamic-provider plugin is the small launcher @pulumi/pulumi ships; the engine finds it
# next to the CLI, and it resolves @pulumi/pulumi from the project it runs in.
if [ -f "$here/node_modules/@pulumi/pulumi/pulumi-resource-pulumi-nodejs" ]; then
	install -m 0755 "$here/node_modules/@pulumi/pulumi/pulumi-resource-pulumi-nodejs" "$tmp/"
fi
"$tmp/pulumi" version >&2
# Two renames, so that a concurrent user of the CLI (a test run) finds it missing only between
# them, not for the time a removal takes.
if [ -e "$dest" ]; then mv "$dest" "$dest.old.$$"; fi
mv "$tmp" "$dest"
echo "$dest"
