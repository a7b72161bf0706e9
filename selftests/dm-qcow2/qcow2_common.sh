# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=bash
#
# Shared helpers for the dm-qcow2 read-path selftests (test_read_*.sh).
# Source after test_common.sh:
#
#	. "$(dirname "$0")/test_common.sh"
#	. "$(dirname "$0")/qcow2_common.sh"
#
# Image building (qemu-img / qemu-io / python3) is kept apart from mapping so
# that every test can be run with GEN_ONLY=1 on a machine without the module
# (or without root): it then builds all images, validates its oracles against
# independent references (qemu-io replays on raw files, qemu-img compare,
# qcow2_poke.py stats) and reports those checks as its KTAP subtests.
#
# Reading back: _read_at (buffered, any alignment) and _read_direct
# (O_DIRECT) use dd for single ranges; _read_battery and _verify_dev run the
# whole battery (unaligned, straddling, tail, direct, seeded random ranges,
# then the whole device) in one qcow2_readcheck.py process, because in the
# TCG test VMs each fork/exec costs ~0.1-0.3 s.
#
# Environment: GEN_ONLY=1 (above), QCOW2_KEEP=1 (keep the scratch dir, from
# test_common.sh), QCOW2_TIMING=1 (per-case times as diagnostics),
# QCOW2_SHARD=K/N (the long matrix suites run only cases K, K+N, K+2N, ...;
# see _shard_mine in test_common.sh).
#
# Conventions:
#   - $WORK is the per-test scratch directory (set by _qcow2_init).
#   - Diagnostics go to stdout as "# ..." lines (KTAP diagnostics).
#   - Functions return non-zero on failure and never exit, so that one
#     failing image does not hide the others.
#   - A mapped device is always read-only (_dm_create NAME TABLE ro).

QCOW2_TEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QCOW2_POKE_PY="$QCOW2_TEST_DIR/qcow2_poke.py"
QCOW2_READCHECK_PY="$QCOW2_TEST_DIR/qcow2_readcheck.py"
: "${GEN_ONLY:=0}"
: "${QCOW2_KEEP:=0}"

# All names of dm devices made by these tests start with this prefix.
# shellcheck disable=SC2034
QCOW2_DM_PREFIX="qc2t$$"

_qdiag()
{
	local l
	printf '%s\n' "$@" | while IFS= read -r l; do
		echo "# $l"
	done
}

_gen_only()
{
	[ "$GEN_ONLY" = 1 ]
}

# _shard_note TOTAL   a diagnostic naming the shard, if there is one
_shard_note()
{
	[ "$(_shard_count "$1")" = "$1" ] ||
		_qdiag "shard $QCOW2_SHARD: $(_shard_count "$1") of $1 cases here, the others in another VM"
}

_poke()
{
	python3 "$QCOW2_POKE_PY" "$@"
}

# _qcow2_init [extra required commands...]
# Requirement checks (exit 4 = skip via test_common.sh) and scratch dir.
_qcow2_init()
{
	_require_cmd qemu-img qemu-io python3 cmp dd truncate stat od "$@"
	if ! _gen_only; then
		_require_root
		_require_cmd dmsetup losetup blockdev
		_require_module
	fi
	WORK=$(_scratch_dir)
	[ -n "$WORK" ] && [ -d "$WORK" ] || {
		echo "# no scratch directory"
		exit 1
	}
	QCOW2_T0=${EPOCHREALTIME//[.,]/}
}

# Timestamps are microseconds from bash's EPOCHREALTIME (no date/awk
# processes: under TCG every fork/exec costs tens of milliseconds):
#	t0=${EPOCHREALTIME//[.,]/}
# _fmt_us US   microseconds as seconds with two decimals
_fmt_us()
{
	printf '%d.%02d' $(($1 / 1000000)) $(($1 % 1000000 / 10000))
}

# _elapsed [T0]   seconds since T0 (default: since _qcow2_init)
_elapsed()
{
	_fmt_us $((${EPOCHREALTIME//[.,]/} - ${1:-$QCOW2_T0}))
}

# ---------------------------------------------------------------------------
# Image creation helpers

# _mkimg FILE SIZE [qemu-img -o options]
_mkimg()
{
	local file=$1 size=$2 opts=${3:-}

	qemu-img create -q -f qcow2 ${opts:+-o "$opts"} "$file" "$size" ||
		{ _qdiag "qemu-img create $file $size $opts failed"; return 1; }
}

# _qio FILE CMD...    run qemu-io commands (one -c per argument) read-write on
# a qcow2 image; QIO_FMT overrides the format (e.g. raw for oracles).  Fails
# when any command fails (qemu-io exits 1 then) or prints an error.
_qio()
{
	local file=$1 out c
	local -a args=()
	shift
	for c in "$@"; do
		args+=(-c "$c")
	done
	out=$(qemu-io -f "${QIO_FMT:-qcow2}" "${args[@]}" "$file" 2>&1) || {
		_qdiag "qemu-io $file failed:" "$(echo "$out" | tail -5)"
		return 1
	}
	# (the commands use -q: any output at all is suspicious)
	if [ -n "$out" ] && echo "$out" | grep -Eqi 'fail|error|invalid|not aligned'; then
		_qdiag "qemu-io $file reported:" "$(echo "$out" | grep -Ei 'fail|error|invalid|not aligned' | head -5)"
		return 1
	fi
	return 0
}

# _qio_file FILE CMDFILE   like _qio, commands one per line in CMDFILE
_qio_file()
{
	local file=$1 cmdfile=$2
	local -a cmds=()
	mapfile -t cmds <"$cmdfile"
	_qio "$file" "${cmds[@]}"
}

# _img_info IMG KEY[.KEY...]  one value from `qemu-img info --output=json`
_img_info()
{
	local img=$1 key=$2
	qemu-img info -U --output=json "$img" |
		python3 -c 'import json,sys
d=json.load(sys.stdin)
for k in sys.argv[1].split("."):
    d=d[k] if isinstance(d,dict) else d[int(k)]
print(str(d).lower() if isinstance(d,bool) else d)' "$key"
}

# Virtual size in bytes (qemu-img info "virtual-size"; no python: cheap).
_vsize()
{
	qemu-img info -U --output=json "$1" |
		sed -n 's/^    "virtual-size": \([0-9]*\),*$/\1/p' | head -1
}

_cluster_size()
{
	qemu-img info -U --output=json "$1" |
		sed -n 's/^    "cluster-size": \([0-9]*\),*$/\1/p' | head -1
}

# _pattern_file FILE LEN SEED   deterministic pseudo-random bytes
_pattern_file()
{
	python3 -c 'import random,sys
r=random.Random(int(sys.argv[2]))
sys.stdout.buffer.write(r.randbytes(int(sys.argv[1])))' "$2" "$3" >"$1"
}

# _size_of PATH   size in bytes of a file or block device
_size_of()
{
	if [ -b "$1" ]; then
		blockdev --getsize64 "$1"
	else
		stat -L -c %s "$1"
	fi
}

# _qcheck IMG   qemu-img check must report a consistent image (the page
# cache of a block device IMG dropped first: see _wcheck)
_qcheck()
{
	local out rc
	_drop_cache "$1"
	out=$(qemu-img check -U "$1" 2>&1)
	rc=$?
	[ $rc -eq 0 ] || _qdiag "qemu-img check $1 exit $rc:" "$(echo "$out" | tail -3)"
	return $rc
}

# _put_be IMG OFF SIZE VALUE   write a big-endian SIZE-byte integer in place
# (cheap: no python; VALUE may be hex)
_put_be()
{
	local img=$1 off=$2 size=$3 val=$4 hex esc="" i
	printf -v hex "%0$((size * 2))x" "$((val))"
	hex=${hex: -$((size * 2))}
	for ((i = 0; i < ${#hex}; i += 2)); do
		esc+="\\x${hex:i:2}"
	done
	# shellcheck disable=SC2059
	printf "$esc" | dd of="$img" bs=1 seek="$off" conv=notrunc status=none
}

# _get_be IMG OFF SIZE   read a big-endian integer (decimal; 64-bit values
# with the top bit set come out negative, use printf %x to see them)
_get_be()
{
	local hex
	hex=$(od -An -tx1 -v -j "$2" -N "$3" "$1" | tr -d ' \n')
	echo $((16#${hex:-0}))
}

# _stats_get IMG KEY   one counter from qcow2_poke.py stats (0 if absent)
_stats_get()
{
	local v
	v=$(_poke stats "$1" | sed -n "s/^$2=//p")
	echo "${v:-0}"
}

# _expect_stats IMG KEY>=N ...   e.g. _expect_stats a.qcow2 zero_alloc=1
# (a minimum count) to prove a generator produced what it claims to cover.
_expect_stats()
{
	local img=$1 kv k n got stats rc=0
	shift
	stats=$(_poke stats "$img") || return 1
	for kv in "$@"; do
		k=${kv%%=*}
		n=${kv#*=}
		got=$(echo "$stats" | sed -n "s/^$k=//p")
		got=${got:-0}
		if [ "$got" -lt "$n" ]; then
			_qdiag "$(basename "$img"): expected $k >= $n, got $got (stats: $(echo $stats))"
			rc=1
		fi
	done
	return $rc
}

# ---------------------------------------------------------------------------
# References

# _ref_raw IMAGE OUT [extra qemu-img convert args, e.g. -l snapshot.id=1]
# The whole chain is resolved by qemu-img: the reference every test uses.
_ref_raw()
{
	local img=$1 out=$2
	shift 2
	rm -f "$out"
	qemu-img convert -U "$@" -O raw "$img" "$out" ||
		{ _qdiag "qemu-img convert $img failed"; return 1; }
}

# ---------------------------------------------------------------------------
# Attaching and mapping

# _img_attach FILE   pad FILE to a multiple of 512 bytes (bytes past EOF of
# an image read as zeros, so the padding changes nothing) and attach a
# read-only loop device; prints the device.  The loop devices of the last
# _map_image are also listed in $WORK/.loops.<name> for _unmap.
_img_attach()
{
	local file=$1 dev
	truncate -s %512 "$file" || return 1
	# Buffered loop I/O (--direct-io=off overrides _loop_attach's first
	# --direct-io=on attempt, which fails on tmpfs anyway and costs a
	# losetup call per layer); keeps the logical block size at 512.
	dev=$(_loop_attach "$file" --read-only --direct-io=off 2>"$WORK/.attach_err") || {
		cat "$WORK/.attach_err" >&2
		return 1
	}
	echo "$dev"
}

# _dev_majmin DEV   "major:minor" in decimal
_dev_majmin()
{
	local t
	t=$(stat -L -c '%t %T' "$1") || return 1
	# shellcheck disable=SC2086
	set -- $t
	echo "$((16#$1)):$((16#$2))"
}

# _qcow2_table IMG_DEV LEN [opt args...]   the target's table line
_qcow2_table()
{
	local dev=$1 len=$2
	shift 2
	if [ $# -gt 0 ]; then
		echo "0 $len qcow2 $dev $# $*"
	else
		echo "0 $len qcow2 $dev"
	fi
}

# _map_image NAME IMAGE [SPEC...]
#   SPEC: qcow2:FILE | raw:FILE   backing layer (nearest first)
#         snapshot:ID             map internal snapshot ID
#         cache_size:BYTES        metadata cache bound
#         len:SECTORS             override the table length
# Attaches IMAGE and every backing file, creates the read-only device
# /dev/mapper/NAME.  Sets MAP_DEV, MAP_TABLE (with /dev paths),
# MAP_TABLE_MM (devices as major:minor, what `dmsetup table` must print) and
# MAP_LAYERS (1 + number of backing layers) and MAP_VSIZE (table length in
# bytes: qemu-img info's virtual-size unless len: was given).  Returns non-zero if anything
# fails (the caller reports it); a failed `dmsetup create` leaves nothing.
_map_image()
{
	local name=$1 img=$2 spec dev len="" mm
	local -a opts=() opts_mm=()
	shift 2

	MAP_DEV="" MAP_TABLE="" MAP_TABLE_MM="" MAP_LAYERS=1 MAP_VSIZE=0
	: >"$WORK/.loops.$name"
	dev=$(_img_attach "$img") && [ -b "$dev" ] ||
		{ _qdiag "cannot attach $img"; return 1; }
	echo "$dev" >>"$WORK/.loops.$name"
	for spec in "$@"; do
		case "$spec" in
		qcow2:* | raw:*)
			local bdev
			bdev=$(_img_attach "${spec#*:}") && [ -b "$bdev" ] ||
				{ _qdiag "cannot attach ${spec#*:}"; return 1; }
			echo "$bdev" >>"$WORK/.loops.$name"
			opts+=(backing "${spec%%:*}" "$bdev")
			opts_mm+=(backing "${spec%%:*}" "$(_dev_majmin "$bdev")")
			MAP_LAYERS=$((MAP_LAYERS + 1))
			;;
		snapshot:* | cache_size:*)
			opts+=("${spec%%:*}" "${spec#*:}")
			opts_mm+=("${spec%%:*}" "${spec#*:}")
			;;
		len:*)
			len=${spec#len:}
			;;
		*)
			_qdiag "_map_image: bad spec $spec"
			return 1
			;;
		esac
	done
	[ -n "$len" ] || len=$(($(_vsize "$img") / 512))
	# shellcheck disable=SC2034	# for the caller
	MAP_VSIZE=$((len * 512))
	MAP_TABLE=$(_qcow2_table "$dev" "$len" "${opts[@]}")
	mm=$(_dev_majmin "$dev")
	# shellcheck disable=SC2034
	MAP_TABLE_MM=$(_qcow2_table "$mm" "$len" "${opts_mm[@]}")
	_dm_create "$name" "$MAP_TABLE" ro || {
		_qdiag "dmsetup create $name failed for table: $MAP_TABLE"
		return 1
	}
	MAP_DEV=/dev/mapper/$name
	[ -b "$MAP_DEV" ] || udevadm settle 2>/dev/null
	[ -b "$MAP_DEV" ] || dmsetup mknodes "$name" 2>/dev/null
	[ -b "$MAP_DEV" ] || { _qdiag "$MAP_DEV missing"; return 1; }
	return 0
}

# _unmap NAME   remove a device made by _map_image and detach its loop
# devices now (tests mapping many images free memory this way; the exit
# cleanup of test_common.sh skips what is already gone).
_unmap()
{
	local l
	_dm_remove "$1" >/dev/null 2>&1 || _qdiag "cannot remove $1"
	if [ -f "$WORK/.loops.$1" ]; then
		while read -r l; do
			_loop_detach "$l" 2>/dev/null
		done <"$WORK/.loops.$1"
		rm -f "$WORK/.loops.$1"
	fi
	return 0
}

# ---------------------------------------------------------------------------
# dmesg helpers with case-insensitive extended patterns

# Mark the kernel log (test_common.sh's _dmesg_mark).
_qmark()
{
	_dmesg_mark
}

# Kernel log lines since the last mark.
_qdmesg()
{
	_dmesg_since_mark
}

# _qdmesg_has ERE   a kernel line since the mark matches ERE (case-insensitive)
_qdmesg_has()
{
	_dmesg_since_mark | grep -Eqi -- "$1"
}

# ---------------------------------------------------------------------------
# Comparison oracles (DEV may also be a regular file: GEN_ONLY validation)

# _cmp_dev_ref DEV REF   sizes equal and every byte equal
_cmp_dev_ref()
{
	local dev=$1 ref=$2 ds rs out
	ds=$(_size_of "$dev") rs=$(_size_of "$ref")
	if [ "$ds" != "$rs" ]; then
		_qdiag "size mismatch: $dev is $ds bytes, reference $rs"
		return 1
	fi
	out=$(cmp "$dev" "$ref" 2>&1) || {
		_qdiag "content mismatch: $out"
		return 1
	}
	return 0
}

# _drop_cache DEV   make the next buffered read go to the target
_drop_cache()
{
	[ -b "$1" ] && blockdev --flushbufs "$1" 2>/dev/null
	return 0
}

# _read_at DEV OFF LEN [REF]   buffered read of LEN bytes at byte offset OFF
# (any alignment) compared with the same range of REF (default $QREF).
# A short read fails too (cmp -n hits EOF).  Few processes: under TCG every
# fork/exec costs tens of milliseconds.
_read_at()
{
	local dev=$1 off=$2 len=$3 ref=${4:-$QREF} out
	_drop_cache "$dev"
	dd if="$dev" of="$WORK/.ra_dev" bs=64k iflag=skip_bytes,count_bytes \
		skip="$off" count="$len" status=none 2>"$WORK/.ra_err" || {
		_qdiag "read $off+$len of $dev failed: $(cat "$WORK/.ra_err")"
		return 1
	}
	out=$(cmp -n "$len" -i "0:$off" "$WORK/.ra_dev" "$ref" 2>&1) || {
		_qdiag "read $off+$len differs from the reference: ${out:-?} (byte numbers relative to $off)"
		return 1
	}
	return 0
}

# _read_direct DEV OFF LEN [REF]   O_DIRECT read; OFF and LEN must be
# multiples of the device's logical block size (4096 always works).
_read_direct()
{
	local dev=$1 off=$2 len=$3 ref=${4:-$QREF} bs=512 out
	[ $((off % 4096)) -eq 0 ] && [ $((len % 4096)) -eq 0 ] && bs=4096
	dd if="$dev" of="$WORK/.rd_dev" bs=$bs iflag=direct \
		skip=$((off / bs)) count=$((len / bs)) status=none 2>"$WORK/.ra_err" || {
		_qdiag "direct read $off+$len of $dev failed: $(cat "$WORK/.ra_err")"
		return 1
	}
	out=$(cmp -n "$len" -i "0:$off" "$WORK/.rd_dev" "$ref" 2>&1) || {
		_qdiag "direct read $off+$len differs from the reference: ${out:-?} (byte numbers relative to $off)"
		return 1
	}
	return 0
}

# _read_battery DEV REF CLUSTER_SIZE [SEED]
# A fixed set of unaligned, cluster-straddling and tail buffered reads (page
# cache dropped before each), 4 KiB- and (when the logical block size
# allows) 512-byte-aligned O_DIRECT reads and a few seeded random ranges,
# all compared with REF; done by qcow2_readcheck.py in one process, as under
# TCG a dd/cmp pair per read costs more than the reads.
_read_battery()
{
	python3 "$QCOW2_READCHECK_PY" "$1" "$2" "$3" "${4:-1}" --no-whole
}

# _verify_dev DEV REF CLUSTER_SIZE [SEED]   the read battery on a cold cache,
# then the whole device compared with REF (and the sizes).
_verify_dev()
{
	python3 "$QCOW2_READCHECK_PY" "$1" "$2" "$3" "${4:-1}"
}

# ---------------------------------------------------------------------------
# Status and table

# _status_fields NAME   the fields after "start len qcow2" (no awk: cheap)
_status_fields()
{
	local st tgt rest
	st=$(dmsetup status "$1") || return 1
	read -r _ _ tgt rest <<<"$st"
	[ "$tgt" = qcow2 ] || { _qdiag "status of $1 is not a qcow2 target: $st"; return 1; }
	echo "$rest"
}

# _status_field NAME N   field N (1 = mode, 8 = metadata_reads,
# 9 = open_reads, 10 = io_errors)
_status_field()
{
	local -a f
	read -ra f <<<"$(_status_fields "$1")"
	echo "${f[$2 - 1]}"
}

# _check_status NAME VSIZE CLUSTER_SIZE LAYERS [io_errors]
# Checks the status grammar (Documentation/admin-guide/device-mapper/
# qcow2.rst):
#   mode vsize cluster_size nr_layers used/slots hits misses meta_reads
#   open_reads io_errors [dirty_slices [corrupt] [no_space]]
# The first 10 fields are the read-path contract; dirty_slices (added with
# the write path) must be 0 on a read-only device when present.
# io_errors: a number (default 0), "nonzero" or "any".
_check_status()
{
	local name=$1 vsize=$2 cs=$3 layers=$4 ioerr=${5:-0} s rc=0 v
	local mode vs c nl cache hits misses mr orr ioe dirty flags used slots
	s=$(_status_fields "$name")
	read -r mode vs c nl cache hits misses mr orr ioe dirty flags <<<"$s"
	used=${cache%%/*} slots=${cache#*/}
	# for the caller: metadata_reads, open_reads, io_errors, cache misses
	# shellcheck disable=SC2034
	ST_META_READS=$mr ST_OPEN_READS=$orr ST_IO_ERRORS=$ioe ST_MISSES=$misses
	if [ -z "$ioe" ]; then
		_qdiag "status: expected at least 10 fields, got: $s"
		return 1
	fi
	for v in "$vs" "$c" "$nl" "$used" "$slots" "$hits" "$misses" "$mr" "$orr" "$ioe"; do
		case "$v" in
		'' | *[!0-9]*) _qdiag "status: non-numeric field '$v' in: $s"; return 1 ;;
		esac
	done
	if [ -n "$dirty" ]; then
		case "$dirty" in
		*[!0-9]*) _qdiag "status: dirty_slices '$dirty' is not a number in: $s"; rc=1 ;;
		0) ;;
		*) _qdiag "status: $dirty dirty slices on a read-only device"; rc=1 ;;
		esac
	fi
	for v in $flags; do
		case "$v" in
		corrupt) ;;
		*) _qdiag "status: unexpected flag '$v' on a read-only device"; rc=1 ;;
		esac
	done
	[ "$mode" = ro ] || { _qdiag "status: mode $mode, expected ro"; rc=1; }
	[ "$vs" = "$vsize" ] || { _qdiag "status: virtual size $vs, expected $vsize"; rc=1; }
	[ "$c" = "$cs" ] || { _qdiag "status: cluster size $c, expected $cs"; rc=1; }
	[ "$nl" = "$layers" ] || { _qdiag "status: $nl layers, expected $layers"; rc=1; }
	[ "$used" -le "$slots" ] || { _qdiag "status: cache $cache over its bound"; rc=1; }
	[ "$slots" -gt 0 ] || { _qdiag "status: cache has no slots"; rc=1; }
	[ "$orr" -ge 1 ] || { _qdiag "status: open_reads $orr (the header must be read)"; rc=1; }
	[ "$orr" -le "$mr" ] || { _qdiag "status: open_reads $orr > metadata_reads $mr"; rc=1; }
	if [ "$ioerr" = any ]; then
		:
	elif [ "$ioerr" = nonzero ]; then
		[ "$ioe" -gt 0 ] || { _qdiag "status: io_errors 0 after a failed read"; rc=1; }
	else
		[ "$ioe" = "$ioerr" ] || { _qdiag "status: io_errors $ioe, expected $ioerr"; rc=1; }
	fi
	return $rc
}

# _check_table NAME EXPECTED   `dmsetup table` round-trips the table line
_check_table()
{
	local got
	got=$(dmsetup table "$1")
	got=${got%"${got##*[![:space:]]}"}
	[ "$got" = "$2" ] || {
		_qdiag "dmsetup table: '$got'" "expected:      '$2'"
		return 1
	}
}

# _ctr_errors   the reasons of failed table loads since the mark: the text
# after "qcow2: " in dm core's "device-mapper: table: <dev>: qcow2: <reason>
# (-Exxx)" lines, errno stripped.  Only these lines count: the target's own
# detail lines repeat header fields ("refcount_order 4", "incompatible
# features 0x0", ...) that would let a loose pattern match any refusal.
_ctr_errors()
{
	_dmesg_since_mark | sed -n 's/.*device-mapper: table: [^ ]*: qcow2: //p' |
		sed 's/ *(-\{0,1\}E[A-Z0-9]*)$//'
}

# _expect_refused NAME TABLE ERE
# Loading TABLE must fail and dm core must log "qcow2: <reason>" with a
# reason matching ERE (case-insensitive); no oops/WARN.  (The kernel log is
# read once: every dmesg pipeline is expensive under TCG.)
_expect_refused()
{
	local name=$1 table=$2 pat=$3 rc=0 log why
	_qmark
	if _dm_create "$name" "$table" ro >/dev/null 2>&1; then
		_qdiag "table was accepted: $table"
		_unmap "$name"
		return 1
	fi
	log=$(_dmesg_since_mark)
	why=$(sed -n 's/.*device-mapper: table: [^ ]*: qcow2: //p' <<<"$log" |
		sed 's/ *(-\{0,1\}E[A-Z0-9]*)$//')
	if ! grep -Eqi -- "$pat" <<<"$why"; then
		_qdiag "no table error 'qcow2: ...' matching '$pat'; got: ${why:-nothing}" \
			"kernel log since mark:" "$(tail -4 <<<"$log")"
		rc=1
	else
		_qdiag "refused: $(head -1 <<<"$why")"
	fi
	if [ -n "${_KERNEL_REPORT_RE:-}" ]; then
		if grep -Eq -- "$_KERNEL_REPORT_RE" <<<"$log"; then
			_qdiag "kernel report:" "$(grep -E -- "$_KERNEL_REPORT_RE" <<<"$log" | head -3)"
			rc=1
		fi
	else
		_check_dmesg_clean >/dev/null || { _qdiag "dmesg not clean"; rc=1; }
	fi
	return $rc
}

# ---------------------------------------------------------------------------
# KTAP plumbing for "one subtest per case" tests

QCOW2_NFAIL=0

# _dmesg_clean_result DESC   one subtest for the kernel log since the last
# mark (tests whose positive cases do not check it one by one: a dmesg
# pipeline per case is expensive under TCG); a skip with GEN_ONLY=1.
_dmesg_clean_result()
{
	if _gen_only; then
		ktap_skip "$1" "GEN_ONLY"
		return
	fi
	local r=0
	_check_dmesg_clean || r=1
	_result "$1" $r
}

# _result DESC RC
_result()
{
	if [ "$2" -eq 0 ]; then
		ktap_ok "$1"
	else
		ktap_fail "$1"
		QCOW2_NFAIL=$((QCOW2_NFAIL + 1))
	fi
}
