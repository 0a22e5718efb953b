#!/usr/bin/env bash
# The test suite, in two tiers. `npm test` runs both, the unit tier first (a broken core shows
# in seconds, before any boot), and fails when either does; `npm run test:unit` runs the unit
# tier alone. Both build first.
#   unit         test/unit/, and the pure files of test/ listed below: the engine-free core on
#                made-up input. Node alone: no network, no root, no QEMU, no Debian packages, no
#                Pulumi CLI; seconds.
#   integration  the rest of test/: GNU cpio, zstd, mtools, QEMU boots, a real sshd, Go, the
#                lint of the scripts, and the real Pulumi CLI on throw-away stacks; one file at
#                a time.
# Usage: test.sh [--unit | --integration] [FILE...]. Files select test files instead of a tier
# (run as the integration tier is), e.g. `npm test -- dist/test/uki.test.js`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

# Pure test files that are still at the top of test/ (new unit tests go into test/unit/).
unit_top=(badinput delta treehash)

tier=all
case "${1:-}" in
--unit) tier=unit; shift ;;
--integration) tier=integration; shift ;;
esac

# Compiled tests whose source exists: tsc leaves the output of a moved or deleted test in dist/.
compiled() {
	local f ts
	for f in "$@"; do
		ts=${f#dist/}
		if [ -f "${ts%.js}.ts" ]; then echo "$f"; fi
	done
}
unit=(dist/test/unit/*.test.js)
for n in "${unit_top[@]}"; do
	# A renamed file would otherwise leave the unit tier unseen.
	[ -f "test/$n.test.ts" ] || { echo "test: scripts/test.sh lists test/$n.test.ts in the unit tier, and there is no such file" >&2; exit 1; }
	unit+=("dist/test/$n.test.js")
done
mapfile -t unit < <(compiled "${unit[@]}")
integration=()
for f in dist/test/*.test.js; do
	case " ${unit_top[*]} " in *" $(basename "$f" .test.js) "*) ;; *) integration+=("$f") ;; esac
done
mapfile -t integration < <(compiled "${integration[@]}")

run_unit() {
	# node --test without files would look for tests everywhere, node_modules included.
	[ ${#unit[@]} -gt 0 ] || { echo "test: no unit tests in dist/test/unit/: npm run build first" >&2; exit 1; }
	# Node 22 from node_modules; nothing else of env.sh (no Pulumi settings, no passphrase).
	if [ -x node_modules/.bin/node ]; then PATH="$here/node_modules/.bin:$PATH"; fi
	node --test --test-reporter=spec "${unit[@]}"
}
run_integration() {
	# shellcheck source=scripts/env.sh
	. scripts/env.sh || exit 1
	command -v pulumi >/dev/null || { echo "test: the Pulumi CLI is not provisioned; run npm run setup" >&2; exit 1; }
	# One file at a time: QEMU under TCG and the Pulumi engine each want both cores.
	node --test --test-concurrency=1 --test-reporter=spec "$@"
}

if [ $# -gt 0 ]; then run_integration "$@"; exit; fi
case $tier in
unit) run_unit ;;
integration) run_integration "${integration[@]}" ;;
all)
	status=0
	run_unit || status=$?
	run_integration "${integration[@]}" || status=$?
	exit "$status"
	;;
esac
