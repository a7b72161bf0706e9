#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test-replay.sh - host tests of replay-log on synthetic logs (gen-log.py).
# Prints TAP; the last line is "log-writes replay: N passed, N failed".
# No root needed: the replay device is a regular file.
#
# Environment: REPLAY_SEED=N fixes the seed of the random log (printed).
# shellcheck disable=SC2016 # check commands are expanded by replay-log's sh
set -u

dir=$(cd "$(dirname "$0")" && pwd)
RL=$dir/replay-log
GEN=$dir/gen-log.py
T=$(mktemp -d "${TMPDIR:-/tmp}/replay-log-test.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
SEED=${REPLAY_SEED:-$(((RANDOM << 15 | RANDOM) % 1000000))}
n=0
pass=0
fail=0

ok()
{
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then
		echo "ok $n - $2"
		pass=$((pass + 1))
	else
		echo "not ok $n - $2"
		fail=$((fail + 1))
	fi
}

# same FILE EXPECTED: byte comparison, with a diagnostic
same()
{
	cmp "$1" "$2" >"$T/cmp.out" 2>&1 && return 0
	sed 's/^/# /' "$T/cmp.out"
	return 1
}

# fresh NAME D: a replay file holding D/initial
fresh()
{
	cp "$2/initial" "$T/$1"
}

echo "TAP version 13"
echo "1..31"
echo "# seed $SEED (REPLAY_SEED=$SEED reproduces)"

[ -x "$RL" ] || { echo "Bail out! $RL is not built"; exit 1; }
D=$T/d
python3 "$GEN" "$T/log" "$D" --seed "$SEED" || { echo "Bail out! gen-log.py failed"; exit 1; }
mapfile -t POINTS <"$D/points"
NE=$(find "$D" -name 'after.*' | wc -l)
LAST=$((NE - 1))

# 1-2: --list without --replay
out=$("$RL" --log "$T/log" --list)
ok $? "--list exits 0"
[ "$(grep -c '^entry ' <<<"$out")" -eq "$NE" ] &&
	[ "$(grep -c 'MARK "' <<<"$out")" -eq "$(wc -l <"$D/marks")" ] &&
	[ "$(grep -Ec 'FLUSH|FUA' <<<"$out")" -eq "${#POINTS[@]}" ]
ok $? "--list shows $NE entries (uncounted ones ignored), the marks and ${#POINTS[@]} FLUSH/FUA entries"

# 3: full replay
fresh r "$D"
"$RL" --log "$T/log" --replay "$T/r" >/dev/null && same "$T/r" "$D/after.$LAST"
ok $? "full replay gives the final state"

# 4-6: --end-entry
for e in 0 $((NE / 3)) $((NE - 2)); do
	fresh r "$D"
	"$RL" --log "$T/log" --replay "$T/r" --end-entry "$e" >/dev/null &&
		same "$T/r" "$D/after.$e"
	ok $? "--end-entry $e"
done

# 7: --end-mark (the second mark, with its long name)
read -r mi mname < <(sed -n 2p "$D/marks")
fresh r "$D"
"$RL" --log "$T/log" --replay "$T/r" --end-mark "$mname" >/dev/null &&
	same "$T/r" "$D/after.$mi"
ok $? "--end-mark $mname stops at entry $mi"

# 8: --limit
fresh r "$D"
"$RL" --log "$T/log" --replay "$T/r" --limit 7 >/dev/null && same "$T/r" "$D/after.6"
ok $? "--limit 7 applies entries 0..6"

# 9: --start-mark: from the state at the mark to the end
read -r mi mname < <(sed -n 1p "$D/marks")
cp "$D/after.$mi" "$T/r"
"$RL" --log "$T/log" --replay "$T/r" --start-mark "$mname" >/dev/null &&
	same "$T/r" "$D/after.$LAST"
ok $? "--start-mark $mname continues from the state at the mark"

# 10: --start-entry with --end-entry and --limit together
cp "$D/after.9" "$T/r"
"$RL" --log "$T/log" --replay "$T/r" --start-entry 10 --end-entry 30 --limit 5 >/dev/null &&
	same "$T/r" "$D/after.14"
ok $? "--start-entry 10 --end-entry 30 --limit 5 applies 10..14"

# 11-12: a check at every FLUSH/FUA point sees exactly that state
fresh r "$D"
: >"$T/seen"
"$RL" --log "$T/log" --replay "$T/r" --check-cmd \
	'cmp -s "$REPLAY_DEV" "'"$D"'/after.$REPLAY_ENTRY" && echo "$REPLAY_ENTRY $REPLAY_FLAGS" >>"'"$T"'/seen"' \
	>"$T/out"
rc=$?
ok $rc "check at every point: exit 0 ($(tail -n 1 "$T/out"))"
cut -d' ' -f1 "$T/seen" | cmp -s - "$D/points"
ok $? "the check ran at the ${#POINTS[@]} FLUSH/FUA entries, each on the state after that entry"

# 13: REPLAY_MARK / REPLAY_MARK_ENTRY
fresh r "$D"
: >"$T/seen"
"$RL" --log "$T/log" --replay "$T/r" --check-cmd \
	'echo "$REPLAY_MARK_ENTRY $REPLAY_MARK" | cmp -s - "'"$D"'/lastmark.$REPLAY_ENTRY" && echo "$REPLAY_ENTRY" >>"'"$T"'/seen"' >/dev/null &&
	cmp -s "$T/seen" "$D/points"
ok $? "REPLAY_MARK and REPLAY_MARK_ENTRY name the last mark before each point"

# 14-15: --max-checks spreads the checks evenly and ends at the last point
fresh r "$D"
: >"$T/seen"
"$RL" --log "$T/log" --replay "$T/r" --max-checks 4 --check-cmd \
	'cmp -s "$REPLAY_DEV" "'"$D"'/after.$REPLAY_ENTRY" && echo "$REPLAY_ENTRY $REPLAY_CHECK $REPLAY_CHECKS $REPLAY_POINTS" >>"'"$T"'/seen"' \
	>/dev/null
ok $? "--max-checks 4: exit 0"
np=${#POINTS[@]}
want=""
for j in 1 2 3 4; do
	k=$(((j * np + 3) / 4))
	want+="${POINTS[k - 1]} $j 4 $np"$'\n'
done
[ "$(cat "$T/seen")"$'\n' = "$want" ] && same "$T/r" "$D/after.$LAST"
ok $? "--max-checks 4 of $np points: entries $(cut -d' ' -f1 "$T/seen" | tr '\n' ' ')and the whole log replayed"

# 16-17: a failing check stops the replay at that point
fresh r "$D"
"$RL" --log "$T/log" --replay "$T/r" --check-cmd '[ "$REPLAY_CHECK" -lt 3 ]' >"$T/out"
rc=$?
[ $rc -eq 1 ] && grep -q "check failed (exit 1) at entry ${POINTS[2]} " "$T/out"
ok $? "a failing check: exit $rc (want 1), reported at entry ${POINTS[2]}"
same "$T/r" "$D/after.${POINTS[2]}"
ok $? "the replay stopped right after the failing point"

# 18: --keep-going
fresh r "$D"
: >"$T/seen"
"$RL" --log "$T/log" --replay "$T/r" --keep-going --check-cmd \
	'echo x >>"'"$T"'/seen"; [ "$REPLAY_CHECK" -ne 2 ]' >"$T/out"
rc=$?
[ $rc -eq 1 ] && [ "$(wc -l <"$T/seen")" -eq "$np" ] && same "$T/r" "$D/after.$LAST" &&
	grep -q "$np of $np check points checked, 1 failed" "$T/out"
ok $? "--keep-going: every point checked, exit $rc (want 1)"

# 19: --check mark and --check N
fresh r "$D"
: >"$T/seen"
"$RL" --log "$T/log" --replay "$T/r" --check mark --check-cmd \
	'echo "$REPLAY_ENTRY $REPLAY_MARK" >>"'"$T"'/seen"' >/dev/null &&
	cmp -s "$T/seen" "$D/marks"
ok $? "--check mark runs at every mark"
fresh r "$D"
: >"$T/seen"
"$RL" --log "$T/log" --replay "$T/r" --check 10 --check-cmd \
	'cmp -s "$REPLAY_DEV" "'"$D"'/after.$REPLAY_ENTRY" && echo "$REPLAY_ENTRY" >>"'"$T"'/seen"' >/dev/null &&
	[ "$(tr '\n' ' ' <"$T/seen")" = "$(seq 9 10 "$LAST" | tr '\n' ' ')" ]
ok $? "--check 10 runs after every 10 entries"

# 21-23: discards
fresh r "$D"
"$RL" --log "$T/log" --replay "$T/r" --discard zero >/dev/null && same "$T/r" "$D/after.$LAST"
ok $? "--discard zero writes zeros"
fresh r "$D"
"$RL" --log "$T/log" --replay "$T/r" --no-discard >/dev/null && same "$T/r" "$D/final.nodiscard"
ok $? "--no-discard leaves discarded ranges as they were"
# punch on a sparse file: a large discard must free blocks
python3 - "$T/big.log" <<'PY'
import struct, sys
ss = 4096
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<QQQI", 0x6a736677736872, 1, 2, ss).ljust(ss, b"\0"))
    f.write(struct.pack("<QQQQ", 0, 256, 4, 0).ljust(ss, b"\0"))      # discard 1 MiB
    f.write(struct.pack("<QQQQ", 0, 0, 8, 3).ljust(32, b"\0") + b"end" + bytes(ss - 35))
PY
head -c $((2 << 20)) /dev/urandom >"$T/big"
b0=$(du -k "$T/big" | cut -f1)
"$RL" --log "$T/big.log" --replay "$T/big" >/dev/null
b1=$(du -k "$T/big" | cut -f1)
[ "$(head -c $((1 << 20)) "$T/big" | tr -d '\0' | wc -c)" -eq 0 ] && [ "$b1" -lt "$b0" ]
ok $? "--discard punch (default) punches a hole in a file (4 KiB sector log; ${b0}K -> ${b1}K)"

# 24: 4096-byte sector size log
python3 "$GEN" "$T/log4k" "$T/d4k" --seed $((SEED + 1)) --sectorsize 4096 --size $((1 << 20)) --entries 40 &&
	cp "$T/d4k/initial" "$T/r4k" &&
	"$RL" --log "$T/log4k" --replay "$T/r4k" --check-cmd \
		'cmp -s "$REPLAY_DEV" "'"$T"'/d4k/after.$REPLAY_ENTRY"' >/dev/null &&
	same "$T/r4k" "$T/d4k/after.39"
ok $? "a 4096-byte sector log replays, with the state right at every point"

# 25-27: malformed logs are refused before anything is written
fresh r "$D"
cp "$T/log" "$T/bad"
printf 'X' | dd of="$T/bad" bs=1 seek=0 conv=notrunc status=none
"$RL" --log "$T/bad" --replay "$T/r" 2>"$T/err"
rc=$?
[ $rc -eq 3 ] && grep -q "bad magic" "$T/err" && same "$T/r" "$D/initial"
ok $? "bad magic: exit $rc (want 3), device untouched"
cp "$T/log" "$T/bad"
# flags of entry 1 (header at 1024 for a 512 log: entry 0 is an empty flush)
printf '\x80' | dd of="$T/bad" bs=1 seek=$(("$(sed -n 's/^entry 1 @\([0-9]*\):.*/\1/p' <<<"$out")" + 16)) conv=notrunc status=none
"$RL" --log "$T/bad" --replay "$T/r" 2>"$T/err"
rc=$?
[ $rc -eq 3 ] && grep -q "unknown flags" "$T/err" && same "$T/r" "$D/initial"
ok $? "unknown flags in entry 1: exit $rc (want 3), device untouched"
size=$(stat -c %s "$T/log")
head -c $((size * 2 / 3)) "$T/log" >"$T/bad"
"$RL" --log "$T/bad" --replay "$T/r" 2>"$T/err"
rc=$?
[ $rc -eq 3 ] && grep -q "past the end of the log" "$T/err" && same "$T/r" "$D/initial"
ok $? "truncated log: exit $rc (want 3), device untouched"

# 28-31: --torn, torn states before flushes
# The check command: a torn state must be the state before the run plus the
# last S writes of it (built with --start-entry/--end-entry, tested above);
# any other point the state after its entry.
cat >"$T/torn-check.sh" <<'SH'
D=$1 T=$2 RL=$3 LOG=$4
if [ -n "$REPLAY_TORN" ]; then
	set -- $REPLAY_TORN
	f=$((REPLAY_ENTRY + 1))
	a=$(awk -v f="$f" '$1 == f { print $2 }' "$D/runs")
	[ -n "$a" ] && [ "$REPLAY_TORN_FIRST" -eq $((f - $1)) ] && [ "$2" -eq $((f - a)) ] || exit 1
	src=$D/initial
	[ "$a" -gt 0 ] && src=$D/after.$((a - 1))
	cp "$src" "$T/exp" &&
		"$RL" --log "$LOG" --replay "$T/exp" --start-entry "$REPLAY_TORN_FIRST" \
			--end-entry "$REPLAY_ENTRY" >/dev/null &&
		cmp -s "$REPLAY_DEV" "$T/exp" || exit 1
	echo "$f $1 $2" >>"$T/seen"
else
	cmp -s "$REPLAY_DEV" "$D/after.$REPLAY_ENTRY" || exit 1
fi
SH
want=$(awk '{ n = $1 - $2; t = 0; for (s = 1; s < n && t < 3; s *= 2) { print $1, s, n; t++ } }' "$D/runs")
fresh r "$D"
: >"$T/seen"
"$RL" --log "$T/log" --replay "$T/r" --torn 3 --check-cmd \
	"sh $T/torn-check.sh $D $T $RL $T/log" >"$T/out"
rc=$?
nt=$(printf '%s\n' "$want" | grep -c .)
[ $rc -eq 0 ] && [ "$(cat "$T/seen")" = "$want" ] && same "$T/r" "$D/after.$LAST" &&
	grep -q "; $nt torn states checked, 0 failed" "$T/out"
ok $? "--torn 3: $nt torn states before the $(wc -l <"$D/runs") flushes after runs of writes, each the last 1, 2, 4 writes of its run; the whole log replayed after them"

# A fixed log of overlapping writes: a undone after b and c were applied
# must not bring back what b and c overwrote.
python3 - "$T/ov.log" "$T/ov" <<'PY'
import struct, sys
ss = 512
def ent(sec, nr, flags, data=b""):
    return struct.pack("<QQQQ", sec, nr, flags, 0).ljust(ss, b"\0") + data
es = [ent(0, 8, 0, b"a" * 8 * ss), ent(4, 8, 0, b"b" * 8 * ss), ent(2, 4, 0, b"c" * 4 * ss),
      ent(0, 0, 1), ent(20, 2, 0, b"d" * 2 * ss), ent(0, 0, 1)]
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<QQQI", 0x6a736677736872, 1, len(es), ss).ljust(ss, b"\0"))
    f.write(b"".join(es))
dev = bytearray(b"i" * 32 * ss)
open(sys.argv[2] + ".init", "wb").write(dev)
def put(d, sec, ch, nr):
    d[sec * ss:(sec + nr) * ss] = ch * nr * ss
t1 = bytearray(dev); put(t1, 2, b"c", 4)                      # last 1 of a, b, c
t2 = bytearray(dev); put(t2, 4, b"b", 8); put(t2, 2, b"c", 4)  # last 2
full = bytearray(dev); put(full, 0, b"a", 8); put(full, 4, b"b", 8); put(full, 2, b"c", 4)
end = bytearray(full); put(end, 20, b"d", 2)
for n, d in (("t1", t1), ("t2", t2), ("full", full), ("end", end)):
    open(sys.argv[2] + "." + n, "wb").write(d)
PY
cp "$T/ov.init" "$T/r"
: >"$T/seen"
"$RL" --log "$T/ov.log" --replay "$T/r" --torn 5 --check-cmd \
	'case "$REPLAY_TORN" in "1 3") x=t1 ;; "2 3") x=t2 ;; "") x=full; [ "$REPLAY_ENTRY" = 5 ] && x=end ;; *) exit 1 ;; esac
	 cmp -s "$REPLAY_DEV" "'"$T"'/ov.$x" && echo "$REPLAY_ENTRY $x" >>"'"$T"'/seen"' >"$T/out"
rc=$?
[ $rc -eq 0 ] && [ "$(tr '\n' ' ' <"$T/seen")" = "2 t1 2 t2 3 full 5 end " ] && same "$T/r" "$T/ov.end"
ok $? "--torn on overlapping writes: the last 1 and 2 of 3 writes exactly, the full run after (exit $rc; $(tr '\n' ' ' <"$T/seen"))"

# A failing torn check stops there and leaves that state on the device.
cp "$T/ov.init" "$T/r"
"$RL" --log "$T/ov.log" --replay "$T/r" --torn 2 --check-cmd '[ "$REPLAY_TORN" != "2 3" ]' >"$T/out"
rc=$?
[ $rc -eq 1 ] && grep -q "check failed (exit 1) in a torn state before entry 3 .*only entries 1..2 of the 3 writes from entry 0 on applied" "$T/out" &&
	same "$T/r" "$T/ov.t2"
ok $? "a failing torn check: exit $rc (want 1), reported, the device left in that state"

# With --keep-going the replay goes on from the whole run.
cp "$T/ov.init" "$T/r"
"$RL" --log "$T/ov.log" --replay "$T/r" --torn 2 --keep-going --check-cmd '[ "$REPLAY_TORN" != "1 3" ]' >"$T/out"
rc=$?
[ $rc -eq 1 ] && grep -q "2 of 2 check points checked, 0 failed; 2 torn states checked, 1 failed" "$T/out" &&
	same "$T/r" "$T/ov.end"
ok $? "--torn with --keep-going: exit $rc (want 1), every state checked, the replay completed"

echo "log-writes replay: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
