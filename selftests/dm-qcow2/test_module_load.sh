#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_module_load.sh - dm-qcow2 loads, registers its target, unloads,
# reloads, and is autoloaded by device-mapper.
#
#  1. modprobe dm-qcow2 loads the module
#  2. `dmsetup targets` lists "qcow2 vX.Y.Z"
#  3. modinfo reports a GPL license (and the kernel is not tainted
#     proprietary)
#  4. rmmod unloads it
#  5. modprobe loads it again
#  6. after rmmod, `dmsetup create` with target qcow2 autoloads the module
#     (dm core's request_module("dm-qcow2")); the create itself may fail, as
#     the table has no arguments
#
# Needs no device in use by the module: run it before other tests leave
# anything mapped.

. "$(dirname "$0")/test_common.sh"

set -u

MOD=${DM_QCOW2_MODULE}
SYSMOD=/sys/module/${MOD//-/_}
TARGET=${DM_QCOW2_TARGET}

_require_root
_require_cmd dmsetup modprobe modinfo rmmod
_require_module

_loaded()
{
	[ -d "${SYSMOD}" ]
}

_unload()
{
	local out

	_loaded || return 0
	if ! out=$(rmmod "${MOD}" 2>&1); then
		_diag "rmmod ${MOD}: ${out}"
		[ -r "${SYSMOD}/refcnt" ] && _diag "refcnt: $(cat "${SYSMOD}/refcnt")"
		_diag "dm devices:" "$(dmsetup table 2>&1)"
		return 1
	fi
	! _loaded
}

ktap_header
ktap_plan 6

# 1
modprobe "${MOD}" && _loaded
ktap_result $? "modprobe ${MOD}"

# 2
line=$(dmsetup targets | grep "^${TARGET} ")
_diag "dmsetup targets: ${line}"
[[ "${line}" =~ ^${TARGET}[[:space:]]+v[0-9]+\.[0-9]+\.[0-9]+$ ]]
ktap_result $? "dmsetup targets lists ${TARGET} with a version vX.Y.Z"

# 3
license=$(modinfo -F license "${MOD}" 2>&1)
_diag "license: ${license}"
rc=0
case "${license}" in
"GPL"|"GPL v2") ;;
*) rc=1 ;;
esac
tainted=$(cat /proc/sys/kernel/tainted)
if [ $((tainted & 1)) -ne 0 ]; then
	_diag "kernel tainted with P (proprietary module): ${tainted}"
	rc=1
fi
ktap_result "${rc}" "modinfo ${MOD}: license GPL"

# 4
_unload
ktap_result $? "rmmod ${MOD}"

# 5
modprobe "${MOD}" && _loaded && dmsetup targets | grep -q "^${TARGET} "
ktap_result $? "modprobe ${MOD} again"

# 6
if _unload; then
	_dmesg_mark
	name=dmq2t-autoload-$$
	if _dm_create "${name}" "0 8 ${TARGET}" ro >/dev/null 2>&1; then
		_diag "note: the table without arguments was accepted"
		_dm_remove "${name}"
	fi
	rc=0
	_loaded || { _diag "${MOD} was not autoloaded"; rc=1; }
	_diag "modprobe helper: $(cat /proc/sys/kernel/modprobe)"
	ktap_result "${rc}" "dmsetup create with target ${TARGET} autoloads ${MOD}"
else
	ktap_fail "dmsetup create with target ${TARGET} autoloads ${MOD} (could not unload first)"
fi

# Leave the module loaded for the tests that follow.
modprobe "${MOD}"

_check_dmesg_clean || _diag "kernel log not clean"
ktap_finish
