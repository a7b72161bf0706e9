#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_linear_fio.sh - dm-linear over the first spare disk, checked with fio.
#
# Not a dm-qcow2 test: it proves the plumbing the data-path tests rely on
# (spare virtio disk from run-vm.sh --disk, dm device creation with udev, fio
# with O_DIRECT and verification).
#
#  1. dm-linear over $(_disk 1) is created and /dev/mapper/NAME appears
#  2. fio: JOBS jobs, each on its own region (offset_increment), O_DIRECT
#     random writes with crc32c verification headers, verified after writing
#  3. fio: a verify-only pass reading everything back
#  4. the same bytes are read directly from the disk (identity mapping)
#  5. the device is removed

. "$(dirname "$0")/test_common.sh"

set -u

JOBS=4
REGION=$((32 * 1024 * 1024))	# bytes per job
BS=4k

_require_root
_require_cmd dmsetup fio blockdev cmp
_require_dm_target linear
disk=$(_disk 1) || exit

sectors=$(blockdev --getsz "${disk}")
[ "${sectors}" -ge $((JOBS * REGION / 512)) ] ||
	_skip "${disk} is smaller than $((JOBS * REGION / 1048576)) MiB"

name=dmq2t-linear-$$
dev=/dev/mapper/${name}
scratch=$(_scratch_dir) || _fail "no scratch directory"

# _fio PASS [fio options]: both passes must describe the same jobs, so that
# the verify-only pass regenerates the offsets the write pass used
# (randrepeat is the default).  The full fio output is shown on failure.
_fio()
{
	local pass=$1 log=${scratch}/fio-$1.log rc

	shift
	(cd "${scratch}" && fio --name="${pass}" --output-format=normal \
		--filename="${dev}" --direct=1 --ioengine=libaio --iodepth=16 \
		--rw=randwrite --bs="${BS}" --size="${REGION}" \
		--offset_increment="${REGION}" --numjobs="${JOBS}" \
		--verify=crc32c --verify_fatal=1 --verify_state_save=0 \
		--group_reporting "$@") >"${log}" 2>&1
	rc=$?
	if [ "${rc}" -ne 0 ]; then
		_diag "fio ${pass} failed (exit ${rc}):"
		tail -n 40 "${log}" | sed 's/^/# fio: /'
	else
		grep -E '^ *(read|write): |err=' "${log}" | sed 's/^ */# fio: /'
	fi
	return "${rc}"
}

ktap_header
ktap_plan 5

_dmesg_mark

# 1
rc=0
_dm_create "${name}" "0 ${sectors} linear ${disk} 0" || rc=1
[ "${rc}" -eq 0 ] && { [ -b "${dev}" ] || { _diag "${dev} missing"; rc=1; }; }
ktap_result "${rc}" "dm-linear over ${disk} (${sectors} sectors)"
if [ "${rc}" -ne 0 ]; then
	ktap_skip "fio write+verify" "no device"
	ktap_skip "fio verify-only" "no device"
	ktap_skip "read back from ${disk}" "no device"
	ktap_skip "remove" "no device"
	ktap_finish
fi

# 2
_fio write
ktap_result $? "fio: ${JOBS} jobs of O_DIRECT randwrite with crc32c verify"

# 3
_fio verify --verify_only
ktap_result $? "fio: verify-only pass"

# 4
cmp -n $((JOBS * REGION)) "${dev}" "${disk}"
ktap_result $? "the disk holds the same $((JOBS * REGION / 1048576)) MiB"

# 5
rc=0
_dm_remove "${name}" || rc=1
[ -e "${dev}" ] && { _diag "${dev} still exists"; rc=1; }
_check_dmesg_clean || rc=1
ktap_result "${rc}" "remove ${name}, kernel log clean"

ktap_finish
