#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# side-by-side.sh - the per-I/O cost of mapping preallocated clusters, measured
# with raw and the target running at the same time (guest side).
#
# Run in a test VM with the module loaded (about 2 GiB of guest memory per
# target, for the null_blk devices):
#
#   tools/testing/vm/run-vm.sh --kver KVER --module build/KVER/dm-qcow2.ko \
#       --mem 6144 -- tools/bench/side-by-side.sh [ROUNDS]
#
# Each target of SBS_TARGETS (default "linear qcow2") gets a memory-backed
# null_blk device of its own; a qcow2 target maps a 1 GiB image with 64 KiB
# clusters and preallocated metadata, fully written, at the start of its
# device, dm-linear the 1 GiB after 1.5 GiB of its device.  One fio run per
# round and workload (4k random reads or writes, O_DIRECT, libaio, QD1 and
# QD32, SBS_SECONDS seconds, default 8) drives one job per target at once,
# and prints each job's IOPS and its ratio to the first target's, then the
# median of each ratio over the rounds.  The targets move to the next
# device each round, so that a device's own speed does not favour one of
# them.
#
# Why at the same time: on the 2-CPU TCG hosts this project runs on, the
# rate of one run moves by 15% or more from one minute to the next, which
# hides differences of a few percent between runs made one after the other.
# Jobs that run together share the moment (its host load) and the guest's
# CPUs, so their ratio says what each costs per I/O.  Another target name
# (a build of the module renamed, loaded next to this one) in SBS_TARGETS
# compares two builds the same way.  A diagnostic, not a test: it asserts
# nothing.
set -u

rounds=${1:-4}
read -r -a targets <<< "${SBS_TARGETS:-linear qcow2}"
n=${#targets[@]}
secs=${SBS_SECONDS:-8}
G=$((1 << 21))	# sectors per GiB

rmmod null_blk 2>/dev/null
modprobe null_blk nr_devices="$n" gb=3 bs=512 memory_backed=1 || exit 1
udevadm settle 2>/dev/null

cleanup() { local t; for t in $(seq 0 $((n > 2 ? n - 1 : 1))); do dmsetup remove "sbs$t" 2>/dev/null; done; }
trap cleanup EXIT

# Every device gets the image and the linear region written, so that they
# are alike whichever target lands on them.
for d in $(seq 0 $((n - 1))); do
	dev=/dev/nullb$d
	qemu-img create -q -f qcow2 -o cluster_size=65536,preallocation=metadata "$dev" 1G || exit 1
	dmsetup create sbs0 --table "0 $G qcow2 $dev" || exit 1
	dmsetup create sbs1 --table "0 $G linear $dev $((3 * G / 2))" || exit 1
	for m in sbs0 sbs1; do
		fio --name=fill --filename=/dev/mapper/$m --direct=1 --ioengine=libaio \
			--rw=write --bs=1M --iodepth=4 --size=1G --output-format=terse >/dev/null || exit 1
	done
	cleanup
done

: > /tmp/sbs.rounds
for rw in randread randwrite; do
	for qd in 1 32; do
		for r in $(seq 1 "$rounds"); do
			jobs=()
			for t in $(seq 0 $((n - 1))); do
				dev=/dev/nullb$(((t + r) % n))
				if [ "${targets[t]}" = linear ]; then
					table="0 $G linear $dev $((3 * G / 2))"
				else
					table="0 $G ${targets[t]} $dev"
				fi
				dmsetup create "sbs$t" --table "$table" || exit 1
				jobs+=(--name="j$t" --filename="/dev/mapper/sbs$t")
			done
			fio --direct=1 --ioengine=libaio --bs=4k --size=1G --norandommap \
				--randrepeat=0 --rw="$rw" --iodepth="$qd" --time_based \
				--runtime="$secs" --output-format=terse --terse-version=3 \
				"${jobs[@]}" > /tmp/sbs.fio || exit 1
			# terse v3: field 3 job name, 8 read IOPS, 49 write IOPS
			awk -F';' -v h="$rw 4k QD$qd round $r:" -v names="${targets[*]}" '
				{ v[substr($3, 2)] = $8 + $49 }
				END {
					k = split(names, nm, " ")
					line = h
					for (i = 1; i <= k; i++)
						line = line sprintf(" %s %d", nm[i], v[i - 1])
					for (i = 2; i <= k; i++)
						line = line sprintf(" %s/%s %.3f", nm[i], nm[1],
								    v[0] ? v[i - 1] / v[0] : 0)
					print line
				}' /tmp/sbs.fio | tee -a /tmp/sbs.rounds
			cleanup
		done
	done
done

echo "medians over $rounds rounds:"
awk '{
	w = $1 " " $2 " " $3
	if (!(w in seen)) { seen[w] = 1; order[++nw] = w }
	for (i = 6; i <= NF; i++)
		if ($i ~ /\//) { k = w SUBSEP $i; if (!(k in cnt)) rat[w, ++nr[w]] = $i; val[k, ++cnt[k]] = $(i + 1) }
}
END {
	for (o = 1; o <= nw; o++) {
		w = order[o]; line = "  " w ":"
		for (j = 1; j <= nr[w]; j++) {
			k = w SUBSEP rat[w, j]; c = cnt[k]
			for (a = 1; a <= c; a++) x[a] = val[k, a]
			for (a = 2; a <= c; a++)
				for (b = a; b > 1 && x[b - 1] > x[b]; b--) { t = x[b]; x[b] = x[b - 1]; x[b - 1] = t }
			m = c % 2 ? x[(c + 1) / 2] : (x[c / 2] + x[c / 2 + 1]) / 2
			line = line sprintf(" %s %.3f (%.3f-%.3f)", rat[w, j], m, x[1], x[c])
		}
		print line
	}
}' /tmp/sbs.rounds
