#!/usr/bin/env bash
# Sets up a machine for ramroot, idempotently: the Debian packages the build and the tests use,
# the npm dependencies (with Node 22 from the npm registry), and the Pulumi CLI (installed, or
# built from Go modules where it cannot be downloaded). A second run does nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD

apt_packages=(
	qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64   # boot checks (TCG)
	mtools dosfstools fdisk                                 # disk images without loop mounts
	cpio kmod busybox-static zstd pigz                      # test systems, GNU cpio for tests
	binutils binutils-aarch64-linux-gnu                     # objdump reads UKIs in tests
	systemd-boot-efi                                        # the x86_64 systemd-stub
	sbsigntool osslsigncode efitools openssl                # Secure Boot: sbsign signs, sbverify checks; tests compare osslsigncode and cert-to-efi-sig-list
	openssh-server openssh-client rsync                     # deploy tests against a real sshd
	shellcheck                                              # lints the deploy's host script in tests
	qemu-user-static binfmt-support                         # setup.sh in a chroot of another arch
	git curl ca-certificates xz-utils time                  # time: npm run bench measures peak memory
)
missing=()
for p in "${apt_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "setup: installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	else
		echo "setup: missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})" >&2
	fi
fi

# Running the aarch64 rootfs's setup.sh on this host needs qemu-user through binfmt_misc. In a
# container the binfmt_misc filesystem may not be mounted; the kernel's registration may be off.
if [ "$(id -u)" = 0 ] && [ "$(uname -m)" != aarch64 ] && command -v update-binfmts >/dev/null; then
	mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
		echo "setup: cannot mount binfmt_misc: aarch64 chroots (setup.sh) will not run here" >&2
	[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 ||
		echo "setup: cannot enable qemu-aarch64 in binfmt_misc: aarch64 chroots (setup.sh) will not run here" >&2
fi

# npm dependencies; the devDependency `node` brings Node 22 into node_modules/.bin.
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
node_modules/.bin/node -e 'if (+process.versions.node.split(".")[0] < 22) { console.error("setup: Node >= 22 is needed"); process.exit(1) }'

# The Pulumi CLI and its Node.js language host.
export RAMROOT_CACHE=${RAMROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ramroot}
export PULUMI_VERSION=${PULUMI_VERSION:-3.274.1}
bin=$(bash scripts/provision-pulumi.sh)
# Go, for the system's own programs (system/go.mod; README: Go programs): a Go 1.21 or later as it
# is, else the toolchain go.mod names, fetched from the Go module proxy (scripts/provision-go.sh).
if [ -f system/go.mod ]; then
	gobin=$(bash scripts/provision-go.sh "$here/system")
	echo "setup: Go for system/go.mod: $gobin/go ($(GOTOOLCHAIN=local "$gobin/go" env GOVERSION))"
fi
# An installed CLI bundles the dynamic-provider launcher; a built one gets it from node_modules.
if [ -w "$bin" ] && [ ! -x "$bin/pulumi-resource-pulumi-nodejs" ]; then
	install -m 0755 node_modules/@pulumi/pulumi/pulumi-resource-pulumi-nodejs "$bin/"
fi
mkdir -p "$RAMROOT_CACHE"
echo "$bin" > "$RAMROOT_CACHE/pulumi-bin-$PULUMI_VERSION"
PATH="$here/node_modules/.bin:$bin:$PATH" pulumi version
npx tsc -b
# The test system the stacks boot (ramroot:base testsys, the default): made here, where apt may
# be asked, so that preview and up find it by a pointer and never run apt (index.ts testsysTree
# reads the pointer by the same key: the arch, testsys.sh, debs.sh). A stack that sets
# ramroot:base to something else does not need it.
for arch in $(sed -n 's/^ *ramroot:arch: *\([a-z0-9_]*\).*/\1/p' stacks/Pulumi.*.yaml 2>/dev/null | sort -u || true) aarch64; do
	case " ${made:-} " in *" $arch "*) continue ;; esac
	made="${made:-} $arch"
	tree=$(bash scripts/testsys.sh "$arch" | tail -n1)
	key=$( { printf '%s\n' "$arch"; cat scripts/testsys.sh scripts/debs.sh; } | sha256sum | cut -c1-16)
	echo "$tree" > "$RAMROOT_CACHE/testsys/$arch.$key.path.tmp-$$" && mv "$RAMROOT_CACHE/testsys/$arch.$key.path.tmp-$$" "$RAMROOT_CACHE/testsys/$arch.$key.path"
	echo "setup: the $arch test system: $tree"
done
echo "setup: done (Pulumi CLI in $bin)"
