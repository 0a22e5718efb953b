#!/usr/bin/env bash
# Runs the provisioned Pulumi CLI with ramroot's defaults (scripts/env.sh), selecting or
# creating the stack given with --stack, so that `npm run up` works on a fresh clone.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$here"
command -v pulumi >/dev/null || { echo "pulumi: not provisioned; run npm run setup" >&2; exit 1; }
stack=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
	case "${args[i]}" in --stack|-s) stack=${args[i+1]:-};; --stack=*) stack=${args[i]#--stack=};; esac
done
if [ -n "$stack" ] && [ "${1:-}" != "stack" ] && ! pulumi stack ls --json 2>/dev/null | grep -q "\"name\": *\"$stack\""; then
	pulumi stack init "$stack" --secrets-provider passphrase >&2
	# The salt of the stack's secrets layer (src/secrets.ts), random, a stack secret.
	pulumi config set --secret ramroot:secretsSalt "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" --stack "$stack" >&2
fi
exec pulumi "$@"
