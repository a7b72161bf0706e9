#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Print the path of checkpatch.pl, extracting it (with its data files) from
# Debian's linux-source-6.12 package into a cache on first use (~10 s).
set -eu

cache=${XDG_CACHE_HOME:-$HOME/.cache}/dm-qcow2/checkpatch
if [ ! -x "$cache/scripts/checkpatch.pl" ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download linux-source-6.12 >/dev/null 2>&1) || {
		echo "get-checkpatch: cannot download linux-source-6.12" >&2
		exit 1
	}
	mkdir -p "$cache"
	dpkg-deb --fsys-tarfile "$tmp"/linux-source-6.12_*.deb |
		tar -xO ./usr/src/linux-source-6.12.tar.xz | xz -dc |
		tar -x -C "$tmp" --strip-components=1 --wildcards \
			'linux-source-6.12/scripts/checkpatch.pl' \
			'linux-source-6.12/scripts/spelling.txt' \
			'linux-source-6.12/scripts/const_structs.checkpatch'
	mkdir -p "$cache/scripts"
	cp "$tmp"/scripts/* "$cache/scripts/"
	chmod +x "$cache/scripts/checkpatch.pl"
fi
echo "$cache/scripts/checkpatch.pl"
