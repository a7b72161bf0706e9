# SPDX-License-Identifier: GPL-2.0
#
# Sourced by the check scripts: add the counts of a summary line
# ("...: N passed, N failed[, N skipped]") to $pass, $fail and $skip.
pass=${pass:-0}
fail=${fail:-0}
skip=${skip:-0}

add_counts() {
	local line=$1 p f s
	p=$(sed -n 's/^\(.* \)\{0,1\}\([0-9][0-9]*\) passed.*/\2/p' <<<"$line")
	f=$(sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p' <<<"$line")
	s=$(sed -n 's/.* \([0-9][0-9]*\) skipped.*/\1/p' <<<"$line")
	pass=$((pass + ${p:-0}))
	fail=$((fail + ${f:-0}))
	skip=$((skip + ${s:-0}))
}

# The last summary line of a log file.
summary_line() {
	grep -E '[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1
}
