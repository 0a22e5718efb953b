#!/usr/bin/env bash
# Runs the provisioned Pulumi CLI with ramroot's defaults (scripts/env.sh), selecting or
# creating the stack given with --stack, so that `npm run up` works on a fresh clone.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$here"
command -v pulumi >/dev/null || { echo "pulumi: not provisioned; run npm run setup" >&2; exit 1; }
# --build (npm run preview / up): compile first, unless nothing tsc reads is newer than its last
# build (tsc -b decides the same from the same stamps, but only after Node and the compiler
# have loaded: 0.2-0.5 s on every command).
if [ "${1:-}" = --build ]; then
	shift
	if [ ! -f dist/.tsbuildinfo ] || [ -n "$(find index.ts tsconfig.json package.json components src test bench -newer dist/.tsbuildinfo -print -quit 2>/dev/null)" ]; then
		node node_modules/typescript/bin/tsc -b
	fi
fi
stack=""
args=("$@")
words=()
for ((i = 0; i < ${#args[@]}; i++)); do
	case "${args[i]}" in
	--stack|-s) stack=${args[i+1]:-}; i=$((i + 1)) ;;
	--stack=*) stack=${args[i]#--stack=} ;;
	-*) ;;
	*) words+=("${args[i]}") ;;
	esac
done
# The salt of a stack's secrets layer (src/image/secrets.ts): random, a stack secret, made with the stack.
salt() { pulumi config set --secret ramroot:secretsSalt "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" --stack "$1" >&2; }
if [ "${words[0]:-}" = stack ] && [ "${words[1]:-}" = init ]; then
	name=${words[2]:-$stack}
	[ -n "$name" ] || { echo "ramroot: name the stack: npm run pulumi -- stack init NAME" >&2; exit 1; }
	pulumi "$@"
	salt "$name"
	exit 0
fi
# A pulumi killed mid-update (kill -9, a second Ctrl-C) leaves its lock, and the stack refuses
# every later command. A lock of this machine whose pulumi no longer runs is cleared, saying so;
# any other is the engine's to report.
if [ -n "$stack" ] && [ "${PULUMI_BACKEND_URL#file://}" != "$PULUMI_BACKEND_URL" ]; then
	for lock in "${PULUMI_BACKEND_URL#file://}"/.pulumi/locks/*/*/"$stack"/*.json; do
		[ -f "$lock" ] || continue
		pid=$(sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' "$lock")
		host=$(sed -n 's/.*"hostname": *"\([^"]*\)".*/\1/p' "$lock")
		[ -n "$pid" ] && [ "$host" = "$(uname -n)" ] || continue
		[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = pulumi ] && continue
		echo "ramroot: stack $stack was locked by pulumi (pid $pid), which is no longer running: lock removed" >&2
		rm -f "$lock" "$lock.attrs"
	done
fi
# Whether the stack exists: on a file backend, its checkpoint (project-scoped or the older
# layout) says so without starting the CLI once more (0.15-0.3 s); anywhere else, ask.
stack_exists() {
	local dir=${PULUMI_BACKEND_URL#file://} project f
	if [ "$dir" != "$PULUMI_BACKEND_URL" ]; then
		project=$(sed -n 's/^name: *\([^ #]*\).*/\1/p' Pulumi.yaml | head -n1)
		for f in "$dir/.pulumi/stacks/$project/$1.json" "$dir/.pulumi/stacks/$project/$1.json.gz" "$dir/.pulumi/stacks/$1.json" "$dir/.pulumi/stacks/$1.json.gz"; do
			[ -f "$f" ] && return 0
		done
	fi
	pulumi stack ls --json 2>/dev/null | grep -q "\"name\": *\"$1\""
}
if [ -n "$stack" ] && [ "${words[0]:-}" != stack ] && ! stack_exists "$stack"; then
	pulumi stack init "$stack" --secrets-provider passphrase >&2
	salt "$stack"
fi
exec pulumi "$@"
