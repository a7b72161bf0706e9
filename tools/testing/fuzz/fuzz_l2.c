// SPDX-License-Identifier: GPL-2.0
/*
 * Fuzz target: L1 entries, L2 entries (standard and extended) and
 * compressed-cluster descriptors.
 *
 * Input: a config byte (FZ_CFG_* in fuzz-common.h: extended L2, version 2,
 * external data file, zstd), a cluster_bits selector, an 8-byte big-endian
 * device size, then an L2 table (8- or 16-byte big-endian entries).  Each
 * entry is also tried as an L1 entry.  The target calls what the mapping
 * and write paths call for each entry and checks the results against each
 * other: types per subcluster, runs, host offsets, decoded compressed
 * descriptors (which must encode back to the entry) and load/store.
 */
#include "fuzz-common.h"

#define MAX_ENTRIES	256	/* per input, to keep executions fast */

static bool is_host_type(enum qcow2_cluster_type t)
{
	return t == QCOW2_CL_NORMAL || t == QCOW2_CL_ZERO_ALLOC ||
	       t == QCOW2_CL_UNALLOCATED_ALLOC;
}

static void check_l1(const struct qcow2_info *qi, u64 l1e, u64 dev_size)
{
	const char *err = NULL;
	s64 r = qcow2_l1_entry_l2_offset(qi, l1e, dev_size, &err);

	if (r < 0) {
		CHECK(r == -EINVAL && err);
		return;
	}
	CHECK(!(l1e & QCOW2_L1E_RESERVED_MASK));
	CHECK((u64)r == (l1e & QCOW2_L1E_OFFSET_MASK));
	if (r)
		CHECK(!(r & (qi->cluster_size - 1)) && (u64)r < dev_size);
}

static void check_entry(const struct qcow2_info *qi,
			const struct qcow2_l2_entry *l2e, u64 dev_size)
{
	unsigned int nsc = qi->extended_l2 ? QCOW2_SUBCLUSTERS : 1;
	bool data_file = qi->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
	enum qcow2_cluster_type t[QCOW2_SUBCLUSTERS];
	u64 e = l2e->entry, off = e & QCOW2_L2E_OFFSET_MASK;
	u64 desc = e & ~(QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED);
	struct qcow2_compressed c;
	const char *err;
	unsigned int sc, run, prev;
	s64 host;
	int r;

	for (sc = 0; sc < nsc; sc++) {
		err = NULL;
		t[sc] = qcow2_l2_type(qi, l2e, sc, &err);
		CHECK(t[sc] <= QCOW2_CL_INVALID);
		if (t[sc] == QCOW2_CL_INVALID)
			CHECK(err);
		if (t[sc] == QCOW2_CL_COMPRESSED)
			CHECK(e & QCOW2_OFLAG_COMPRESSED);
		if (is_host_type(t[sc]))
			CHECK(off || ((e & QCOW2_OFLAG_COPIED) && data_file));
		if (t[sc] == QCOW2_CL_UNALLOCATED_ALLOC)
			CHECK(qi->extended_l2);
		if (qi->version < 3)
			CHECK(t[sc] != QCOW2_CL_ZERO_PLAIN && t[sc] != QCOW2_CL_ZERO_ALLOC);
		if (qi->extended_l2 && t[sc] == QCOW2_CL_NORMAL)
			CHECK(l2e->bitmap & (1ULL << sc));
		if (qi->extended_l2 && (t[sc] == QCOW2_CL_ZERO_PLAIN ||
					t[sc] == QCOW2_CL_ZERO_ALLOC))
			CHECK(l2e->bitmap & (1ULL << (32 + sc)));
		/* Validity and compression are properties of the whole entry. */
		if (sc) {
			CHECK((t[sc] == QCOW2_CL_INVALID) == (t[0] == QCOW2_CL_INVALID));
			CHECK((t[sc] == QCOW2_CL_COMPRESSED) == (t[0] == QCOW2_CL_COMPRESSED));
		}
	}
	/*
	 * Standard entries ignore @sc; extended ones refuse sc >= 32 unless
	 * the entry is compressed (a whole-cluster type).
	 */
	err = NULL;
	if (qi->extended_l2) {
		enum qcow2_cluster_type tx = qcow2_l2_type(qi, l2e, QCOW2_SUBCLUSTERS, &err);

		if (t[0] == QCOW2_CL_COMPRESSED)
			CHECK(tx == QCOW2_CL_COMPRESSED);
		else
			CHECK(tx == QCOW2_CL_INVALID && err);
		CHECK(qcow2_subcluster_run(qi, l2e, QCOW2_SUBCLUSTERS) == 0);
	} else {
		CHECK(qcow2_l2_type(qi, l2e, 7, &err) == t[0]);
	}

	/*
	 * Runs: a run starting one subcluster later is one shorter and of the
	 * same type; a run of one is followed by a different type.
	 */
	for (sc = 0, prev = 0; sc < nsc; sc++, prev = run) {
		run = qcow2_subcluster_run(qi, l2e, sc);
		CHECK(run >= 1 && run <= nsc - sc);
		if (prev > 1)
			CHECK(run == prev - 1 && t[sc] == t[sc - 1]);
		if (prev == 1)
			CHECK(t[sc] != t[sc - 1]);
	}

	/* Host offsets: only of well-formed entries, always in range. */
	err = NULL;
	host = qcow2_l2_host_offset(qi, l2e, dev_size, &err);
	if (host < 0) {
		CHECK(host == -EINVAL && err);
	} else {
		CHECK((u64)host == off);
		CHECK(!(e & QCOW2_OFLAG_COMPRESSED));
		CHECK(!(host & (qi->cluster_size - 1)) && (u64)host < dev_size);
		CHECK(host || data_file);
		CHECK(t[0] != QCOW2_CL_INVALID || qi->extended_l2 ||
		      (e & QCOW2_OFLAG_ZERO && qi->version < 3));
	}
	if (!data_file) {
		for (sc = 0; sc < nsc; sc++)
			if (t[sc] == QCOW2_CL_NORMAL || t[sc] == QCOW2_CL_ZERO_ALLOC)
				CHECK(host >= 0 || off >= dev_size ||
				      (off & (qi->cluster_size - 1)));
	}

	/* Compressed descriptors decode and encode back to the same bits. */
	err = NULL;
	r = qcow2_decode_compressed(qi, e, dev_size, &c, &err);
	if (r) {
		CHECK(r == -EINVAL && err);
	} else {
		CHECK((((c.nb_sectors - 1) << qi->csize_shift) | c.offset) == desc);
		CHECK(c.nb_sectors >= 1 &&
		      c.nb_sectors <= 1ULL << (qi->cluster_bits - 8));
		CHECK(c.offset >= qi->cluster_size && c.offset < dev_size);
		CHECK(!data_file);
	}
	if (t[0] == QCOW2_CL_COMPRESSED)
		CHECK(!data_file && !(e & QCOW2_OFLAG_COPIED));
}

int LLVMFuzzerTestOneInput(const u8 *data, size_t size)
{
	struct fz_in in = { .p = data, .len = size };
	struct qcow2_info qi;
	struct qcow2_l2_entry l2e, back;
	u8 cfg = fz_u8(&in), cb_sel = fz_u8(&in);
	u64 dev_size = fz_be(&in, 8);
	const u8 *rest;
	size_t len, n, i, esz;
	u8 *table, *copy;

	if (!fz_make_info(cfg, cb_sel, &qi))
		return 0;
	esz = 1U << qi.l2_entry_shift;
	rest = fz_rest(&in, &len);
	n = len / esz;
	if (n > MAX_ENTRIES)
		n = MAX_ENTRIES;
	if (n > 1U << qi.l2_bits)
		n = 1U << qi.l2_bits;
	if (!n)
		return 0;
	/* Exactly n entries: a load or store past the end is caught. */
	table = fz_dup(rest, n * esz);
	copy = malloc(n * esz);
	CHECK(copy);
	memset(copy, 0, n * esz);
	for (i = 0; i < n; i++) {
		qcow2_l2_entry_load(&qi, table, i, &l2e);
		check_l1(&qi, l2e.entry, dev_size);
		check_entry(&qi, &l2e, dev_size);
		qcow2_l2_entry_store(&qi, copy, i, &l2e);
		qcow2_l2_entry_load(&qi, copy, i, &back);
		CHECK(back.entry == l2e.entry && back.bitmap == l2e.bitmap);
	}
	CHECK(!memcmp(copy, table, n * esz));
	free(copy);
	free(table);
	return 0;
}
