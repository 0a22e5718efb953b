# shellcheck shell=bash
# Sourced by ramroot's scripts: puts Node >= 22 and the provisioned Pulumi CLI first on PATH
# and sets the defaults of a local, offline-friendly Pulumi setup. Every default can be
# overridden from the environment.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export RAMROOT_CACHE=${RAMROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ramroot}
export PULUMI_VERSION=${PULUMI_VERSION:-3.274.1}

# Node 22 from the npm registry's `node` package when the machine's node is older.
if [ -x "$here/node_modules/.bin/node" ]; then PATH="$here/node_modules/.bin:$PATH"; fi
pulumi_bin=$(cat "$RAMROOT_CACHE/pulumi-bin-$PULUMI_VERSION" 2>/dev/null || true)
if [ -n "$pulumi_bin" ] && [ -x "$pulumi_bin/pulumi" ]; then PATH="$pulumi_bin:$PATH"; fi
# The dynamic-provider plugin's launcher without its extra Node start (scripts/plugins/).
PATH="$here/scripts/plugins:$PATH"
export PATH
# Node's on-disk cache of compiled code (Node >= 22.1; keyed by each file's content): the program
# and the provider plugin each load all of @pulumi/pulumi on every pass of every preview and up,
# 0.55-0.95 s of it compiling, 40% less from the cache (measured loading the SDK, load 5).
export NODE_COMPILE_CACHE=${NODE_COMPILE_CACHE:-$RAMROOT_CACHE/node-compile-cache}

# A local file backend in the project: no Pulumi Cloud account needed.
if [ -z "${PULUMI_BACKEND_URL:-}" ]; then
	mkdir -p "$here/.ramroot/state"
	export PULUMI_BACKEND_URL="file://$here/.ramroot/state"
fi
export PULUMI_SKIP_UPDATE_CHECK=${PULUMI_SKIP_UPDATE_CHECK:-true}
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=${PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION:-true}
export PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK=${PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK:-true}
# The passphrase secrets provider: without a passphrase of your own, a random one is kept in
# ~/.config/ramroot/passphrase (mode 0600; RAMROOT_CONFIG moves it), away from .ramroot/, where
# removing the store or the state would take it. Back it up: without it the stacks' secrets are
# lost. One is made only while no stack is encrypted yet: a stack file with an encryptionsalt
# and no passphrase here means the passphrase is lost, and that is said, not papered over.
if [ -z "${PULUMI_CONFIG_PASSPHRASE+x}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
	ramroot_config=${RAMROOT_CONFIG:-${XDG_CONFIG_HOME:-$HOME/.config}/ramroot}
	passphrase=$ramroot_config/passphrase
	old=$here/.ramroot/passphrase
	if [ -f "$old" ]; then
		# Earlier releases kept it beside the store: move it out, unless another project's is there.
		if [ ! -f "$passphrase" ]; then
			mkdir -p "$ramroot_config" && chmod 0700 "$ramroot_config" && mv "$old" "$passphrase"
		elif cmp -s "$old" "$passphrase"; then
			rm -f "$old"
		else
			passphrase=$old
		fi
	fi
	if [ ! -f "$passphrase" ]; then
		encrypted=$(grep -l '^encryptionsalt:' "$here"/stacks/Pulumi.*.yaml 2>/dev/null | sed 's|.*/Pulumi\.\(.*\)\.yaml$|\1|' | tr '\n' ' ' || true)
		if [ -n "$encrypted" ]; then
			cat >&2 <<-EOF
			ramroot: the passphrase of the stacks ${encrypted% } is lost: $passphrase does not exist.
			  Restore it from your backup (or set PULUMI_CONFIG_PASSPHRASE / PULUMI_CONFIG_PASSPHRASE_FILE
			  to the team's passphrase). To start over instead, losing those stacks' secrets: remove the
			  encryptionsalt: and secure: lines from stacks/Pulumi.<stack>.yaml (README: Recovering).
			EOF
			return 1 2>/dev/null || exit 1
		fi
		mkdir -p "$ramroot_config" && chmod 0700 "$ramroot_config"
		(umask 077; head -c 32 /dev/urandom | base64 > "$passphrase.tmp" && mv "$passphrase.tmp" "$passphrase")
	fi
	export PULUMI_CONFIG_PASSPHRASE_FILE="$passphrase"
fi
