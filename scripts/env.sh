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
export PATH

# A local file backend in the project: no Pulumi Cloud account needed.
if [ -z "${PULUMI_BACKEND_URL:-}" ]; then
	mkdir -p "$here/.ramroot/state"
	export PULUMI_BACKEND_URL="file://$here/.ramroot/state"
fi
export PULUMI_SKIP_UPDATE_CHECK=${PULUMI_SKIP_UPDATE_CHECK:-true}
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=${PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION:-true}
export PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK=${PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK:-true}
# The passphrase secrets provider: without a passphrase of your own, a random one is kept in
# .ramroot/passphrase (gitignored, mode 0600). Back it up: without it the stacks' secrets are lost.
if [ -z "${PULUMI_CONFIG_PASSPHRASE+x}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
	if [ ! -f "$here/.ramroot/passphrase" ]; then
		mkdir -p "$here/.ramroot"
		(umask 077; head -c 32 /dev/urandom | base64 > "$here/.ramroot/passphrase")
	fi
	export PULUMI_CONFIG_PASSPHRASE_FILE="$here/.ramroot/passphrase"
fi
