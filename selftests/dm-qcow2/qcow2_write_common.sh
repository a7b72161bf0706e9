# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=bash
#
# Helpers shared by the dm-qcow2 write-path selftests (test_write_*.sh).
# Source after test_common.sh and qcow2_common.sh:
#
#	. "$(dirname "$0")/test_common.sh"
#	. "$(dirname "$0")/qcow2_common.sh"
#	. "$(dirname "$0")/qcow2_write_common.sh"
#
# A writable mapping differs from the read-only ones of qcow2_common.sh in
# three ways: the image's loop device is attached read-write, the table is
# loaded without --readonly, and the image file must have room to grow (a
# loop device has the size of its file when attached, and the target only
# allocates inside its image device).  Backing layers stay read-only.
#
# The status line of a writable target has one more field than the read-only
# one documented in qcow2.rst: the number of dirty metadata cache slices,
# optionally followed by the words "corrupt" and/or "no_space".

QCOW2_DIFFWORK_PY="$QCOW2_TEST_DIR/qcow2_diffwork.py"

_diffwork()
{
	python3 "$QCOW2_DIFFWORK_PY" "$@"
}

# _wseed   print the base seed of this run: $QCOW2_SEED or a random one.
# Every test prints it (and uses seed + case number per case), so that a
# failure is reproduced with QCOW2_SEED=<seed>.
_wseed()
{
	if [ -n "${QCOW2_SEED:-}" ]; then
		echo "$QCOW2_SEED"
	else
		echo $(((RANDOM << 15 | RANDOM) % 1000000000))
	fi
}

# _wroom FILE VSIZE [EXTRA_BYTES]   grow FILE (sparse) to at least VSIZE *
# 1.5 + EXTRA (default 16 MiB), rounded to 512, so that the image can grow on
# its loop device.  Never shrinks FILE.
_wroom()
{
	local file=$1 vsize=$2 extra=${3:-$((16 << 20))} want
	want=$((vsize * 3 / 2 + extra))
	want=$((want - want % 512))
	truncate -s ">$want" "$file" && truncate -s %512 "$file"
}

# _wloop_attach FILE [--read-only]   attach FILE (an absolute path, size a
# multiple of 512) to a loop device, with direct I/O where the file system
# allows it, else buffered; prints the device; detached at exit.  (Fewer
# processes than _loop_attach: every exec costs under TCG.)
_wloop_attach()
{
	local file=$1 dev
	shift
	dev=$(losetup --find --show --direct-io=on "$@" "$file" 2>/dev/null) ||
		dev=$(losetup --find --show "$@" "$file") || {
		_qdiag "losetup $file failed"
		return 1
	}
	_cleanup_register "loop ${dev} ${file}"
	echo "$dev"
}

# _wimg_attach FILE   pad FILE to a multiple of 512 and attach it read-write;
# prints the loop device.
_wimg_attach()
{
	truncate -s %512 "$1" || return 1
	_wloop_attach "$1"
}

# _wmap NAME IMAGE [SPEC...]   like _map_image (same SPECs: qcow2:FILE,
# raw:FILE, snapshot:ID, cache_size:BYTES, len:SECTORS, plus lazy_refcounts,
# and ro to load the table read-only), but IMAGE's loop device is read-write
# and the table is loaded read-write unless "ro" is given.  Grow IMAGE with
# _wroom first.  Paths must be absolute.  Sets MAP_DEV, MAP_TABLE,
# MAP_LAYERS and MAP_IMGDEV (the image's loop device).  _wunmap NAME removes
# the device and detaches the loops.
_wmap()
{
	local name=$1 img=$2 spec dev bdev len="" ro=""
	local -a opts=()
	shift 2

	MAP_DEV="" MAP_TABLE="" MAP_LAYERS=1 MAP_IMGDEV=""
	: >"$WORK/.loops.$name"
	if [ "${1:-}" = ro ] || [[ " $* " == *" ro "* ]]; then
		truncate -s %512 "$img" && dev=$(_wloop_attach "$img" --read-only)
	else
		dev=$(_wimg_attach "$img")
	fi
	[ -b "$dev" ] || { _qdiag "cannot attach $img"; return 1; }
	echo "$dev" >>"$WORK/.loops.$name"
	MAP_IMGDEV=$dev
	for spec in "$@"; do
		case "$spec" in
		qcow2:* | raw:*)
			truncate -s %512 "${spec#*:}" || return 1
			bdev=$(_wloop_attach "${spec#*:}" --read-only) && [ -b "$bdev" ] ||
				{ _qdiag "cannot attach ${spec#*:}"; return 1; }
			echo "$bdev" >>"$WORK/.loops.$name"
			opts+=(backing "${spec%%:*}" "$bdev")
			MAP_LAYERS=$((MAP_LAYERS + 1))
			;;
		snapshot:* | cache_size:*)
			opts+=("${spec%%:*}" "${spec#*:}")
			;;
		lazy_refcounts)
			opts+=(lazy_refcounts)
			;;
		len:*)
			len=${spec#len:}
			;;
		ro)
			ro=ro
			;;
		*)
			_qdiag "_wmap: bad spec $spec"
			return 1
			;;
		esac
	done
	[ -n "$len" ] || len=$(($(_vsize "$img") / 512))
	MAP_TABLE=$(_qcow2_table "$dev" "$len" "${opts[@]}")
	_dm_create "$name" "$MAP_TABLE" $ro || {
		_qdiag "dmsetup create $name failed for table: $MAP_TABLE"
		return 1
	}
	MAP_DEV=/dev/mapper/$name
	[ -b "$MAP_DEV" ] || { _qdiag "$MAP_DEV missing"; return 1; }
	return 0
}

# _wunmap NAME   remove the device made by _wmap (if it exists) and detach
# its loop devices now
_wunmap()
{
	local l
	if dmsetup info "$1" >/dev/null 2>&1; then
		_dm_remove "$1" >/dev/null 2>&1 || _qdiag "cannot remove $1"
	fi
	if [ -f "$WORK/.loops.$1" ]; then
		while read -r l; do
			_loop_detach "$l" 2>/dev/null
		done <"$WORK/.loops.$1"
		rm -f "$WORK/.loops.$1"
	fi
	return 0
}

# _wstat NAME COUNTER   one counter of the target's stats message (empty if
# there is no such counter)
_wstat()
{
	dmsetup message "$1" 0 stats | sed -n "s/^$2 \([0-9]*\)$/\1/p"
}

# _fsync DEV   fsync the block device: one flush through the target
_fsync()
{
	python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.close(fd)' "$1"
}

# _wstatus NAME   parse `dmsetup status` of a qcow2 device into
#   WS_MODE WS_VSIZE WS_CS WS_LAYERS WS_USED WS_SLOTS WS_HITS WS_MISSES
#   WS_MREADS WS_OREADS WS_IOERR WS_DIRTY WS_FLAGS (" corrupt no_space" words)
# and WS_LINE (the fields after "qcow2").  Fails if the line does not have
# the grammar: 11 fields, then only the words corrupt and no_space.
_wstatus()
{
	local s v w cache
	local -a f
	s=$(_status_fields "$1") || return 1
	WS_LINE=$s
	read -r -a f <<<"$s"
	if [ "${#f[@]}" -lt 11 ]; then
		_qdiag "status of $1: expected at least 11 fields: '$s'"
		return 1
	fi
	WS_MODE=${f[0]} WS_VSIZE=${f[1]} WS_CS=${f[2]} WS_LAYERS=${f[3]}
	cache=${f[4]}
	WS_USED=${cache%%/*} WS_SLOTS=${cache#*/}
	WS_HITS=${f[5]} WS_MISSES=${f[6]} WS_MREADS=${f[7]} WS_OREADS=${f[8]}
	WS_IOERR=${f[9]} WS_DIRTY=${f[10]}
	WS_FLAGS=""
	for w in "${f[@]:11}"; do
		case "$w" in
		corrupt | no_space) WS_FLAGS="$WS_FLAGS $w" ;;
		*) _qdiag "status of $1: unexpected word '$w' in '$s'"; return 1 ;;
		esac
	done
	case "$WS_MODE" in
	ro | rw | fail) ;;
	*) _qdiag "status of $1: bad mode '$WS_MODE' in '$s'"; return 1 ;;
	esac
	for v in "$WS_VSIZE" "$WS_CS" "$WS_LAYERS" "$WS_USED" "$WS_SLOTS" "$WS_HITS" \
		"$WS_MISSES" "$WS_MREADS" "$WS_OREADS" "$WS_IOERR" "$WS_DIRTY"; do
		case "$v" in
		'' | *[!0-9]*) _qdiag "status of $1: non-numeric field '$v' in '$s'"; return 1 ;;
		esac
	done
	return 0
}

# _wcache_pressured   after _wstatus: the cache was under pressure, full now
# or its slices read more often than it holds them (memory pressure may have
# shrunk it since: cache_shrunk)
_wcache_pressured()
{
	[ "${WS_USED:-0}" -eq "${WS_SLOTS:-1}" ] || [ "${WS_MISSES:-0}" -gt "${WS_SLOTS:-1}" ]
}

# _wstatus_has NAME WORD   the status line ends with WORD (corrupt|no_space)
_wstatus_has()
{
	_wstatus "$1" || return 1
	[[ " $WS_FLAGS " == *" $2 "* ]]
}

# _check_wstatus NAME MODE [IOERR]   status parses, mode is MODE, io_errors
# is IOERR (default 0; "any" to skip), no corrupt/no_space flag, the cache
# is within its bound and the dirty slices within the used ones.
_check_wstatus()
{
	local name=$1 mode=$2 ioerr=${3:-0} rc=0
	_wstatus "$name" || return 1
	[ "$WS_MODE" = "$mode" ] || { _qdiag "status: mode $WS_MODE, expected $mode ($WS_LINE)"; rc=1; }
	if [ "$ioerr" != any ] && [ "$WS_IOERR" != "$ioerr" ]; then
		_qdiag "status: io_errors $WS_IOERR, expected $ioerr ($WS_LINE)"
		rc=1
	fi
	[ -z "$WS_FLAGS" ] || { _qdiag "status: unexpected flags$WS_FLAGS ($WS_LINE)"; rc=1; }
	[ "$WS_USED" -le "$WS_SLOTS" ] || { _qdiag "status: cache over its bound ($WS_LINE)"; rc=1; }
	[ "$WS_DIRTY" -le "$WS_USED" ] || { _qdiag "status: more dirty slices than used ($WS_LINE)"; rc=1; }
	return $rc
}

# _wcheck IMG [ALLOWED_RCS]   qemu-img check IMG; its exit status must be
# one of ALLOWED_RCS (default "0": consistent, no leaks).  -U is passed so
# that it also works on an image that is still mapped.  On a block device
# QEMU reads through the device's page cache, which the target's bios bypass:
# a page cached while the target held the device (a udev probe, an earlier
# qemu-img) would be stale, so the cache is dropped first.
_wcheck()
{
	local img=$1 allowed=${2:-0} out rc
	_drop_cache "$img"
	out=$(qemu-img check -U "$img" 2>&1)
	rc=$?
	if [[ " $allowed " == *" $rc "* ]]; then
		[ $rc -eq 0 ] || _qdiag "qemu-img check $(basename "$img"): exit $rc (allowed)"
		return 0
	fi
	_qdiag "qemu-img check $(basename "$img") exit $rc (wanted ${allowed// / or }):" \
		"$(echo "$out" | grep -v '^$' | head -12)"
	return 1
}

# _wimg_end IMG   print IMG's image end offset as `qemu-img check -U` finds
# it (the page cache of a block device IMG dropped first, as in _wcheck);
# fails if there is none
_wimg_end()
{
	_drop_cache "$1"
	qemu-img check -U --output=json "$1" 2>/dev/null |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["image-end-offset"])'
}

# _wheader_clean IMG   neither the dirty (incompatible bit 0) nor the
# corrupt (bit 1) bit is set; a version 2 header has no feature fields
_wheader_clean()
{
	local -a b
	_drop_cache "$1"
	read -r -a b < <(od -An -tu1 -v -N80 "$1" | tr -s ' \n' '  ')
	[ "${#b[@]}" -eq 80 ] || { _qdiag "cannot read the header of $1"; return 1; }
	[ "${b[7]}" -ge 3 ] || return 0
	[ $((b[79] & 3)) -eq 0 ] && return 0
	_qdiag "$(basename "$1"): incompatible feature bits $((b[79] & 3)) set (1 = dirty, 2 = corrupt)"
	return 1
}

# _wimg_flag IMG dirty|corrupt   the header has that incompatible bit
_wimg_flag()
{
	local -a b
	_drop_cache "$1"
	read -r -a b < <(od -An -tu1 -v -N80 "$1" | tr -s ' \n' '  ')
	[ "${#b[@]}" -eq 80 ] && [ "${b[7]}" -ge 3 ] || return 1
	case "$2" in
	dirty) [ $((b[79] & 1)) -ne 0 ] ;;
	corrupt) [ $((b[79] & 2)) -ne 0 ] ;;
	*) return 1 ;;
	esac
}

# _wbg_wait SECS CMD [ARGS...]   run CMD in the background and wait for it at
# most SECS seconds; its output is printed when it ends.  Returns CMD's
# status, or 124 if it is still running (then the blocked tasks are dumped
# to the kernel log with sysrq-w and CMD is left behind: a process stuck in
# the kernel cannot be killed; its output goes to a file, so that it does
# not keep the test's output pipe open).
_wbg_wait()
{
	local secs=$1 pid i rc out=$WORK/.bg.$RANDOM
	shift
	"$@" >"$out" 2>&1 </dev/null &
	pid=$!
	for ((i = 0; i < secs * 2; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.5
	done
	if kill -0 "$pid" 2>/dev/null; then
		_wdiag_file "$out"
		_qdiag "'$*' still running after $secs s: hung? (blocked tasks: sysrq-w in the kernel log)"
		echo w >/proc/sysrq-trigger 2>/dev/null
		return 124
	fi
	wait "$pid"
	rc=$?
	_wdiag_file "$out"
	rm -f "$out"
	return $rc
}

# _wdiag_file FILE   print FILE, lines not already KTAP diagnostics ("# ...")
# prefixed with "# "
_wdiag_file()
{
	sed 's/^\([^#]\)/# \1/; s/^$/#/' "$1"
}

# _wconvert IMG OUT [convert args]   QEMU's view of IMG as raw OUT (the
# page cache of a block device IMG dropped first, as in _wcheck)
_wconvert()
{
	local img=$1 out=$2
	shift 2
	rm -f "$out"
	_drop_cache "$img"
	qemu-img convert -U "$@" -O raw "$img" "$out" 2>"$WORK/.conv_err" || {
		_qdiag "qemu-img convert $(basename "$img") failed: $(head -3 "$WORK/.conv_err")"
		return 1
	}
}

# _wcompare A B [compare options]   byte comparison (qcow2_diffwork.py
# compare: O_DIRECT on block devices, --mask, --log, --cluster)
_wcompare()
{
	_diffwork compare "$@"
}

# _wsync_udev   let udev finish (after dmsetup operations)
_wsync_udev()
{
	udevadm settle 2>/dev/null
	return 0
}

# _wreload NAME TABLE   suspend, load TABLE (read-write), resume
_wreload()
{
	dmsetup suspend "$1" &&
		dmsetup load "$1" --table "$2" &&
		dmsetup resume "$1" || {
		_qdiag "reload of $1 failed (table: $2)"
		dmsetup resume "$1" 2>/dev/null
		return 1
	}
	_wsync_udev
}

# _event_nr NAME   the event counter of the dm device
_event_nr()
{
	dmsetup info "$1" 2>/dev/null | sed -n 's/^Event number:[[:space:]]*//p'
}

# _wguard SECS WHAT CMD...   _wbg_wait SECS CMD; if CMD still runs after SECS
# the device hangs: fail the whole test now (nothing after it could
# complete).  Otherwise CMD's status, with a diagnostic if it failed.
_wguard()
{
	local secs=$1 what=$2 rc
	shift 2
	_wbg_wait "$secs" "$@"
	rc=$?
	[ $rc -ne 124 ] || _fail "$what hangs"
	[ $rc -eq 0 ] || _qdiag "$what failed (exit $rc)"
	return $rc
}
