#!/bin/sh
# ramroot-host: the host's half of a deploy. Its one caller is src/deploy/host-protocol.ts,
# which runs it over SSH (the text of this file, comment lines left out) as
#   sh -c SCRIPT ramroot-host VERB [ARGS...]
# Values arrive as arguments; nothing is spliced into the script. POSIX sh, and only commands
# that GNU coreutils and busybox both have: cat cp df head ln mv od rm sed stat sync tr wc,
# sha256sum (or openssl where it works: the same sha256, several times faster where the CPU
# has SHA instructions).
#
# Files, for the target path P:
#   P                the boot image: never deleted, only replaced by a rename within its folder
#   P.prev           the image P held before the last deploy (or rollback)
#   P.ramroot-new    the new image on its way to P (may be partial)
#   P.ramroot-prev   P on its way to P.prev: a hard link to P or, where the filesystem has none
#                    (FAT), a copy (may be partial)
# Temporaries are verified by sha256 before they are renamed.
#
# Verbs:
#   read P                print the state of P (below), then take commands until the end of stdin
#   rollback P            the same, with the first 4 KiB of P and P.prev, `uname -m` and df
#   deploy P SIZE SHA     the same, for a deploy of the image of SIZE bytes and sha256 SHA; a
#                         P.ramroot-new that is not that image is removed, so is P.ramroot-prev
#   speculate P SIZE SHA  as deploy, but the client is writing P.ramroot-new already: left alone
#   receive P             write stdin to P.ramroot-new (the upload where there is no SFTP)
#   build-id              print the BUILD_ID of /etc/ramroot-release
#
# The state, read in the background while commands are taken, one line each, then "@probed":
#   cur SHA SIZE          P ("-": no such file)
#   prev SHA SIZE         P.prev; SHA "=": P itself (a hard link), "?": not hashed (deploy and
#                         speculate hash it only where it may be P's image: no P, or P's size)
#   new SHA SIZE          P.ramroot-new; SHA only when it has the deploy's SIZE
#   headcur HEX, headprev HEX, uname M    rollback: the first 4 KiB of P and P.prev
#   df, then `df -Pk` of P's folder       all but read
# A failure while reading the state ends the script.
#
# Commands, one a line on stdin; answers start with "@":
#   verify         sync and hash P.ramroot-new: "@verified SHA"
#   prev SHA       link P to P.ramroot-prev, or copy it there and check the copy has SHA:
#                  "@prev linked|copied"
#   commit         only after a verify that gave the deploy's SHA: rename P.ramroot-prev to
#                  P.prev, then P.ramroot-new to P, each synced: "@committed", and exit
#   hashprev       "@prevhash SHA" of P.prev
#   swap CUR PREV  copy P.prev and P to the temporaries, check they have PREV and CUR, rename
#                  them to P and P.prev, sync, check P: "@swapped", and exit
#   abort          remove the temporaries and exit
# At the end of stdin the script exits and leaves what is there for the next run. Failures
# print "ramroot: WHY" on stderr and exit non-zero.
set -u
# The image holds the secrets layer: root's alone, whatever the login's umask.
umask 077

die() { printf 'ramroot: %s\n' "$*" >&2; exit 1; }

# sha256 (hex) of a regular file, "-" when there is none.
hash_of() {
	if [ -f "$1" ]; then
		hx=$(openssl dgst -sha256 -r <"$1" 2>/dev/null) || hx=
		hx=${hx%% *}
		case $hx in *[!0-9a-f]*) hx= ;; esac
		[ ${#hx} = 64 ] || { hx=$(sha256sum <"$1") || die "sha256sum $1 failed"; hx=${hx%% *}; }
		printf '%s' "$hx"
	elif [ -e "$1" ]; then
		die "$1 is not a regular file"
	else
		printf -
	fi
}

# Size in bytes of a regular file, "-" when there is none (wc -c reads the file: a fallback).
size_of() {
	if [ -f "$1" ]; then stat -L -c %s -- "$1" 2>/dev/null || wc -c <"$1"; else printf -; fi
}

# Whether two paths name one file (hard links); false when stat cannot tell. One stat for both:
# its two lines "DEV:INODE", the first and the last.
same_file() {
	ids=$(stat -L -c %d:%i -- "$1" "$2" 2>/dev/null) || return 1
	first=${ids%%[!0-9:]*} last=${ids##*[!0-9:]}
	[ -n "$first" ] && [ "$first" != "$ids" ] && [ "$first" = "$last" ]
}

# Flush the named files where sync takes names (GNU, busybox >= 1.27), else everything.
flush() { sync "$@" 2>/dev/null || sync; }
# After a rename: the folder holds the new directory entry; sync it and the file.
flushdir() { sync "$1" "${1%/*}" 2>/dev/null || sync; }

is_sha() { case $1 in *[!0-9a-f]*) return 1 ;; esac; [ ${#1} = 64 ]; }

# A state line: NAME SHA SIZE.
report() {
	rx=$(hash_of "$2") || exit 1
	printf '%s %s %s\n' "$1" "$rx" "$(size_of "$2")"
}

# The first 4 KiB of a file in hex (nothing for a missing file).
head_hex() { [ ! -f "$1" ] || head -c 4096 "$1" | od -An -v -tx1 | tr -d ' \n'; }

# P.ramroot-new: hashed when it has the deploy's size; removed unless it is the deploy's image.
check_upload() {
	ns=$(size_of "$tn")
	nx=-
	if [ "$ns" = "$size" ]; then nx=$(hash_of "$tn") || exit 1; fi
	[ "$nx" = "$sha" ] || rm -f "$tn"
	printf 'new %s %s\n' "$nx" "$ns"
}

# The state of P (see the top). Runs in a subshell of its own; P.prev, P.ramroot-new and P are
# hashed at the same time.
probe() {
	jp='' jn=''
	ps=$(size_of "$p") vs=$(size_of "$v")
	if [ "$vs" != - ] && [ "$ps" = "$vs" ] && same_file "$p" "$v"; then
		printf 'prev = %s\n' "$vs"
	elif [ "$hash_prev" = always ] || [ "$ps" = - ] || [ "$ps" = "$vs" ]; then
		report prev "$v" &
		jp=$!
	else
		printf 'prev ? %s\n' "$vs"
	fi
	case $upload in
	check) check_upload & jn=$! ;;
	keep) echo 'new - -' ;;
	*) printf 'new - %s\n' "$(size_of "$tn")" ;;
	esac
	report cur "$p"
	[ -z "$jp" ] || wait "$jp" || exit 1
	[ -z "$jn" ] || wait "$jn" || exit 1
	[ "$clean" = no ] || rm -f "$tp"
	if [ "$heads" = yes ]; then
		printf 'headcur %s\n' "$(head_hex "$p")"
		printf 'headprev %s\n' "$(head_hex "$v")"
		printf 'uname %s\n' "$(uname -m)"
	fi
	if [ "$df" = yes ]; then
		echo df
		df -Pk "$d" || exit 1
	fi
	echo @probed
}

# verify: flush and hash at the same time (the hash reads the page cache).
verify() {
	chmod 600 "$tn" 2>/dev/null # FAT has no modes (the NAS mounts it fmask=177)
	flush "$tn" &
	fj=$!
	vx=$(hash_of "$tn") || exit 1
	wait "$fj"
	ok=''
	[ "$vx" != "$sha" ] || ok=yes
	echo "@verified $vx"
}

# prev SHA: P.ramroot-prev becomes P, by a link or a verified copy.
keep_prev() {
	rm -f "$tp"
	if ln "$p" "$tp" 2>/dev/null; then
		made=linked
	else
		cp "$p" "$tp" || die "copying $p to $tp failed"
		flush "$tp" &
		fj=$!
		px=$(hash_of "$tp") || exit 1
		wait "$fj"
		[ "$px" = "$1" ] || { rm -f "$tp"; die "the copy $tp of $p has sha256 $px, expected $1"; }
		made=copied
	fi
	echo "@prev $made"
}

# commit: two renames within the folder, each flushed. Between them P still holds the current
# image and P.prev the same image; a rerun leaves P.prev alone and does the last one.
commit() {
	[ "$ok" = yes ] || die "$tn is not verified: not renaming it"
	if [ -n "$made" ]; then
		mv -f "$tp" "$v" || die "renaming $tp to $v failed"
		flushdir "$v"
	fi
	mv -f "$tn" "$p" || die "renaming $tn to $p failed"
	flushdir "$p"
	echo @committed
}

# swap "CUR PREV": P and P.prev change places, through verified copies.
swap() {
	set -- "${1%% *}" "${1#* }"
	if ! is_sha "$1" || ! is_sha "$2"; then die "swap needs two sha256s, got '$1 $2'"; fi
	cp "$v" "$tn" || die "copying $v to $tn failed"
	cp "$p" "$tp" || die "copying $p to $tp failed"
	flush "$tn" "$tp"
	sx=$(hash_of "$tn") || exit 1
	[ "$sx" = "$2" ] || { rm -f "$tn" "$tp"; die "the copy $tn of $v has sha256 $sx, expected $2"; }
	sx=$(hash_of "$tp") || exit 1
	[ "$sx" = "$1" ] || { rm -f "$tn" "$tp"; die "the copy $tp of $p has sha256 $sx, expected $1"; }
	mv -f "$tn" "$p" || die "renaming $tn to $p failed"
	mv -f "$tp" "$v" || die "renaming $tp to $v failed"
	flushdir "$p"
	flushdir "$v"
	sx=$(hash_of "$p") || exit 1
	[ "$sx" = "$2" ] || die "after the rename $p has sha256 $sx, expected $2"
	echo @swapped
}

verb=${1-}
[ $# = 0 ] || shift
if [ "$verb" = build-id ]; then
	sed -n 's/^BUILD_ID="\{0,1\}\([0-9a-f]*\)"\{0,1\}$/\1/p' /etc/ramroot-release 2>/dev/null
	exit 0
fi

# The UEFI verbs of a trial boot (src/deploy/trial.ts). Variables are efivarfs files: four
# attribute bytes, then the payload.
efivars=/sys/firmware/efi/efivars
hex_of() { od -An -v -tx1 "$1" | tr -d ' \n'; }
case $verb in
status)
	# This boot and how it went: the build, the kernel's boot id (a new one after a reboot), the
	# entry the firmware booted, and ramroot's health report once the boot has ended.
	printf 'build %s\n' "$(sed -n 's/^BUILD_ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/ramroot-release 2>/dev/null)"
	printf 'boot %s\n' "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
	bc=$efivars/BootCurrent-8be4df61-93ca-11d2-aa0d-00e098032b8c
	[ ! -f "$bc" ] || printf 'bootcurrent %s\n' "$(hex_of "$bc")"
	[ ! -f /run/ramroot/trial-confirmed ] || echo confirmed
	[ ! -f /run/ramroot/health ] || sed 's/^/health /' /run/ramroot/health
	exit 0
	;;
efi-state)
	# efi-state DIR: efivarfs and efibootmgr, the boot variables, and the partition and GPT of
	# the filesystem holding DIR (the trial image's folder, made here).
	d=${1-}
	case $d in /?*) ;; *) die "efi-state needs an absolute folder, got '$d'" ;; esac
	if [ -d "$efivars" ] && [ -w "$efivars" ] && [ -f "$efivars/BootCurrent-8be4df61-93ca-11d2-aa0d-00e098032b8c" ]; then echo 'efivarfs yes'; else echo 'efivarfs no'; fi
	if command -v efibootmgr >/dev/null 2>&1; then echo 'efibootmgr yes'; else echo 'efibootmgr no'; fi
	for f in "$efivars"/Boot*-8be4df61-93ca-11d2-aa0d-00e098032b8c; do
		[ -f "$f" ] || continue
		printf 'var %s %s\n' "${f##*/}" "$(hex_of "$f")"
	done
	mkdir -p "$d" || die "cannot make $d"
	# The mount that holds DIR: the longest mount point that is a prefix of it.
	best='' dev=''
	while read -r src mnt _; do
		case $d/ in "$mnt"/* | "$mnt"/) [ ${#mnt} -le ${#best} ] || { best=$mnt dev=$src; } ;; esac
	done </proc/mounts
	[ "$best" != / ] || best=''
	printf 'mount %s %s\n' "${best:-/}" "$dev"
	part=${dev##*/}
	if [ -f "/sys/class/block/$part/partition" ]; then
		disk=$(basename "$(dirname "$(readlink -f "/sys/class/block/$part")")")
		printf 'partition %s %s\n' "$disk" "$(cat "/sys/class/block/$part/partition")"
		printf 'gpt %s\n' "$(dd if="/dev/$disk" bs=512 skip=1 count=33 2>/dev/null | od -An -v -tx1 | tr -d ' \n')"
	fi
	exit 0
	;;
efi-write)
	# efi-write NAME-GUID OCTAL: the variable's file (attributes and payload) in one write, as
	# efivarfs wants it; OCTAL is the bytes as \0ooo escapes (printf %b's). An existing one may be
	# immutable.
	case ${1-} in *[!0-9A-Za-z-]* | '') die "efi-write: a bad variable name '${1-}'" ;; esac
	tmp=/run/ramroot-efivar.$$
	case ${2-} in *[!0-7\\]*) die "efi-write: the data must be \\0ooo escapes" ;; *) printf '%b' "${2-}" >"$tmp" ;; esac
	[ ! -f "$efivars/$1" ] || chattr -i "$efivars/$1" 2>/dev/null || :
	dd if="$tmp" of="$efivars/$1" bs=65536 2>/dev/null || { rm -f "$tmp"; die "writing the UEFI variable $1 failed"; }
	rm -f "$tmp"
	exit 0
	;;
efi-delete)
	case ${1-} in *[!0-9A-Za-z-]* | '') die "efi-delete: a bad variable name '${1-}'" ;; esac
	[ -f "$efivars/$1" ] || exit 0
	chattr -i "$efivars/$1" 2>/dev/null || :
	rm -f "$efivars/$1" || die "removing the UEFI variable $1 failed"
	exit 0
	;;
trial-confirm)
	# The deployer saw the trial build healthy: its trial timer lets it live.
	mkdir -p /run/ramroot && : >/run/ramroot/trial-confirmed && echo @confirmed
	exit 0
	;;
trial-stage)
	# trial-stage TRIAL P SHA: the verified trial image becomes P's upload (one rename on the
	# stick's filesystem), for a deploy of P that reuses it.
	[ "$(hash_of "$1")" = "$3" ] || die "$1 is not the trial image $3"
	mv -f "$1" "$2.ramroot-new" || die "renaming $1 to $2.ramroot-new failed"
	flushdir "$2.ramroot-new"
	echo @staged
	exit 0
	;;
trial-remove)
	# trial-remove TRIAL: the trial image and what a deploy of it left beside it.
	rm -f "$1" "$1.prev" "$1.ramroot-new" "$1.ramroot-prev" || die "removing $1 failed"
	sync
	exit 0
	;;
esac

p=${1-}
case $p in /?*) ;; *) die "the target path must be absolute, got '$p'" ;; esac
v=$p.prev tn=$p.ramroot-new tp=$p.ramroot-prev
d=${p%/*}
d=${d:-/}
size=${2-} sha=${3-}

# What each verb reads: .prev hashed always or only where it may be P's image; P.ramroot-new
# sized, checked (hashed, removed unless it is the deploy's image) or kept as it is;
# P.ramroot-prev removed or not; the heads; df.
case $verb in
read) hash_prev=always upload=size clean=no heads=no df=no ;;
rollback) hash_prev=always upload=size clean=yes heads=yes df=yes ;;
deploy) hash_prev=maybe upload=check clean=yes heads=no df=yes ;;
speculate) hash_prev=maybe upload=keep clean=yes heads=no df=yes ;;
receive)
	cat >"$tn" || die "writing $tn failed"
	exit 0
	;;
*) die "unknown verb '$verb'" ;;
esac
case $verb in deploy | speculate)
	case $size in '' | *[!0-9]*) die "$verb needs a size, got '$size'" ;; esac
	is_sha "$sha" || die "$verb needs a sha256, got '$sha'"
	;;
esac
[ -d "$d" ] || die "folder $d does not exist"

# The main shell waits in read: a failed probe ends it (its message is on stderr).
{ (probe) || kill $$; } &
made='' ok=''
while IFS= read -r cmd; do
	case $cmd in
	verify) verify ;;
	"prev "*) keep_prev "${cmd#prev }" ;;
	commit) commit; exit 0 ;;
	hashprev) echo "@prevhash $(hash_of "$v")" ;;
	"swap "*) swap "${cmd#swap }"; exit 0 ;;
	abort) rm -f "$tn" "$tp"; exit 0 ;;
	*) die "unknown command '$cmd'" ;;
	esac
done
