#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_bad_table.sh - malformed qcow2 tables are refused with a specific
# reason.
#
# Each table below must fail `dmsetup create` and the kernel log must show dm
# core's line "device-mapper: table: <dev>: qcow2: <reason>" with a reason
# matching the pattern, plus "error adding target to table"; no kernel report.
# Tables are loaded read-only (this version of the target refuses
# read-write), over a valid qcow2 image so that only the tested part is wrong.
#
# Table grammar (Documentation/admin-guide/device-mapper/qcow2.rst):
#   <start> <len> qcow2 <image_dev> [<#opt_args> <opt_arg>...]
#
# The expected reasons are extended regular expressions matched case-
# insensitively against the text after "qcow2: ".  They are loose for now;
# tighten them to the exact ti->error strings once those settle.

. "$(dirname "$0")/test_common.sh"

set -u

ERR_NO_ARGS='argument'
ERR_NO_DEVICE='device|lookup'
ERR_UNKNOWN_OPT='unknown|unrecogni[sz]ed|invalid|argument|option|feature'
ERR_OPT_COUNT='argument|count|option|number'

# dm core's generic line for a failed ctr (drivers/md/dm-ioctl.c).
DM_CORE_ERR='error adding target to table'

_require_root
_require_cmd dmsetup losetup qemu-img truncate
_require_module

scratch=$(_scratch_dir) || _fail "no scratch directory"
img=${scratch}/good.qcow2
qemu-img create -q -f qcow2 "${img}" 64M || _fail "qemu-img create failed"
truncate -s %512 "${img}"
dev=$(_loop_attach "${img}" --read-only) || _fail "cannot attach ${img}"
len=$((64 * 1024 * 1024 / 512))

# description | table | expected reason (ERE)
CASES=(
	"no arguments|0 ${len} qcow2|${ERR_NO_ARGS}"
	"nonexistent image device|0 ${len} qcow2 /dev/nonexistent-dm-qcow2-test|${ERR_NO_DEVICE}"
	"unknown optional argument|0 ${len} qcow2 ${dev} 1 no_such_option|${ERR_UNKNOWN_OPT}"
	"optional argument count larger than the arguments|0 ${len} qcow2 ${dev} 3 cache_size 1048576|${ERR_OPT_COUNT}"
	"optional argument missing its value|0 ${len} qcow2 ${dev} 1 cache_size|${ERR_OPT_COUNT}"
)

ktap_header
ktap_plan ${#CASES[@]}

i=0
for c in "${CASES[@]}"; do
	i=$((i + 1))
	IFS='|' read -r desc table pat <<<"${c}"
	name=dmq2t-bad-$$-${i}
	rc=0
	_dmesg_mark
	if out=$(_dm_create "${name}" "${table}" ro 2>&1); then
		_diag "table was accepted: ${table}"
		_dm_remove "${name}"
		rc=1
	else
		_diag "table: ${table}" "dmsetup: ${out}"
		# A specific reason: "qcow2: " followed by non-blank text matching pat.
		_dmesg_expect -i "qcow2: [^[:space:]].*(${pat})" || rc=1
		_dmesg_expect "${DM_CORE_ERR}" || rc=1
		_dmesg_since_mark | grep -E 'qcow2: ' | sed 's/^/# kernel: /'
	fi
	_check_dmesg_clean || rc=1
	ktap_result "${rc}" "refused: ${desc}"
done

ktap_finish
