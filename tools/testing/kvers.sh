#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Print the kernels `make check` uses: the newest installed Debian 6.1 and
# 6.12 builds that have both an image in /boot and a build tree.
for series in 6.1 6.12; do
	for d in /lib/modules/"$series".*; do
		v=${d##*/}
		case "$v" in *-rt-*|*-cloud-*) continue ;; esac
		[ -e "/boot/vmlinuz-$v" ] && [ -d "$d/build" ] && echo "$v"
	done | sort -V | tail -n 1
done | tr '\n' ' '
echo
