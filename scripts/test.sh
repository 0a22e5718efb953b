#!/usr/bin/env bash
# The test suite: unit tests of the engine-free core, QEMU boots, and the real Pulumi CLI.
# `npm test` builds first (pretest). Extra arguments select test files, e.g.
# `npm test -- dist/test/uki.test.js`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$here"
command -v pulumi >/dev/null || { echo "test: the Pulumi CLI is not provisioned; run npm run setup" >&2; exit 1; }
if [ $# -gt 0 ]; then files=("$@"); else files=(dist/test/*.test.js); fi
# One file at a time: QEMU under TCG and the Pulumi engine each want both cores.
exec node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
