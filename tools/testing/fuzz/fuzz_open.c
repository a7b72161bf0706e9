// SPDX-License-Identifier: GPL-2.0
/*
 * Fuzz target: opening an image the way dm-qcow2-target.c does.
 *
 * Input: an 8-byte big-endian device size, then the first bytes of the
 * device.  Bytes past the input and past the device size read as zero, like
 * the module's __qcow2_read().  The target peeks at the first sector,
 * parses the header cluster, reads the backing file name, walks the
 * snapshot table and each L1 table (the active one and the snapshots'),
 * classifies the entries of the L2 tables it points to the way the mapping
 * code does, and reads the refcount table and blocks the way the write path
 * does.  Every buffer is allocated at exactly the length handed to the
 * parser, so AddressSanitizer catches any read past it.
 *
 * Built with -DFUZZ_HEADER_ONLY this is fuzz_header: the same input, but
 * only the header is parsed, so short inputs (the header cluster alone)
 * let the fuzzer concentrate on header fields and extensions.
 */
#include "fuzz-common.h"

#define SECTOR_SIZE		512
#define PAGE_SHIFT		12
/* Work limits per input, to keep executions fast. */
#define MAX_L1_WALK		4096
#define MAX_L2_ENTRIES		16384
#define MAX_SNAPSHOTS_WALK	256
#define MAX_SNAPSHOT_L1_WALK	4
#define MAX_REFTABLE_WALK	256
#define MAX_REFCOUNTS		65536
#define SNAPSHOT_WINDOW		1024	/* the module uses 128 KiB */

struct dev {
	const u8 *data;
	u64 data_len;		/* bytes of the input past the size field */
	u64 size;		/* device size */
	u64 l2_budget;
};

/* __qcow2_read(): zero-fill past the device (and past the input). */
static void dev_read(const struct dev *d, u64 off, void *buf, size_t len)
{
	u64 end = d->size < d->data_len ? d->size : d->data_len;

	memset(buf, 0, len);
	if (off >= end)
		return;
	if (len > end - off)
		len = end - off;
	memcpy(buf, d->data + off, len);
}

/* Everything at and past @off reads as zero. */
static bool dev_zero_from(const struct dev *d, u64 off)
{
	return off >= d->data_len || off >= d->size;
}

static void check_info(const struct dev *d, const struct qcow2_info *qi)
{
	u64 cs = qi->cluster_size;

	CHECK(qi->version == 2 || qi->version == 3);
	CHECK(qi->cluster_bits >= QCOW2_MIN_CLUSTER_BITS &&
	      qi->cluster_bits <= QCOW2_MAX_CLUSTER_BITS);
	CHECK(cs == 1ULL << qi->cluster_bits);
	CHECK(qi->crypt_method == QCOW2_CRYPT_NONE);
	CHECK(!(qi->incompatible_features & ~QCOW2_INCOMPAT_KNOWN));
	CHECK(qi->refcount_order <= QCOW2_MAX_REFCOUNT_ORDER);
	CHECK(qi->compression_type == QCOW2_COMPRESSION_DEFLATE ||
	      qi->compression_type == QCOW2_COMPRESSION_ZSTD);
	CHECK(qi->extended_l2 == !!(qi->incompatible_features & QCOW2_INCOMPAT_EXTL2));
	CHECK(!qi->extended_l2 || qi->cluster_bits >= QCOW2_MIN_EXT_L2_CLUSTER_BITS);
	CHECK(qi->l2_entry_shift == (qi->extended_l2 ? 4U : 3U));
	CHECK(qi->l2_bits + qi->l2_entry_shift == qi->cluster_bits);
	CHECK(qi->subcluster_bits == (qi->extended_l2 ? qi->cluster_bits - 5 :
				      qi->cluster_bits));
	CHECK(qi->csize_shift + (qi->cluster_bits - 8) == 62);
	CHECK(qi->header_length >= QCOW2_V2_HEADER_LENGTH && qi->header_length <= cs);
	CHECK(qi->ext_end <= cs && qi->ext_end >= qi->header_length);

	/* The L1 table maps the whole virtual disk and is in range. */
	CHECK((u64)qi->l1_size << 3 <= QCOW2_MAX_L1_BYTES);
	CHECK(qi->l1_needed <= qi->l1_size);
	CHECK(qi->l1_needed ? ((qi->size - 1) >> (qi->cluster_bits + qi->l2_bits)) <
			      qi->l1_needed : !qi->size);
	CHECK(!(qi->l1_table_offset & (cs - 1)));
	if (qi->l1_size)
		CHECK(qi->l1_table_offset && qi->l1_table_offset <= d->size);
	CHECK(qi->refcount_table_clusters);
	CHECK((u64)qi->refcount_table_clusters << qi->cluster_bits <=
	      QCOW2_MAX_REFTABLE_BYTES);
	CHECK(!(qi->refcount_table_offset & (cs - 1)));
	CHECK(qi->refcount_table_offset && qi->refcount_table_offset <= d->size);
	CHECK(qi->nb_snapshots <= QCOW2_MAX_SNAPSHOTS);
	CHECK(!(qi->snapshots_offset & (cs - 1)));
	if (qi->nb_snapshots)
		CHECK(qi->snapshots_offset && qi->snapshots_offset <= d->size);

	if (qi->backing_file_offset) {
		CHECK(qi->backing_file_offset >= qi->header_length);
		CHECK(qi->backing_file_offset + qi->backing_file_size <= cs);
		CHECK(qi->backing_file_size <= QCOW2_MAX_BACKING_NAME);
	} else {
		CHECK(!qi->backing_file_size);
	}
	if (qi->has_backing_fmt)
		CHECK(strlen(qi->backing_fmt) <= QCOW2_MAX_BACKING_FMT);
	CHECK(!qi->has_crypto_ext);
}

static void check_backing_name(const struct qcow2_info *qi, const u8 *hdr,
			       size_t len)
{
	char name[QCOW2_MAX_BACKING_NAME + 1];
	char *small;
	int r;

	r = qcow2_backing_name(qi, hdr, len, name, sizeof(name));
	CHECK(r >= 0 && (size_t)r == strlen(name));
	CHECK((u32)r <= qi->backing_file_size);
	if (!qi->backing_file_offset) {
		CHECK(r == 0);
		return;
	}
	/* Exactly-sized buffers: one byte short fails, the right size fits. */
	small = malloc(qi->backing_file_size + 1);
	CHECK(small);
	CHECK(qcow2_backing_name(qi, hdr, len, small, qi->backing_file_size) ==
	      -ENAMETOOLONG);
	CHECK(qcow2_backing_name(qi, hdr, len, small, qi->backing_file_size + 1) == r);
	CHECK(!strcmp(small, name));
	free(small);
}

/* One L2 entry, classified subcluster run by subcluster run (dm-qcow2-map.c). */
static void check_l2_entry(const struct dev *d, const struct qcow2_info *qi,
			   const struct qcow2_l2_entry *l2e)
{
	unsigned int sc = 0, nsc = qi->extended_l2 ? QCOW2_SUBCLUSTERS : 1;
	struct qcow2_compressed c;
	const char *err;
	s64 host;

	while (sc < nsc) {
		enum qcow2_cluster_type t;
		unsigned int run;

		err = NULL;
		t = qcow2_l2_type(qi, l2e, sc, &err);
		CHECK(t <= QCOW2_CL_INVALID);
		if (t == QCOW2_CL_INVALID)
			CHECK(err);
		if (t == QCOW2_CL_NORMAL || t == QCOW2_CL_ZERO_ALLOC) {
			err = NULL;
			host = qcow2_l2_host_offset(qi, l2e, d->size, &err);
			if (host < 0) {
				CHECK(host == -EINVAL && err);
			} else {
				CHECK(!(host & (qi->cluster_size - 1)));
				CHECK((u64)host < d->size);
				CHECK(host >= (s64)qi->cluster_size);
			}
		}
		if (t == QCOW2_CL_COMPRESSED) {
			err = NULL;
			if (qcow2_decode_compressed(qi, l2e->entry, d->size, &c, &err)) {
				CHECK(err);
			} else {
				CHECK(c.offset >= qi->cluster_size && c.offset < d->size);
				CHECK(c.nb_sectors >= 1 &&
				      c.nb_sectors <= 1ULL << (qi->cluster_bits - 8));
			}
		}
		run = qcow2_subcluster_run(qi, l2e, sc);
		CHECK(run >= 1 && run <= nsc - sc);
		sc += run;
	}
}

/* Read one L2 table slice by slice and classify its entries. */
static void walk_l2(struct dev *d, const struct qcow2_info *qi, u64 l2_off)
{
	u32 slice_bits = qi->cluster_bits < PAGE_SHIFT ? qi->cluster_bits : PAGE_SHIFT;
	u32 per_slice = 1U << (slice_bits - qi->l2_entry_shift);
	u32 slices = 1U << (qi->cluster_bits - slice_bits);
	struct qcow2_l2_entry l2e, back;
	u8 *slice = malloc(1U << slice_bits);
	u8 *copy = malloc(1U << slice_bits);
	u32 s, i;

	CHECK(slice && copy);
	for (s = 0; s < slices && d->l2_budget; s++) {
		u64 off = l2_off + ((u64)s << slice_bits);

		if (dev_zero_from(d, off))
			break;
		dev_read(d, off, slice, 1U << slice_bits);
		for (i = 0; i < per_slice && d->l2_budget; i++, d->l2_budget--) {
			qcow2_l2_entry_load(qi, slice, i, &l2e);
			check_l2_entry(d, qi, &l2e);
			/* Storing what was loaded gives back the same bytes. */
			memset(copy, 0xa5, 1U << slice_bits);
			qcow2_l2_entry_store(qi, copy, i, &l2e);
			qcow2_l2_entry_load(qi, copy, i, &back);
			CHECK(back.entry == l2e.entry && back.bitmap == l2e.bitmap);
			CHECK(!memcmp(copy + ((size_t)i << qi->l2_entry_shift),
				      slice + ((size_t)i << qi->l2_entry_shift),
				      1U << qi->l2_entry_shift));
		}
	}
	free(copy);
	free(slice);
}

/* qcow2_load_l1() and the lookups of dm-qcow2-map.c on every entry. */
static void walk_l1(struct dev *d, const struct qcow2_info *qi, u64 off,
		    u32 entries)
{
	const char *err;
	__be64 *l1;
	u32 i, n = entries < MAX_L1_WALK ? entries : MAX_L1_WALK;

	if (!n)
		return;
	l1 = malloc((size_t)n * sizeof(*l1));
	CHECK(l1);
	dev_read(d, off, l1, (size_t)n * sizeof(*l1));
	for (i = 0; i < n; i++) {
		u64 l1e = be64_to_cpu(l1[i]);
		s64 l2;

		err = NULL;
		l2 = qcow2_l1_entry_l2_offset(qi, l1e, d->size, &err);
		if (l2 < 0) {
			CHECK(l2 == -EINVAL && err);
			continue;
		}
		CHECK((u64)l2 == (l1e & QCOW2_L1E_OFFSET_MASK));
		if (!l2)
			continue;
		CHECK(!(l2 & (qi->cluster_size - 1)) && (u64)l2 < d->size);
		walk_l2(d, qi, l2);
	}
	free(l1);
}

/* Not static: the compiler must keep the loads that feed it. */
u8 fz_sink;

static void touch(const char *p, size_t len)
{
	while (len--)
		fz_sink += (u8)*p++;
}

/* qcow2_open_snapshot(), looking at every entry instead of one id. */
static void walk_snapshots(struct dev *d, const struct qcow2_info *qi)
{
	const size_t max_entry = sizeof(struct qcow2_snapshot_header) +
				 QCOW2_MAX_SNAPSHOT_EXTRA + 2 * 65535 + 8;
	u64 off = qi->snapshots_offset;
	struct qcow2_snapshot_info si;
	const char *err;
	u32 n;
	int r;

	for (n = 0; n < qi->nb_snapshots && n < MAX_SNAPSHOTS_WALK; n++) {
		size_t len = SNAPSHOT_WINDOW;
		u8 *buf;

		if (off - qi->snapshots_offset >= QCOW2_MAX_SNAPSHOT_TABLE)
			return;
		for (;;) {
			buf = malloc(len);
			CHECK(buf);
			dev_read(d, off, buf, len);
			err = NULL;
			r = qcow2_parse_snapshot(qi, buf, len, d->size, &si, &err);
			if (r != -ENODATA || len == max_entry)
				break;
			free(buf);
			len = max_entry;
		}
		/* The largest possible entry always fits in max_entry bytes. */
		CHECK(r != -ENODATA);
		if (r < 0) {
			CHECK(r == -EINVAL && err);
			free(buf);
			return;
		}
		CHECK((u32)r == si.entry_len && !(si.entry_len & 7));
		CHECK(si.entry_len >= sizeof(struct qcow2_snapshot_header));
		CHECK(si.entry_len <= max_entry);
		CHECK((const u8 *)si.id >= buf && si.name == si.id + si.id_len);
		CHECK((const u8 *)si.name + si.name_len <= buf + len);
		CHECK((u64)si.l1_size << 3 <= QCOW2_MAX_L1_BYTES);
		CHECK(!(si.l1_table_offset & (qi->cluster_size - 1)));
		if (si.l1_size)
			CHECK(si.l1_table_offset && si.l1_table_offset <= d->size);
		/* Touch the strings: ASan checks they are inside the buffer. */
		touch(si.id, si.id_len);
		touch(si.name, si.name_len);
		free(buf);
		if (n < MAX_SNAPSHOT_L1_WALK)
			walk_l1(d, qi, si.l1_table_offset, si.l1_size);
		off += si.entry_len;
		if (dev_zero_from(d, off) && n >= MAX_SNAPSHOT_L1_WALK)
			return;	/* only zero entries follow */
	}
}

/* qcow2_open_writable() and qcow2_refcount_slice() of the write path. */
static void walk_refcounts(struct dev *d, const struct qcow2_info *qi)
{
	u64 bytes = (u64)qi->refcount_table_clusters << qi->cluster_bits;
	u64 n = bytes / sizeof(u64), i, j;
	u32 order = qi->refcount_order;
	u32 slice_bits = qi->cluster_bits < PAGE_SHIFT ? qi->cluster_bits : PAGE_SHIFT;
	u32 slice_entries_bits = slice_bits + 3 - order;
	u64 max = order == 6 ? ~0ULL : (1ULL << (1U << order)) - 1;
	u64 budget = MAX_REFCOUNTS;
	__be64 *rt;
	u8 *slice;

	if (n > MAX_REFTABLE_WALK)
		n = MAX_REFTABLE_WALK;
	rt = malloc(n * sizeof(*rt));
	slice = malloc(1U << slice_bits);
	CHECK(rt && slice);
	dev_read(d, qi->refcount_table_offset, rt, n * sizeof(*rt));
	for (i = 0; i < n && budget; i++) {
		u64 e = be64_to_cpu(rt[i]), rb = e & QCOW2_REFT_OFFSET_MASK;

		if (!rb || (rb & (qi->cluster_size - 1)) ||
		    rb + qi->cluster_size > d->size || (e & QCOW2_REFT_RESERVED_MASK))
			continue;
		if (dev_zero_from(d, rb))
			continue;
		dev_read(d, rb, slice, 1U << slice_bits);
		if (budget < 1ULL << slice_entries_bits)
			break;
		budget -= 1ULL << slice_entries_bits;
		for (j = 0; j < 1ULL << slice_entries_bits; j++) {
			u64 v = qcow2_refcount_get(slice, order, j);

			CHECK(v <= max);
			qcow2_refcount_set(slice, order, j, v);
		}
		/* Writing back what was read changes nothing. */
		CHECK(rb + (1U << slice_bits) > d->data_len ||
		      !memcmp(slice, d->data + rb, 1U << slice_bits));
	}
	free(slice);
	free(rt);
}

int LLVMFuzzerTestOneInput(const u8 *data, size_t size)
{
	struct fz_in in = { .p = data, .len = size };
	struct qcow2_info qi;
	struct dev d;
	const char *err = NULL;
	size_t rest;
	u8 *sector, *hdr;
	size_t len;
	u32 cb = 0;
	int r;

	if (size < 8)
		return 0;
	d.size = fz_be(&in, 8);
	d.data = fz_rest(&in, &rest);
	d.data_len = rest;
	d.l2_budget = MAX_L2_ENTRIES;

	/* qcow2setup peeks at what it could read: maybe fewer than 24 bytes. */
	len = rest < 32 ? rest : 32;
	hdr = fz_dup(d.data, len);
	r = qcow2_peek_cluster_bits(hdr, len, &cb, &err);
	CHECK(r == 0 || (r == -EINVAL && err));
	CHECK(len >= 24 || r);
	free(hdr);

	/* qcow2_open_header(): learn the cluster size from the first sector. */
	sector = malloc(SECTOR_SIZE);
	CHECK(sector);
	dev_read(&d, 0, sector, SECTOR_SIZE);
	r = qcow2_peek_cluster_bits(sector, SECTOR_SIZE, &cb, &err);
	free(sector);
	if (r) {
		CHECK(r == -EINVAL && err);
		return 0;
	}
	CHECK(cb >= QCOW2_MIN_CLUSTER_BITS && cb <= QCOW2_MAX_CLUSTER_BITS);

	len = d.size < (1ULL << cb) ? d.size : (1ULL << cb);
	hdr = malloc(len ? len : 1);
	CHECK(hdr);
	dev_read(&d, 0, hdr, len);
	err = NULL;
	r = qcow2_parse_header(hdr, len, d.size, &qi, &err);
	if (r) {
		CHECK(err);
		CHECK(r == -EINVAL || r == -EOPNOTSUPP || r == -EFBIG);
		free(hdr);
		return 0;
	}
	CHECK(qi.cluster_bits == cb);
	check_info(&d, &qi);
	check_backing_name(&qi, hdr, len);
	free(hdr);
#ifdef FUZZ_HEADER_ONLY
	return 0;
#endif
	/* The module refuses external data files after parsing. */
	if (qi.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
		return 0;

	walk_snapshots(&d, &qi);
	walk_l1(&d, &qi, qi.l1_table_offset, qi.l1_size);
	walk_refcounts(&d, &qi);
	return 0;
}
