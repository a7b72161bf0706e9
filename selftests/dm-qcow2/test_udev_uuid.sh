#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_udev_uuid.sh - the device-mapper UUIDs qcow2setup gives its devices
# ("QCOW2-<16 hex>-NAME", qcow2setup(8)) and the udev rules in
# tools/udev/60-dm-qcow2.rules.
#
# The rules file is installed into /run/udev/rules.d for the test (removed
# at exit) and udevd is told to reload.  Checked:
#   - the UUID has the form QCOW2-<16 lower-case hex digits>-NAME;
#   - /dev/disk/by-id/dm-qcow2-NAME points at the device, the device has the
#     DM_QCOW2_NAME=NAME property, and dmsetup's own dm-uuid-<UUID> link
#     exists; a "change" event keeps the link;
#   - qcow2setup list shows the device; the link goes away after close;
#   - the same image opened again under the same name (by a relative path)
#     gets the same UUID, another image under that name another UUID;
#   - a qcow2 device made by hand with dmsetup (no UUID): qcow2setup list
#     ignores it, status works, close refuses it without --force and removes
#     it with --force, and udev makes no dm-qcow2-NAME link for it.
#
# Needs root, the module, udevd (run-vm.sh starts it), qemu-img and the tool
# built on the host (tools/qcow2setup/qcow2setup, or $QCOW2SETUP).

# shellcheck disable=SC2016,SC2034 # eval-ed subtest bodies use the variables
. "$(dirname "$0")/test_common.sh"

TOP=$(cd "$(dirname "$0")/../.." && pwd)
Q2S=${QCOW2SETUP:-$TOP/tools/qcow2setup/qcow2setup}
RULES=${QCOW2_UDEV_RULES:-$TOP/tools/udev/60-dm-qcow2.rules}
[ -x "$Q2S" ] || _skip "qcow2setup is not built ($Q2S): run 'make -C tools/qcow2setup' on the host"
[ -r "$RULES" ] || _skip "no udev rules file $RULES"
_require_root
_require_cmd qemu-img dmsetup losetup udevadm readlink
_require_module
udevadm control --ping >/dev/null 2>&1 || _skip "udevd is not running"

WORK=$(_scratch_dir)
[ -d "$WORK" ] || _fail "no scratch directory"
P="q2su$$"			# prefix of every device name made here
A=${P}a				# the name qcow2setup maps under
H=${P}h				# the hand-made device
RULES_COPY=/run/udev/rules.d/60-dm-qcow2.rules

_udev_cleanup()
{
	local n
	for n in $(dmsetup ls 2>/dev/null | awk -v p="$P" 'index($1, p) == 1 { print $1 }'); do
		"$Q2S" close --force "$n" >/dev/null 2>&1 || dmsetup remove --retry "$n" >/dev/null 2>&1
	done
	if [ -n "${RULES_INSTALLED:-}" ]; then
		rm -f "$RULES_COPY"
		udevadm control --reload >/dev/null 2>&1
	fi
	return 0
}
_on_exit _udev_cleanup

[ -e "$RULES_COPY" ] && _skip "$RULES_COPY exists already (not touching it)"
mkdir -p /run/udev/rules.d || _fail "cannot create /run/udev/rules.d"
cp "$RULES" "$RULES_COPY" || _fail "cannot install $RULES_COPY"
RULES_INSTALLED=1
udevadm control --reload || _fail "udevadm control --reload failed"

qemu-img create -q -f qcow2 "$WORK/a.qcow2" 64M || _fail "qemu-img create failed"
qemu-img create -q -f qcow2 "$WORK/b.qcow2" 64M || _fail "qemu-img create failed"

_uuid()
{
	dmsetup info -c --noheadings -o uuid "$1" 2>/dev/null
}

# _t DESC CMD...: one subtest; CMD's status decides.
_t()
{
	local desc=$1
	shift
	if "$@"; then
		ktap_ok "udev_uuid: $desc"
	else
		ktap_fail "udev_uuid: $desc"
	fi
}

_same_node()
{
	local a b
	a=$(readlink -f "$1")
	b=$(readlink -f "$2")
	if [ -b "$a" ] && [ "$a" = "$b" ]; then
		return 0
	fi
	_diag "$1 -> ${a:-?}, $2 -> ${b:-?}"
	return 1
}

_uuid_form()
{
	[[ $1 =~ ^QCOW2-[0-9a-f]{16}-$2$ ]] || { _diag "uuid '$1'"; return 1; }
}

_has_prop()
{
	udevadm info --query=property --name="$1" 2>/dev/null | grep -qx "$2" || {
		_diag "no $2 in the udev properties of $1:" \
			"$(udevadm info --query=property --name="$1" 2>&1 | grep -E '^(DM_|ID_)' | head -12)"
		return 1
	}
}

_listed()
{
	"$Q2S" list 2>/dev/null | grep -q "^$1 "
}

_open()
{
	"$Q2S" open "$@" >/dev/null && udevadm settle
}

_close()
{
	"$Q2S" close "$@" && udevadm settle
}

ktap_header
ktap_plan 15

# 1-6: a device opened by qcow2setup
if _open "$WORK/a.qcow2" "$A"; then
	U1=$(_uuid "$A")
	_diag "uuid $U1"
	_t "uuid is QCOW2-<16 hex>-NAME" _uuid_form "$U1" "$A"
	_t "by-id/dm-qcow2-NAME link" _same_node "/dev/disk/by-id/dm-qcow2-$A" "/dev/mapper/$A"
	_t "DM_QCOW2_NAME property" _has_prop "/dev/mapper/$A" "DM_QCOW2_NAME=$A"
	_t "dmsetup's by-id/dm-uuid link" test -L "/dev/disk/by-id/dm-uuid-$U1"
	udevadm trigger --action=change --settle "/dev/mapper/$A" 2>/dev/null ||
		{ udevadm trigger --action=change "/dev/mapper/$A"; udevadm settle; }
	_t "link kept after a change event" _same_node "/dev/disk/by-id/dm-qcow2-$A" "/dev/mapper/$A"
	_t "qcow2setup list shows it" _listed "$A"
	_close "$A" || _diag "close $A failed"
else
	U1=""
	for d in "uuid is QCOW2-<16 hex>-NAME" "by-id/dm-qcow2-NAME link" "DM_QCOW2_NAME property" \
		 "dmsetup's by-id/dm-uuid link" "link kept after a change event" "qcow2setup list shows it"; do
		ktap_fail "udev_uuid: $d (open failed)"
	done
fi

# 7: close removes the links
_t "links gone after close" eval '[ ! -e "/dev/disk/by-id/dm-qcow2-$A" ] && { [ -z "$U1" ] || [ ! -e "/dev/disk/by-id/dm-uuid-$U1" ]; }'

# 8: same image, same name, relative path -> same UUID
U2=""
if (cd "$WORK" && "$Q2S" open a.qcow2 "$A" >/dev/null); then
	U2=$(_uuid "$A")
	_close "$A" || _diag "close $A failed"
fi
_t "same image and name (relative path): same uuid" eval '[ -n "$U1" ] && [ "$U1" = "$U2" ]'

# 9: another image under the same name -> another UUID
U3=""
if _open "$WORK/b.qcow2" "$A"; then
	U3=$(_uuid "$A")
	_close "$A" || _diag "close $A failed"
fi
_diag "uuid of b.qcow2: $U3"
_t "another image, same name: another uuid" eval '_uuid_form "$U3" "$A" && [ "$U3" != "$U1" ]'

# 10-15: a qcow2 device made by hand (no UUID)
if loop=$(_loop_attach "$WORK/a.qcow2" -r) &&
   _dm_create "$H" "0 $((64 << 11)) qcow2 $loop" ro; then
	udevadm settle
	_t "hand-made device has no uuid" eval '[ -z "$(_uuid "$H")" ]'
	_t "qcow2setup list ignores it" eval '! _listed "$H"'
	_t "qcow2setup status works for it" eval '"$Q2S" status "$H" >/dev/null'
	_t "no dm-qcow2 link for it" test ! -e "/dev/disk/by-id/dm-qcow2-$H"
	_t "close refuses it without --force" eval '! "$Q2S" close "$H" 2>/dev/null && dmsetup info "$H" >/dev/null 2>&1'
	_t "close --force removes it" eval '"$Q2S" close --force "$H" && ! dmsetup info "$H" >/dev/null 2>&1'
else
	for d in "hand-made device has no uuid" "qcow2setup list ignores it" "qcow2setup status works for it" \
		 "no dm-qcow2 link for it" "close refuses it without --force" "close --force removes it"; do
		ktap_fail "udev_uuid: $d (could not make the device)"
	done
fi

_check_dmesg_clean || _diag "(kernel log above)"
ktap_finish
