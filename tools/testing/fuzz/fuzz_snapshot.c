// SPDX-License-Identifier: GPL-2.0
/*
 * Fuzz target: snapshot table entries.
 *
 * Input: a config byte (FZ_CFG_*), a cluster_bits selector, an 8-byte
 * big-endian device size, then a snapshot table.  Entries are parsed one
 * after the other from buffers that end exactly where the input ends, and
 * checked against the raw fields: the entry length, where the strings are,
 * the disk size from the extra data, and that a buffer one byte short of
 * the entry asks for more data (-ENODATA) instead of reading past it.
 */
#include "fuzz-common.h"

#define HDR	((u32)sizeof(struct qcow2_snapshot_header))
#define MAX_ENTRIES	64

static u64 get_be(const u8 *p, unsigned int bytes)
{
	u64 v = 0;

	while (bytes--)
		v = (v << 8) | *p++;
	return v;
}

/* Parse from an exact-size copy of @len bytes. */
static int parse(const struct qcow2_info *qi, const u8 *p, size_t len,
		 u64 dev_size, struct qcow2_snapshot_info *si, u8 **copy,
		 const char **err)
{
	*copy = fz_dup(p, len);
	*err = NULL;
	return qcow2_parse_snapshot(qi, *copy, len, dev_size, si, err);
}

int LLVMFuzzerTestOneInput(const u8 *data, size_t size)
{
	struct fz_in in = { .p = data, .len = size };
	struct qcow2_snapshot_info si, si2;
	struct qcow2_info qi;
	u8 cfg = fz_u8(&in), cb_sel = fz_u8(&in);
	u64 dev_size = fz_be(&in, 8);
	const u8 *table;
	size_t len, pos = 0;
	unsigned int n;

	if (!fz_make_info(cfg, cb_sel, &qi))
		return 0;
	table = fz_rest(&in, &len);

	for (n = 0; n < MAX_ENTRIES && pos <= len; n++) {
		const u8 *p = table + pos;
		size_t avail = len - pos;
		const char *err;
		u32 extra, need;
		u8 *buf, *buf2;
		int r, r2;

		r = parse(&qi, p, avail, dev_size, &si, &buf, &err);
		if (avail < HDR) {
			CHECK(r == -ENODATA);
			free(buf);
			break;
		}
		extra = (u32)get_be(p + 36, 4);
		need = HDR + extra + (u32)get_be(p + 12, 2) + (u32)get_be(p + 14, 2);
		if (r == -ENODATA) {
			CHECK(extra <= QCOW2_MAX_SNAPSHOT_EXTRA && avail < need);
			free(buf);
			break;
		}
		if (r < 0) {
			CHECK(r == -EINVAL && err);
			free(buf);
			break;
		}
		CHECK(extra <= QCOW2_MAX_SNAPSHOT_EXTRA);
		CHECK(qi.version < 3 || extra >= 16);
		CHECK(need <= avail);
		CHECK((u32)r == si.entry_len && si.entry_len == ((need + 7) & ~7U));
		CHECK(si.l1_table_offset == get_be(p, 8));
		CHECK(si.l1_size == get_be(p + 8, 4));
		CHECK(si.id == (const char *)buf + HDR + extra);
		CHECK(si.id_len == get_be(p + 12, 2) && si.name_len == get_be(p + 14, 2));
		CHECK(si.name == si.id + si.id_len);
		CHECK(!memcmp(si.id, p + HDR + extra, si.id_len));
		CHECK(!memcmp(si.name, p + HDR + extra + si.id_len, si.name_len));
		CHECK(si.disk_size == (extra >= 16 ? get_be(p + HDR + 8, 8) : 0));
		CHECK((u64)si.l1_size << 3 <= QCOW2_MAX_L1_BYTES);
		CHECK(!(si.l1_table_offset & (qi.cluster_size - 1)));
		if (si.l1_size)
			CHECK(si.l1_table_offset && si.l1_table_offset <= dev_size);
		free(buf);

		/* One byte short of the entry: more data needed, no over-read. */
		r2 = parse(&qi, p, need - 1, dev_size, &si2, &buf2, &err);
		CHECK(r2 == -ENODATA);
		free(buf2);

		pos += si.entry_len;
	}
	return 0;
}
