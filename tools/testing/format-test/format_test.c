// SPDX-License-Identifier: GPL-2.0
/*
 * Userspace unit tests for drivers/md/dm-qcow2/qcow2-format.c.
 *
 * The kernel source is included directly, so the code under test is exactly
 * what the module builds.  Part 1 feeds hand-built structures; part 2 (when
 * qemu-img and qemu-io are installed) checks the parser and the L1/L2
 * decoding against images written by QEMU and against what
 * `qemu-img info/map --output=json` reports about them.
 *
 * Output is TAP; the last line is "# format-test: N passed, N failed".
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef HAVE_ZLIB
#include <zlib.h>
#endif

#include "../../../drivers/md/dm-qcow2/qcow2-format.c"

#define ARRAY_LEN(a)	(sizeof(a) / sizeof((a)[0]))
#define MiB		(1ULL << 20)
#define GiB		(1ULL << 30)

/* ------------------------------------------------------------------ TAP */

static unsigned int n_tests, n_pass, n_fail;

static bool __attribute__((format(printf, 2, 3)))
ok(bool cond, const char *fmt, ...)
{
	va_list ap;

	n_tests++;
	if (cond)
		n_pass++;
	else
		n_fail++;
	printf("%sok %u - ", cond ? "" : "not ", n_tests);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	return cond;
}

static void __attribute__((format(printf, 1, 2))) diag(const char *fmt, ...)
{
	va_list ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

static bool contains(const char *s, const char *sub)
{
	return s && sub && strstr(s, sub);
}

static void put8(u8 *b, u64 off, u8 v) { b[off] = v; }

static void put16(u8 *b, u64 off, u16 v)
{
	b[off] = v >> 8;
	b[off + 1] = (u8)v;
}

static void put32(u8 *b, u64 off, u32 v)
{
	put16(b, off, v >> 16);
	put16(b, off + 2, (u16)v);
}

static void put64(u8 *b, u64 off, u64 v)
{
	put32(b, off, v >> 32);
	put32(b, off + 4, (u32)v);
}

static u64 get64(const u8 *b, u64 off)
{
	u64 v = 0;
	int i;

	for (i = 0; i < 8; i++)
		v = (v << 8) | b[off + i];
	return v;
}

static const char *type_name(enum qcow2_cluster_type t)
{
	static const char * const names[] = {
		[QCOW2_CL_UNALLOCATED] = "UNALLOCATED",
		[QCOW2_CL_ZERO_PLAIN] = "ZERO_PLAIN",
		[QCOW2_CL_ZERO_ALLOC] = "ZERO_ALLOC",
		[QCOW2_CL_NORMAL] = "NORMAL",
		[QCOW2_CL_COMPRESSED] = "COMPRESSED",
		[QCOW2_CL_UNALLOCATED_ALLOC] = "UNALLOCATED_ALLOC",
		[QCOW2_CL_INVALID] = "INVALID",
	};

	if ((unsigned int)t < ARRAY_LEN(names))
		return names[t];
	return "?";
}

/* ----------------------------------------------------- header building */

#define DEFAULT_SIZE	GiB

static u32 ref_l1_needed(u32 cb, bool extl2, u64 size)
{
	u64 per_l2 = (1ULL << cb) * ((1ULL << cb) / (extl2 ? 16 : 8));

	return (u32)((size + per_l2 - 1) / per_l2);
}

/*
 * A valid image layout: header, reftable at cluster 1 (refblock at 2),
 * L1 at cluster 3, v3 header_length 112 followed by an end marker.
 */
static void build_header(u8 *b, int version, u32 cb, bool extl2, u64 size)
{
	u64 cs = 1ULL << cb;

	memset(b, 0, cs);
	put32(b, 0, QCOW2_MAGIC);
	put32(b, 4, version);
	put32(b, 20, cb);
	put64(b, 24, size);
	put32(b, 36, ref_l1_needed(cb, extl2, size));
	put64(b, 40, 3 * cs);
	put64(b, 48, cs);
	put32(b, 56, 1);
	if (version >= 3) {
		put64(b, 72, extl2 ? QCOW2_INCOMPAT_EXTL2 : 0);
		put32(b, 96, 4);
		put32(b, 100, 112);
	}
}

struct poke {
	u16 off;
	u8 width;	/* 0 ends the list */
	u64 val;
};

struct hcase {
	const char *desc;
	int version;		/* 0: 3 */
	u32 cb;			/* 0: 16 */
	bool extl2;
	u64 size;		/* 0: DEFAULT_SIZE */
	bool empty;		/* virtual size 0 */
	u64 image_size;		/* 0: 4 clusters */
	size_t len;		/* 0: cluster size */
	struct poke pk[6];
	u16 str_off;		/* string written at str_off when str != NULL */
	const char *str;
	int rc;
	const char *msg;	/* expected substring of *err */
};

#define P1(o, v)	{ .off = (o), .width = 1, .val = (v) }
#define P4(o, v)	{ .off = (o), .width = 4, .val = (v) }
#define P8(o, v)	{ .off = (o), .width = 8, .val = (v) }

static const struct hcase header_cases[] = {
	/* accepted */
	{ "valid v3 64k", .rc = 0 },
	{ "valid v2 64k", .version = 2, .rc = 0 },
	{ "valid v3 512", .cb = 9, .rc = 0 },
	{ "valid v3 2M", .cb = 21, .rc = 0 },
	{ "valid v3 16k extended L2", .cb = 14, .extl2 = true, .rc = 0 },
	{ "short buffer reads as zero padded", .len = 112, .rc = 0 },
	{ "short buffer, v2", .version = 2, .len = 72, .rc = 0 },
	{ "L1 table starting exactly at end of device", .image_size = 3 << 16, .rc = 0 },
	{ "L1 table running past end of device", .image_size = (3 << 16) + 8, .rc = 0 },
	{ "empty disk: l1_size 0, L1 offset 0", .empty = true,
	  .pk = { P4(36, 0), P8(40, 0) }, .rc = 0 },
	{ "l1_size 0 may point past the device", .empty = true,
	  .pk = { P4(36, 0), P8(40, 100 << 16) }, .rc = 0 },
	{ "l1_size larger than needed", .pk = { P4(36, 1000) }, .rc = 0 },
	{ "snapshot table inside the device", .pk = { P4(60, 2), P8(64, 2 << 16) }, .rc = 0 },
	{ "dirty, corrupt and data-file bits accepted",
	  .pk = { P8(72, 7) }, .rc = 0 },
	{ "zstd with incompatible bit 3", .pk = { P8(72, 8), P1(104, 1) }, .rc = 0 },
	{ "lazy refcounts and unknown compatible bits",
	  .pk = { P8(80, 0xffffffffffffffffULL) }, .rc = 0 },
	{ "unknown autoclear bits", .pk = { P8(88, 0xfffffffffffffffdULL) }, .rc = 0 },
	{ "raw data file bit with data-file bit", .pk = { P8(72, 4), P8(88, 2) }, .rc = 0 },
	{ "refcount_order 0", .pk = { P4(96, 0) }, .rc = 0 },
	{ "refcount_order 6", .pk = { P4(96, 6) }, .rc = 0 },
	{ "v3 header_length 104 (compression byte absent)",
	  .pk = { P4(100, 104) }, .rc = 0 },
	{ "header_length == cluster size", .cb = 9, .pk = { P4(100, 512) }, .rc = 0 },
	{ "reftable of 128 clusters (8 MiB)", .pk = { P4(56, 128) }, .rc = 0 },
	{ "L1 of 32 MiB", .pk = { P4(36, 4 << 20) }, .rc = 0 },
	{ "65536 snapshots", .pk = { P4(60, 65536), P8(64, 2 << 16) }, .rc = 0 },
	{ "backing name of 1023 bytes", .pk = { P8(8, 0x1000), P4(16, 1023) }, .rc = 0 },
	{ "backing name filling the 512 byte cluster", .cb = 9,
	  .pk = { P8(8, 500), P4(16, 12) }, .rc = 0 },
	{ "backing name right after v2 header", .version = 2,
	  .pk = { P8(8, 72), P4(16, 4) }, .rc = 0 },
	{ "extension filling the area exactly",
	  .pk = { P4(112, 0x12345678), P4(116, 65536 - 120) }, .rc = 0 },
	{ "extension filling the area up to the backing name",
	  .pk = { P8(8, 0x200), P4(16, 4), P4(112, 0x12345678), P4(116, 0x200 - 120) },
	  .rc = 0 },
	{ "backing format of 15 bytes", .pk = { P4(112, QCOW2_EXT_BACKING_FORMAT), P4(116, 15) },
	  .str_off = 120, .str = "abcdefghijklmno", .rc = 0 },
	{ "feature name table", .pk = { P4(112, QCOW2_EXT_FEATURE_TABLE), P4(116, 384) },
	  .rc = 0 },
	{ "bitmaps extension", .pk = { P8(88, 1), P4(112, QCOW2_EXT_BITMAPS), P4(116, 24) },
	  .rc = 0 },
	{ "data file extension", .pk = { P8(72, 4), P4(112, QCOW2_EXT_DATA_FILE), P4(116, 9) },
	  .str_off = 120, .str = "/tmp/data", .rc = 0 },

	/* rejected */
	{ "bad magic", .pk = { P4(0, 0x514649fa) }, .rc = -EINVAL, .msg = "bad magic" },
	{ "version 1", .pk = { P4(4, 1) }, .rc = -EINVAL, .msg = "unsupported version" },
	{ "version 4", .pk = { P4(4, 4) }, .rc = -EINVAL, .msg = "unsupported version" },
	{ "version 0x10000", .pk = { P4(4, 0x10000) }, .rc = -EINVAL,
	  .msg = "unsupported version" },
	{ "cluster_bits 8", .pk = { P4(20, 8) }, .rc = -EINVAL,
	  .msg = "cluster_bits out of range 9..21" },
	{ "cluster_bits 22", .pk = { P4(20, 22) }, .rc = -EINVAL,
	  .msg = "cluster_bits out of range 9..21" },
	{ "cluster_bits 4096", .pk = { P4(20, 4096) }, .rc = -EINVAL,
	  .msg = "out of range 9..21" },
	{ "header_length 100", .pk = { P4(100, 100) }, .rc = -EINVAL,
	  .msg = "header_length smaller than 104" },
	{ "header_length > cluster size", .cb = 9, .pk = { P4(100, 520) }, .rc = -EINVAL,
	  .msg = "header_length larger than cluster size" },
	{ "AES encryption", .pk = { P4(32, 1) }, .rc = -EOPNOTSUPP,
	  .msg = "encrypted images are not supported" },
	{ "LUKS encryption", .pk = { P4(32, 2) }, .rc = -EOPNOTSUPP,
	  .msg = "encrypted images are not supported" },
	{ "unknown crypt_method", .pk = { P4(32, 3) }, .rc = -EOPNOTSUPP,
	  .msg = "encrypted images are not supported" },
	{ "unknown incompatible bit 5", .pk = { P8(72, 0x20) }, .rc = -EOPNOTSUPP,
	  .msg = "unknown incompatible feature bits" },
	{ "unknown incompatible bit 63", .pk = { P8(72, 1ULL << 63) }, .rc = -EOPNOTSUPP,
	  .msg = "unknown incompatible feature bits" },
	{ "several unknown incompatible bits", .pk = { P8(72, 0x60) }, .rc = -EOPNOTSUPP,
	  .msg = "unknown incompatible feature bits" },
	{ "compression_type 1 without bit 3", .pk = { P1(104, 1) }, .rc = -EINVAL,
	  .msg = "compression type set without incompatible bit 3" },
	{ "bit 3 with compression_type 0", .pk = { P8(72, 8) }, .rc = -EINVAL,
	  .msg = "incompatible bit 3 set with deflate compression type" },
	{ "unknown compression_type 2", .pk = { P8(72, 8), P1(104, 2) }, .rc = -EOPNOTSUPP,
	  .msg = "unknown compression type" },
	{ "extended L2 with 8k clusters", .cb = 13, .pk = { P8(72, 16) }, .rc = -EINVAL,
	  .msg = "extended L2 entries need cluster_bits >= 14" },
	{ "refcount_order 7", .pk = { P4(96, 7) }, .rc = -EINVAL,
	  .msg = "refcount_order out of range 0..6" },
	{ "refcount_order 1000", .pk = { P4(96, 1000) }, .rc = -EINVAL,
	  .msg = "refcount_order out of range 0..6" },
	{ "raw data file bit without data file", .pk = { P8(88, 2) }, .rc = -EINVAL,
	  .msg = "raw external data bit without external data file" },
	{ "backing offset beyond cluster", .pk = { P8(8, 65537), P4(16, 1) }, .rc = -EINVAL,
	  .msg = "backing file offset beyond header cluster" },
	{ "backing name 1024 bytes", .pk = { P8(8, 0x1000), P4(16, 1024) }, .rc = -EINVAL,
	  .msg = "backing file name too long" },
	{ "backing name past the header cluster", .cb = 9,
	  .pk = { P8(8, 500), P4(16, 13) }, .rc = -EINVAL, .msg = "backing file name too long" },
	{ "backing name inside the v3 header", .pk = { P8(8, 104), P4(16, 4) }, .rc = -EINVAL,
	  .msg = "backing file name overlaps header" },
	{ "backing name inside the v2 header", .version = 2, .pk = { P8(8, 64), P4(16, 4) },
	  .rc = -EINVAL, .msg = "backing file name overlaps header" },
	{ "refcount_table_clusters 0", .pk = { P4(56, 0) }, .rc = -EINVAL,
	  .msg = "refcount table is empty" },
	{ "reftable > 8 MiB", .pk = { P4(56, 129) }, .rc = -EFBIG,
	  .msg = "refcount table too large" },
	{ "L1 > 32 MiB", .pk = { P4(36, (4 << 20) + 1) }, .rc = -EFBIG,
	  .msg = "L1 table too large" },
	{ "L1 table too small", .size = 3 * 512 * MiB, .pk = { P4(36, 2) }, .rc = -EINVAL,
	  .msg = "L1 table is too small" },
	{ "L1 table too small by one byte of size", .size = GiB + 1, .pk = { P4(36, 2) },
	  .rc = -EINVAL, .msg = "L1 table is too small" },
	{ "size needing more than 2^32 L1 entries", .cb = 9, .size = 1ULL << 63,
	  .pk = { P4(36, 0) }, .rc = -EFBIG, .msg = "virtual size too large" },
	{ "size of 2^64-1", .cb = 9, .pk = { P8(24, ~0ULL), P4(36, 0) }, .rc = -EFBIG,
	  .msg = "virtual size too large" },
	{ "65537 snapshots", .pk = { P4(60, 65537), P8(64, 2 << 16) }, .rc = -EFBIG,
	  .msg = "too many snapshots" },
	{ "L1 offset not aligned", .pk = { P8(40, (3 << 16) + 512) }, .rc = -EINVAL,
	  .msg = "L1 table offset not cluster aligned" },
	{ "L1 offset not aligned, l1_size 0", .empty = true,
	  .pk = { P4(36, 0), P8(40, 512) }, .rc = -EINVAL,
	  .msg = "L1 table offset not cluster aligned" },
	{ "L1 offset 0", .pk = { P8(40, 0) }, .rc = -EINVAL, .msg = "L1 table offset is zero" },
	{ "L1 beyond end of device", .image_size = (3 << 16) - 1, .rc = -EINVAL,
	  .msg = "L1 table beyond end of device" },
	{ "L1 offset overflow", .pk = { P8(40, 0xffffffffffff0000ULL) }, .rc = -EINVAL,
	  .msg = "L1 table offset overflow" },
	{ "reftable offset not aligned", .pk = { P8(48, 0x10200) }, .rc = -EINVAL,
	  .msg = "refcount table offset not cluster aligned" },
	{ "reftable offset 0", .pk = { P8(48, 0) }, .rc = -EINVAL,
	  .msg = "refcount table offset is zero" },
	{ "reftable beyond end of device", .pk = { P8(48, 5 << 16) }, .rc = -EINVAL,
	  .msg = "refcount table beyond end of device" },
	{ "reftable offset overflow", .pk = { P8(48, 0x7fffffffffff0000ULL), P4(56, 2) },
	  .rc = -EINVAL, .msg = "refcount table offset overflow" },
	{ "snapshot table not aligned", .pk = { P4(60, 1), P8(64, 0x20008) }, .rc = -EINVAL,
	  .msg = "snapshot table offset not cluster aligned" },
	{ "snapshot table not aligned, no snapshots", .pk = { P8(64, 0x20008) },
	  .rc = -EINVAL, .msg = "snapshot table offset not cluster aligned" },
	{ "snapshot table offset 0", .pk = { P4(60, 1) }, .rc = -EINVAL,
	  .msg = "snapshot table offset is zero" },
	{ "snapshot table beyond end of device", .pk = { P4(60, 1), P8(64, 5 << 16) },
	  .rc = -EINVAL, .msg = "snapshot table beyond end of device" },
	{ "snapshot table offset overflow",
	  .pk = { P4(60, 1), P8(64, 0xffffffffffff0000ULL) }, .rc = -EINVAL,
	  .msg = "snapshot table offset overflow" },
	{ "extension one byte too large",
	  .pk = { P4(112, 0x12345678), P4(116, 65536 - 119) }, .rc = -EINVAL,
	  .msg = "header extension too large" },
	{ "extension running into the backing name",
	  .pk = { P8(8, 0x200), P4(16, 4), P4(112, 0x12345678), P4(116, 0x200 - 119) },
	  .rc = -EINVAL, .msg = "header extension too large" },
	{ "extension with len 0xffffffff",
	  .pk = { P4(112, 0x12345678), P4(116, 0xffffffff) }, .rc = -EINVAL,
	  .msg = "header extension too large" },
	{ "extension header cut by the area end", .pk = { P4(100, 65536 - 4), P4(65532, 1) },
	  .rc = -EINVAL, .msg = "header extension too large" },
	{ "backing format of 16 bytes", .pk = { P4(112, QCOW2_EXT_BACKING_FORMAT), P4(116, 16) },
	  .str_off = 120, .str = "abcdefghijklmnop", .rc = -EINVAL,
	  .msg = "backing format name too long" },
	{ "bitmaps extension of 16 bytes",
	  .pk = { P8(88, 1), P4(112, QCOW2_EXT_BITMAPS), P4(116, 16) }, .rc = -EINVAL,
	  .msg = "bitmaps extension has wrong length" },
	{ "crypto extension without encryption",
	  .pk = { P4(112, QCOW2_EXT_CRYPTO), P4(116, 16) }, .rc = -EINVAL,
	  .msg = "crypto header extension on unencrypted image" },
	{ "crypto extension of 8 bytes",
	  .pk = { P4(112, QCOW2_EXT_CRYPTO), P4(116, 8) }, .rc = -EINVAL,
	  .msg = "crypto header extension has wrong length" },
};

static int run_case(const struct hcase *c, struct qcow2_info *qi, const char **err, u8 *b)
{
	int version = c->version ? c->version : 3;
	u32 cb = c->cb ? c->cb : 16;
	u64 cs = 1ULL << cb;
	u64 size = c->empty ? 0 : c->size ? c->size : DEFAULT_SIZE;
	const struct poke *pk;

	build_header(b, version, cb, c->extl2, size);
	for (pk = c->pk; pk < c->pk + ARRAY_LEN(c->pk) && pk->width; pk++) {
		switch (pk->width) {
		case 1:
			put8(b, pk->off, (u8)pk->val);
			break;
		case 4:
			put32(b, pk->off, (u32)pk->val);
			break;
		default:
			put64(b, pk->off, pk->val);
			break;
		}
	}
	if (c->str)
		memcpy(b + c->str_off, c->str, strlen(c->str));
	*err = NULL;
	return qcow2_parse_header(b, c->len ? c->len : cs, c->image_size ? c->image_size : 4 * cs,
				  qi, err);
}

static void test_header_cases(void)
{
	u8 *b = malloc(2 * MiB);
	size_t i;

	for (i = 0; i < ARRAY_LEN(header_cases); i++) {
		const struct hcase *c = &header_cases[i];
		struct qcow2_info qi;
		const char *err;
		int rc = run_case(c, &qi, &err, b);
		bool good = rc == c->rc && (c->rc == 0 || contains(err, c->msg));

		if (!ok(good, "header: %s -> %d%s%s", c->desc, c->rc, c->msg ? " " : "",
			c->msg ? c->msg : ""))
			diag("got %d \"%s\"", rc, err ? err : "(none)");
	}
	free(b);
}

/* Details of accepted headers that the table above cannot express. */
static void test_header_details(void)
{
	u8 *b = malloc(2 * MiB);
	struct qcow2_info qi;
	const char *err = NULL;
	char name[64];
	int rc;

	/* v3 header_length 104: byte 104 belongs to the extension area. */
	build_header(b, 3, 16, false, GiB);
	put32(b, 100, 104);
	put8(b, 104, 1);
	rc = qcow2_parse_header(b, 65536, 4 << 16, &qi, &err);
	ok(rc == 0 && qi.compression_type == 0 && qi.nr_unknown_ext == 1,
	   "header: header_length 104 ignores byte 104 as compression_type");

	/* Sequence of extensions with padding, stop at the end marker. */
	build_header(b, 3, 16, false, GiB);
	put32(b, 112, QCOW2_EXT_BACKING_FORMAT);
	put32(b, 116, 3);
	memcpy(b + 120, "rawXXXXX", 8);	/* garbage padding */
	put32(b, 128, 0xdeadbeef);
	put32(b, 132, 5);
	put32(b, 144, QCOW2_EXT_DATA_FILE);
	put32(b, 148, 4);
	put32(b, 160, QCOW2_EXT_END);
	put32(b, 168, 0xcafe0001);	/* after the end marker: ignored */
	put32(b, 172, 0xffffffff);
	rc = qcow2_parse_header(b, 65536, 4 << 16, &qi, &err);
	ok(rc == 0 && qi.has_backing_fmt && !strcmp(qi.backing_fmt, "raw") &&
	   qi.nr_unknown_ext == 1 && qi.has_data_file_ext && !qi.has_bitmaps_ext &&
	   !qi.has_crypto_ext && qi.ext_end == 65536,
	   "header: extension walk with padding stops at the end marker");

	/* Backing file name. */
	build_header(b, 3, 16, false, GiB);
	put32(b, 112, QCOW2_EXT_BACKING_FORMAT);
	put32(b, 116, 5);
	memcpy(b + 120, "qcow2", 5);
	put64(b, 8, 0x210);
	put32(b, 16, 10);
	memcpy(b + 0x210, "base.qcow2", 10);
	rc = qcow2_parse_header(b, 65536, 4 << 16, &qi, &err);
	ok(rc == 0 && qi.ext_end == 0x210 && qi.backing_file_size == 10 &&
	   !strcmp(qi.backing_fmt, "qcow2"), "header: backing file fields");
	rc = qcow2_backing_name(&qi, b, 65536, name, sizeof(name));
	ok(rc == 10 && !strcmp(name, "base.qcow2"), "backing name: copied and terminated");
	rc = qcow2_backing_name(&qi, b, 65536, name, 10);
	ok(rc == -ENAMETOOLONG, "backing name: buffer too small -> -ENAMETOOLONG");
	rc = qcow2_backing_name(&qi, b, 0x215, name, sizeof(name));
	ok(rc == 5 && !strcmp(name, "base."), "backing name: bytes past the buffer read as zero");

	build_header(b, 3, 16, false, GiB);
	put32(b, 16, 77);	/* undefined without a backing file */
	rc = qcow2_parse_header(b, 65536, 4 << 16, &qi, &err);
	name[0] = 'x';
	ok(rc == 0 && qi.backing_file_size == 0 &&
	   qcow2_backing_name(&qi, b, 65536, name, sizeof(name)) == 0 && name[0] == 0,
	   "backing name: none when backing_file_offset is 0");

	/* v2 defaults. */
	build_header(b, 2, 12, false, 100 * MiB);
	put64(b, 72, ~0ULL);	/* not part of a v2 header: an extension */
	put32(b, 72, 0);
	put32(b, 76, 0);
	rc = qcow2_parse_header(b, 4096, 1 * MiB, &qi, &err);
	ok(rc == 0 && qi.version == 2 && qi.header_length == 72 && qi.refcount_order == 4 &&
	   qi.incompatible_features == 0 && qi.compatible_features == 0 &&
	   qi.compression_type == 0 && !qi.extended_l2 && qi.size == 100 * MiB,
	   "header: v2 implicit fields");
	free(b);
}

/* Derived quantities for every cluster size, standard and extended L2. */
static void test_derived(void)
{
	u8 *b = malloc(2 * MiB);
	u32 cb;
	int ext;

	for (cb = 9; cb <= 21; cb++) {
		bool good = true;

		for (ext = 0; ext <= (cb >= 14); ext++) {
			struct qcow2_info qi;
			const char *err = NULL;
			u64 cs = 1ULL << cb;
			u32 sh = ext ? 4 : 3;
			u64 size = 7 * (cs << (cb - sh)) + 512;	/* 8 L1 entries */
			int rc;

			build_header(b, 3, cb, ext, size);
			rc = qcow2_parse_header(b, cs, 4 * cs, &qi, &err);
			good &= rc == 0;
			good &= qi.cluster_bits == cb && qi.cluster_size == cs;
			good &= qi.extended_l2 == !!ext && qi.l2_entry_shift == sh;
			good &= qi.l2_bits == cb - sh;
			good &= qi.subcluster_bits == (ext ? cb - 5 : cb);
			good &= qi.csize_shift == 70 - cb;
			good &= qi.csize_mask == (1ULL << (cb - 8)) - 1;
			good &= qi.coffset_mask == (1ULL << (70 - cb)) - 1;
			good &= qi.l1_needed == 8 && qi.l1_needed == ref_l1_needed(cb, ext, size);
			good &= qi.l1_size == 8 && qi.refcount_order == 4;
			good &= qi.header_length == 112;
			good &= qi.ext_end == cs && qi.size == size;
			good &= qi.l1_table_offset == 3 * cs && qi.refcount_table_offset == cs;
			if (rc)
				diag("cb %u ext %d: %s", cb, ext, err);
		}
		ok(good, "derived fields for cluster_bits %u%s", cb,
		   cb >= 14 ? " (standard and extended L2)" : "");
	}
	free(b);
}

static void test_peek(void)
{
	u8 b[512];
	u32 cb = 0;
	const char *err = NULL;

	build_header(b, 3, 9, false, MiB);
	ok(qcow2_peek_cluster_bits(b, 512, &cb, &err) == 0 && cb == 9, "peek: valid 512");
	ok(qcow2_peek_cluster_bits(b, 24, &cb, &err) == 0 && cb == 9, "peek: 24 bytes suffice");
	ok(qcow2_peek_cluster_bits(b, 23, &cb, &err) == -EINVAL &&
	   contains(err, "header too short"), "peek: 23 bytes -> header too short");
	put32(b, 20, 21);
	ok(qcow2_peek_cluster_bits(b, 512, &cb, &err) == 0 && cb == 21, "peek: cluster_bits 21");
	put32(b, 20, 22);
	ok(qcow2_peek_cluster_bits(b, 512, &cb, &err) == -EINVAL &&
	   contains(err, "cluster_bits out of range 9..21"), "peek: cluster_bits 22");
	put32(b, 20, 16);
	put32(b, 4, 2);
	ok(qcow2_peek_cluster_bits(b, 512, &cb, &err) == 0 && cb == 16, "peek: v2");
	put32(b, 4, 4);
	ok(qcow2_peek_cluster_bits(b, 512, &cb, &err) == -EINVAL &&
	   contains(err, "unsupported version"), "peek: version 4");
	put32(b, 4, 3);
	put32(b, 0, 0x7f454c46);
	ok(qcow2_peek_cluster_bits(b, 512, &cb, &err) == -EINVAL && contains(err, "bad magic"),
	   "peek: bad magic");
}

/* ------------------------------------------------------- L1/L2 entries */

static struct qcow2_info make_qi(int version, u32 cb, bool extl2, bool data_file)
{
	u8 *b = malloc(1ULL << cb);
	struct qcow2_info qi;
	const char *err = NULL;
	int rc;

	build_header(b, version, cb, extl2, GiB);
	if (data_file)
		put64(b, 72, get64(b, 72) | QCOW2_INCOMPAT_DATA_FILE);
	rc = qcow2_parse_header(b, 1ULL << cb, 4ULL << cb, &qi, &err);
	if (rc) {
		diag("make_qi: %s", err);
		abort();
	}
	free(b);
	return qi;
}

enum { Q_V2, Q_V3, Q_V3_DF, Q_EXT, Q_EXT_DF, Q_NR };
static const char * const qi_names[] = {
	"v2", "v3", "v3+data file", "ext L2", "ext L2+data file"
};

struct l2case {
	int q;
	u64 entry;
	u64 bitmap;
	unsigned int sc;
	enum qcow2_cluster_type type;
	const char *msg;
};

#define CP	QCOW2_OFLAG_COPIED
#define CM	QCOW2_OFLAG_COMPRESSED

static const struct l2case l2_cases[] = {
	{ Q_V3, 0, 0, 0, QCOW2_CL_UNALLOCATED, NULL },
	{ Q_V3, 1, 0, 0, QCOW2_CL_ZERO_PLAIN, NULL },
	{ Q_V3, CP | 1, 0, 0, QCOW2_CL_ZERO_PLAIN, NULL },
	{ Q_V3, 0x50001, 0, 0, QCOW2_CL_ZERO_ALLOC, NULL },
	{ Q_V3, CP | 0x50001, 0, 0, QCOW2_CL_ZERO_ALLOC, NULL },
	{ Q_V3, CP | 0x50000, 0, 0, QCOW2_CL_NORMAL, NULL },
	{ Q_V3, 0x50000, 0, 0, QCOW2_CL_NORMAL, NULL },
	{ Q_V3, 0x00fffffffffe0000ULL, 0, 0, QCOW2_CL_NORMAL, NULL },
	{ Q_V3, 0x50200, 0, 0, QCOW2_CL_NORMAL, NULL },	/* alignment: host_offset's job */
	{ Q_V3, CP, 0, 0, QCOW2_CL_INVALID, "COPIED flag on unallocated cluster" },
	{ Q_V3, 0x50002, 0, 0, QCOW2_CL_INVALID, "reserved bits" },
	{ Q_V3, 0x50100, 0, 0, QCOW2_CL_INVALID, "reserved bits" },
	{ Q_V3, (1ULL << 56) | 0x50000, 0, 0, QCOW2_CL_INVALID, "reserved bits" },
	{ Q_V3, (1ULL << 61) | 0x50000, 0, 0, QCOW2_CL_INVALID, "reserved bits" },
	{ Q_V3, (1ULL << 58), 0, 0, QCOW2_CL_INVALID, "reserved bits" },
	{ Q_V3, CM | 0x59d03, 0, 0, QCOW2_CL_COMPRESSED, NULL },
	{ Q_V3, CM | (79ULL << 54) | 0x59d03, 0, 0, QCOW2_CL_COMPRESSED, NULL },
	{ Q_V3, CM | 0x3fffffffffffffffULL, 0, 0, QCOW2_CL_COMPRESSED, NULL },
	{ Q_V3, CM | CP | 0x59d03, 0, 0, QCOW2_CL_INVALID, "compressed cluster with COPIED" },
	{ Q_V2, 0, 0, 0, QCOW2_CL_UNALLOCATED, NULL },
	{ Q_V2, CP | 0x50000, 0, 0, QCOW2_CL_NORMAL, NULL },
	{ Q_V2, CM | 0x50000, 0, 0, QCOW2_CL_COMPRESSED, NULL },
	{ Q_V2, 1, 0, 0, QCOW2_CL_INVALID, "zero flag in a version 2 image" },
	{ Q_V2, CP | 0x50001, 0, 0, QCOW2_CL_INVALID, "zero flag in a version 2 image" },
	{ Q_V2, CP, 0, 0, QCOW2_CL_INVALID, "COPIED flag on unallocated cluster" },
	{ Q_V3_DF, 0, 0, 0, QCOW2_CL_UNALLOCATED, NULL },
	{ Q_V3_DF, CP, 0, 0, QCOW2_CL_NORMAL, NULL },
	{ Q_V3_DF, CP | 0x10000, 0, 0, QCOW2_CL_NORMAL, NULL },
	{ Q_V3_DF, 1, 0, 0, QCOW2_CL_ZERO_PLAIN, NULL },
	{ Q_V3_DF, CP | 0x10001, 0, 0, QCOW2_CL_ZERO_ALLOC, NULL },
	{ Q_V3_DF, CM | 0x59d03, 0, 0, QCOW2_CL_INVALID,
	  "compressed cluster with external data file" },
	{ Q_EXT, 0, 0, 0, QCOW2_CL_UNALLOCATED, NULL },
	{ Q_EXT, 0, 0, 31, QCOW2_CL_UNALLOCATED, NULL },
	{ Q_EXT, 0, 0x300000000ULL, 0, QCOW2_CL_ZERO_PLAIN, NULL },
	{ Q_EXT, 0, 0x300000000ULL, 1, QCOW2_CL_ZERO_PLAIN, NULL },
	{ Q_EXT, 0, 0x300000000ULL, 2, QCOW2_CL_UNALLOCATED, NULL },
	{ Q_EXT, 0, QCOW2_L2_BITMAP_ALL_ZEROES, 31, QCOW2_CL_ZERO_PLAIN, NULL },
	{ Q_EXT, 0, 1, 5, QCOW2_CL_INVALID, "allocated subclusters without host offset" },
	{ Q_EXT, 0, 0x80000000ULL, 0, QCOW2_CL_INVALID,
	  "allocated subclusters without host offset" },
	{ Q_EXT, CP, 0, 0, QCOW2_CL_INVALID, "COPIED flag on unallocated cluster" },
	{ Q_EXT, 1, 0, 0, QCOW2_CL_INVALID, "reserved bits" },	/* no zero flag */
	{ Q_EXT, CP | 0x50001, 0, 0, QCOW2_CL_INVALID, "reserved bits" },
	{ Q_EXT, CP | 0x50000 | (1ULL << 57), 1, 0, QCOW2_CL_INVALID, "reserved bits" },
	{ Q_EXT, CP | 0x50000, 0x9, 0, QCOW2_CL_NORMAL, NULL },
	{ Q_EXT, CP | 0x50000, 0x9, 1, QCOW2_CL_UNALLOCATED_ALLOC, NULL },
	{ Q_EXT, CP | 0x50000, 0x9, 2, QCOW2_CL_UNALLOCATED_ALLOC, NULL },
	{ Q_EXT, CP | 0x50000, 0x9, 3, QCOW2_CL_NORMAL, NULL },
	{ Q_EXT, CP | 0x50000, 0x9, 31, QCOW2_CL_UNALLOCATED_ALLOC, NULL },
	{ Q_EXT, 0x50000, 0x000000f0ffffff0fULL, 0, QCOW2_CL_NORMAL, NULL },
	{ Q_EXT, 0x50000, 0x000000f0ffffff0fULL, 4, QCOW2_CL_ZERO_ALLOC, NULL },
	{ Q_EXT, 0x50000, 0x000000f0ffffff0fULL, 7, QCOW2_CL_ZERO_ALLOC, NULL },
	{ Q_EXT, 0x50000, 0x000000f0ffffff0fULL, 8, QCOW2_CL_NORMAL, NULL },
	{ Q_EXT, 0x50000, 0x000000f0ffffff0fULL, 31, QCOW2_CL_NORMAL, NULL },
	{ Q_EXT, CP | 0x50000, QCOW2_L2_BITMAP_ALL_ALLOC, 17, QCOW2_CL_NORMAL, NULL },
	{ Q_EXT, CP | 0x50000, QCOW2_L2_BITMAP_ALL_ZEROES, 17, QCOW2_CL_ZERO_ALLOC, NULL },
	{ Q_EXT, CP | 0x50000, 0x100000001ULL, 5, QCOW2_CL_INVALID,
	  "subcluster both allocated and zero" },
	{ Q_EXT, CP | 0x50000, 0x8000000080000000ULL, 0, QCOW2_CL_INVALID,
	  "subcluster both allocated and zero" },
	{ Q_EXT, CP | 0x50000, 0x9, 32, QCOW2_CL_INVALID, "subcluster index out of range" },
	{ Q_EXT, CM | 0x59d03, 0, 0, QCOW2_CL_COMPRESSED, NULL },
	{ Q_EXT, CM | 0x59d03, 0, 20, QCOW2_CL_COMPRESSED, NULL },
	{ Q_EXT, CM | 0x59d03, 1ULL << 40, 0, QCOW2_CL_INVALID,
	  "compressed cluster with non-zero subcluster bitmap" },
	{ Q_EXT_DF, CP, 1, 0, QCOW2_CL_NORMAL, NULL },
	{ Q_EXT_DF, CP, 1, 1, QCOW2_CL_UNALLOCATED_ALLOC, NULL },
	{ Q_EXT_DF, CP, 1ULL << 33, 1, QCOW2_CL_ZERO_ALLOC, NULL },
	{ Q_EXT_DF, 0, 1ULL << 33, 1, QCOW2_CL_ZERO_PLAIN, NULL },
	{ Q_EXT_DF, 0, 1, 0, QCOW2_CL_INVALID, "allocated subclusters without host offset" },
};

static struct qcow2_info qis[Q_NR];

static void init_qis(void)
{
	qis[Q_V2] = make_qi(2, 16, false, false);
	qis[Q_V3] = make_qi(3, 16, false, false);
	qis[Q_V3_DF] = make_qi(3, 16, false, true);
	qis[Q_EXT] = make_qi(3, 16, true, false);
	qis[Q_EXT_DF] = make_qi(3, 16, true, true);
}

static void test_l2_type(void)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(l2_cases); i++) {
		const struct l2case *c = &l2_cases[i];
		struct qcow2_l2_entry e = { .entry = c->entry, .bitmap = c->bitmap };
		const char *err = NULL;
		enum qcow2_cluster_type t = qcow2_l2_type(&qis[c->q], &e, c->sc, &err);
		bool good = t == c->type && (c->type != QCOW2_CL_INVALID || contains(err, c->msg));

		if (!ok(good, "l2 type %s: %016" PRIx64 "/%016" PRIx64 " sc %u -> %s%s%s",
			qi_names[c->q], c->entry, c->bitmap, c->sc, type_name(c->type),
			c->msg ? ": " : "", c->msg ? c->msg : ""))
			diag("got %s (%s)", type_name(t), err ? err : "");
	}
}

static void test_l2_table_load(void)
{
	u64 tbl[8] __attribute__((aligned(8)));
	u8 *b = (u8 *)tbl;
	struct qcow2_l2_entry e;

	put64(b, 0, 0x8000000000050000ULL);
	put64(b, 8, 0x1234);
	put64(b, 16, 0x8000000000060000ULL);
	put64(b, 24, 0x00000000ffffffffULL);
	qcow2_l2_entry_load(&qis[Q_V3], tbl, 1, &e);
	ok(e.entry == 0x1234 && e.bitmap == 0, "l2 entry load: standard index 1");
	qcow2_l2_entry_load(&qis[Q_EXT], tbl, 1, &e);
	ok(e.entry == 0x8000000000060000ULL && e.bitmap == 0xffffffffULL,
	   "l2 entry load: extended index 1");
}

static void test_subcluster_run(void)
{
	static const struct {
		int q;
		u64 entry, bitmap;
		unsigned int sc, run;
	} c[] = {
		{ Q_V3, CP | 0x50000, 0, 0, 1 },
		{ Q_V3, 0, 0, 0, 1 },
		{ Q_EXT, CP | 0x50000, 0x9, 0, 1 },
		{ Q_EXT, CP | 0x50000, 0x9, 1, 2 },
		{ Q_EXT, CP | 0x50000, 0x9, 2, 1 },
		{ Q_EXT, CP | 0x50000, 0x9, 3, 1 },
		{ Q_EXT, CP | 0x50000, 0x9, 4, 28 },
		{ Q_EXT, CP | 0x50000, 0x000000f0ffffff0fULL, 0, 4 },
		{ Q_EXT, CP | 0x50000, 0x000000f0ffffff0fULL, 4, 4 },
		{ Q_EXT, CP | 0x50000, 0x000000f0ffffff0fULL, 6, 2 },
		{ Q_EXT, CP | 0x50000, 0x000000f0ffffff0fULL, 8, 24 },
		{ Q_EXT, 0, 0x300000000ULL, 0, 2 },
		{ Q_EXT, 0, 0x300000000ULL, 2, 30 },
		{ Q_EXT, 0, 0, 0, 32 },
		{ Q_EXT, CP | 0x50000, QCOW2_L2_BITMAP_ALL_ALLOC, 0, 32 },
		{ Q_EXT, CP | 0x50000, QCOW2_L2_BITMAP_ALL_ALLOC, 31, 1 },
		{ Q_EXT, CP | 0x50000, 0x7fffffffULL, 0, 31 },
		{ Q_EXT, CP | 0x50000, 0x7fffffffULL, 31, 1 },
		{ Q_EXT, CM | 0x59d03, 0, 5, 27 },
		{ Q_EXT, CP | 0x50000, 0x100000001ULL, 3, 29 },	/* invalid: whole cluster */
		{ Q_EXT, CP | 0x50000, 0x9, 32, 0 },
	};
	size_t i;

	for (i = 0; i < ARRAY_LEN(c); i++) {
		struct qcow2_l2_entry e = { .entry = c[i].entry, .bitmap = c[i].bitmap };
		unsigned int run = qcow2_subcluster_run(&qis[c[i].q], &e, c[i].sc);

		if (!ok(run == c[i].run, "subcluster run %s %016" PRIx64 "/%016" PRIx64
			" sc %u -> %u", qi_names[c[i].q], c[i].entry, c[i].bitmap, c[i].sc,
			c[i].run))
			diag("got %u", run);
	}
}

static void test_host_offset(void)
{
	static const struct {
		int q;
		u64 entry, image_size;
		s64 ret;
		const char *msg;
	} c[] = {
		{ Q_V3, CP | 0x50000, MiB, 0x50000, NULL },
		{ Q_V3, 0x50000, 0x50001, 0x50000, NULL },
		{ Q_V3, CP | 0x50001, MiB, 0x50000, NULL },	/* ZERO_ALLOC */
		{ Q_V3, CP | 0x50000, 0x50000, -EINVAL, "data cluster beyond end of device" },
		{ Q_V3, CP | 0x50200, MiB, -EINVAL, "data cluster offset not cluster aligned" },
		{ Q_V3, CP | 0x58000, MiB, -EINVAL, "data cluster offset not cluster aligned" },
		{ Q_V3, CP, MiB, -EINVAL, "data cluster offset inside header cluster" },
		{ Q_V3, CP | (1ULL << 56) | 0x50000, ~0ULL, -EINVAL, "reserved bits" },
		{ Q_V3, CP | 0x50002, MiB, -EINVAL, "reserved bits" },
		{ Q_V3, CM | 0x50000, MiB, -EINVAL, "compressed" },
		{ Q_V3, CP | 0x00fffffffffe0000ULL, ~0ULL, 0x00fffffffffe0000LL, NULL },
		{ Q_V3_DF, CP, MiB, 0, NULL },
		{ Q_V3_DF, CP | 0x10000, MiB, 0x10000, NULL },
		{ Q_V3_DF, CP | 0x100000, MiB, -EINVAL, "data cluster beyond end of device" },
		{ Q_EXT, CP | 0x50000, MiB, 0x50000, NULL },
		{ Q_EXT, CP | 0x50001, MiB, -EINVAL, "reserved bits" },
		{ Q_EXT_DF, CP, MiB, 0, NULL },
	};
	size_t i;

	for (i = 0; i < ARRAY_LEN(c); i++) {
		struct qcow2_l2_entry e = { .entry = c[i].entry, .bitmap = 1 };
		const char *err = NULL;
		s64 r = qcow2_l2_host_offset(&qis[c[i].q], &e, c[i].image_size, &err);
		bool good = r == c[i].ret && (r >= 0 || contains(err, c[i].msg));

		if (!ok(good, "host offset %s %016" PRIx64 " size %#" PRIx64 " -> %" PRId64 "%s%s",
			qi_names[c[i].q], c[i].entry, c[i].image_size, c[i].ret,
			c[i].msg ? " " : "", c[i].msg ? c[i].msg : ""))
			diag("got %" PRId64 " (%s)", r, err ? err : "");
	}
}

static void test_l1_entry(void)
{
	static const struct {
		u64 l1e, image_size;
		s64 ret;
		const char *msg;
	} c[] = {
		{ 0, MiB, 0, NULL },
		{ CP, MiB, 0, NULL },
		{ 0x30000, MiB, 0x30000, NULL },
		{ CP | 0x30000, MiB, 0x30000, NULL },
		{ CP | 0x30000, 0x30001, 0x30000, NULL },
		{ CP | 0x30000, 0x30000, -EINVAL, "L2 table beyond end of device" },
		{ CP | 0x30200, MiB, -EINVAL, "L2 table offset not cluster aligned" },
		{ CP | 0x30001, MiB, -EINVAL, "L1 entry has reserved bits set" },
		{ CP | 0x30100, MiB, -EINVAL, "L1 entry has reserved bits set" },
		{ CP | (1ULL << 56) | 0x30000, ~0ULL, -EINVAL, "L1 entry has reserved bits set" },
		{ CM | 0x30000, ~0ULL, -EINVAL, "L1 entry has reserved bits set" },
		{ CP | 0x00ffffffffff0000ULL, ~0ULL, 0x00ffffffffff0000LL, NULL },
	};
	size_t i;

	for (i = 0; i < ARRAY_LEN(c); i++) {
		const char *err = NULL;
		s64 r = qcow2_l1_entry_l2_offset(&qis[Q_V3], c[i].l1e, c[i].image_size, &err);
		bool good = r == c[i].ret && (r >= 0 || contains(err, c[i].msg));

		if (!ok(good, "l1 entry %016" PRIx64 " size %#" PRIx64 " -> %" PRId64 "%s%s",
			c[i].l1e, c[i].image_size, c[i].ret, c[i].msg ? " " : "",
			c[i].msg ? c[i].msg : ""))
			diag("got %" PRId64 " (%s)", r, err ? err : "");
	}
}

/* ------------------------------------------------------- compressed */

/* QEMU's encoding (reference section 2.7). */
static u64 encode_compressed(u32 cb, u64 off, u64 csize)
{
	u64 nsect_add = (off + csize - 1) / 512 - off / 512;

	return QCOW2_OFLAG_COMPRESSED | (nsect_add << (70 - cb)) | off;
}

static void test_compressed(void)
{
	static const u32 cbs[] = { 9, 12, 16, 21 };
	size_t i;

	for (i = 0; i < ARRAY_LEN(cbs); i++) {
		u32 cb = cbs[i];
		u64 cs = 1ULL << cb;
		struct qcow2_info qi = make_qi(3, cb, false, false);
		struct qcow2_compressed c;
		const char *err = NULL;
		u64 off = 0x59d03 + cs;		/* keep it past the header cluster */
		u64 csize = cs - 1 < 40701 ? cs - 1 : 40701;
		u64 e = encode_compressed(cb, off, csize);
		u64 x = 70 - cb;
		u64 max_nsect = (1ULL << (cb - 8)) - 1;
		u64 max_off;
		int rc;

		rc = qcow2_decode_compressed(&qi, e, ~0ULL, &c, &err);
		ok(rc == 0 && c.offset == off &&
		   c.nb_sectors * 512 - (c.offset & 511) >= csize &&
		   c.nb_sectors * 512 - (c.offset & 511) < csize + 512 &&
		   c.nb_sectors == (off + csize - 1) / 512 - off / 512 + 1,
		   "compressed cb %u: offset %#" PRIx64 " csize %" PRIu64 " round trip",
		   cb, off, csize);

		rc = qcow2_decode_compressed(&qi, QCOW2_OFLAG_COMPRESSED | (max_nsect << x) | off,
					     ~0ULL, &c, &err);
		ok(rc == 0 && c.offset == off && c.nb_sectors == max_nsect + 1 &&
		   c.nb_sectors * 512 == 2 * cs,
		   "compressed cb %u: full sector count field (%" PRIu64 " sectors)", cb,
		   max_nsect + 1);

		max_off = x > 56 ? (1ULL << 56) - 1 : (1ULL << x) - 1;
		rc = qcow2_decode_compressed(&qi, CM | max_off, ~0ULL, &c, &err);
		ok(rc == 0 && c.offset == max_off && c.nb_sectors == 1,
		   "compressed cb %u: largest offset %#" PRIx64, cb, max_off);

		if (x > 56) {
			rc = qcow2_decode_compressed(&qi, CM | (1ULL << 56) | off, ~0ULL, &c,
						     &err);
			ok(rc == -EINVAL && contains(err, "compressed cluster offset too large"),
			   "compressed cb %u: offset bit 56 -> too large", cb);
		}

		rc = qcow2_decode_compressed(&qi, QCOW2_OFLAG_COMPRESSED | (cs - 1), ~0ULL, &c,
					     &err);
		ok(rc == -EINVAL && contains(err, "compressed cluster inside header cluster"),
		   "compressed cb %u: offset in cluster 0 rejected", cb);
		rc = qcow2_decode_compressed(&qi, QCOW2_OFLAG_COMPRESSED | cs, cs + 1, &c, &err);
		ok(rc == 0 && c.offset == cs, "compressed cb %u: offset == cluster size accepted",
		   cb);
		rc = qcow2_decode_compressed(&qi, e, off, &c, &err);
		ok(rc == -EINVAL && contains(err, "compressed cluster beyond end of device"),
		   "compressed cb %u: offset == image size rejected", cb);
		rc = qcow2_decode_compressed(&qi, e, off + 1, &c, &err);
		ok(rc == 0, "compressed cb %u: offset == image size - 1 accepted", cb);
	}

	/* The worked example: 64k clusters, offset 0x59d03, csize 40701. */
	{
		struct qcow2_info qi = make_qi(3, 16, false, false);
		struct qcow2_compressed c;
		const char *err = NULL;
		u64 e = encode_compressed(16, 0x59d03, 40701);
		int rc = qcow2_decode_compressed(&qi, e, 8 * MiB, &c, &err);
		u64 csize = c.nb_sectors * 512 - (c.offset & 511);

		ok(e == (QCOW2_OFLAG_COMPRESSED | (79ULL << 54) | 0x59d03),
		   "compressed worked example encodes nsect_add 79 at bit 54");
		ok(rc == 0 && c.offset == 0x59d03 && c.nb_sectors == 80 && csize == 40701 &&
		   (c.offset & ~0xffffULL) == 0x50000 &&
		   ((c.offset + csize - 1) & ~0xffffULL) == 0x60000,
		   "compressed worked example: 0x59d03 csize 40701 spans 0x50000 and 0x60000");
	}

	/* cb 9: bit 61 is the sector count, bits 62/63 are flags. */
	{
		struct qcow2_info qi = make_qi(3, 9, false, false);
		struct qcow2_compressed c;
		const char *err = NULL;
		int rc = qcow2_decode_compressed(&qi, CM | (1ULL << 61) | 0x1234, MiB, &c, &err);

		ok(rc == 0 && c.offset == 0x1234 && c.nb_sectors == 2,
		   "compressed cb 9: bit 61 is the sector count");
	}

	/* Not with an external data file. */
	{
		struct qcow2_compressed c;
		const char *err = NULL;
		int rc = qcow2_decode_compressed(&qis[Q_V3_DF], CM | 0x59d03, MiB, &c, &err);

		ok(rc == -EINVAL && contains(err, "external data file"),
		   "compressed: rejected with an external data file");
	}
}

/* ------------------------------------------------------- refcounts */

static u64 pattern(u64 i)
{
	u64 x = i * 0x9e3779b97f4a7c15ULL + 0x1234567;

	return x ^ (x >> 29);
}

static void test_refcounts(void)
{
	static u8 blk[4096] __attribute__((aligned(8)));
	u32 order;

	for (order = 0; order <= 6; order++) {
		u64 bits = 1ULL << order;
		u64 max = bits == 64 ? ~0ULL : (1ULL << bits) - 1;
		u64 n = (sizeof(blk) * 8) >> order;
		u64 i, bad = 0;

		memset(blk, 0xa5, sizeof(blk));
		for (i = 0; i < n; i++)
			qcow2_refcount_set(blk, order, i, pattern(i) & max);
		for (i = 0; i < n; i++)
			bad += qcow2_refcount_get(blk, order, i) != (pattern(i) & max);
		ok(!bad, "refcount order %u: set/get round trip of %" PRIu64 " entries",
		   order, n);

		bad = 0;
		for (i = 1; i + 1 < n; i += 7) {
			qcow2_refcount_set(blk, order, i, max);
			bad += qcow2_refcount_get(blk, order, i) != max;
			bad += qcow2_refcount_get(blk, order, i - 1) != (pattern(i - 1) & max);
			bad += qcow2_refcount_get(blk, order, i + 1) != (pattern(i + 1) & max);
			qcow2_refcount_set(blk, order, i, 0);
			bad += qcow2_refcount_get(blk, order, i) != 0;
			bad += qcow2_refcount_get(blk, order, i - 1) != (pattern(i - 1) & max);
			bad += qcow2_refcount_get(blk, order, i + 1) != (pattern(i + 1) & max);
			qcow2_refcount_set(blk, order, i, pattern(i) & max);
		}
		ok(!bad, "refcount order %u: max/0 updates leave neighbours alone", order);

		memset(blk, 0, sizeof(blk));
		qcow2_refcount_set(blk, order, n - 1, 1);
		ok(qcow2_refcount_get(blk, order, n - 1) == 1 &&
		   qcow2_refcount_get(blk, order, 0) == 0 &&
		   (order >= 3 ? blk[sizeof(blk) - 1] == 1 :
				 blk[sizeof(blk) - 1] == 1 << (8 - bits)),
		   "refcount order %u: last entry sits in the last byte", order);
	}

	{
		static const u64 v[] = { 1, 1, 1, 1, 2, 2, 1, 1 };
		u64 i, bad = 0;

		memset(blk, 0, sizeof(blk));
		for (i = 0; i < 8; i++)
			qcow2_refcount_set(blk, 1, i, v[i]);
		ok(blk[0] == 0x55 && blk[1] == 0x5a && blk[2] == 0,
		   "refcount: 2-bit refcounts 1,1,1,1,2,2,1,1 encode as bytes 55 5a");
		memset(blk, 0, sizeof(blk));
		blk[0] = 0x55;
		blk[1] = 0x5a;
		for (i = 0; i < 8; i++)
			bad += qcow2_refcount_get(blk, 1, i) != v[i];
		ok(!bad, "refcount: bytes 55 5a decode as 2-bit 1,1,1,1,2,2,1,1");
	}

	memset(blk, 0, sizeof(blk));
	qcow2_refcount_set(blk, 0, 0, 1);
	qcow2_refcount_set(blk, 0, 2, 1);
	qcow2_refcount_set(blk, 0, 3, 1);
	qcow2_refcount_set(blk, 0, 9, 1);
	ok(blk[0] == 0x0d && blk[1] == 0x02, "refcount: 1-bit packing is LSB first");
	memset(blk, 0, sizeof(blk));
	qcow2_refcount_set(blk, 2, 0, 1);
	qcow2_refcount_set(blk, 2, 1, 2);
	qcow2_refcount_set(blk, 2, 3, 15);
	ok(blk[0] == 0x21 && blk[1] == 0xf0, "refcount: 4-bit packing is LSB first");
	memset(blk, 0, sizeof(blk));
	qcow2_refcount_set(blk, 3, 5, 0xab);
	ok(blk[5] == 0xab, "refcount: 8-bit entries are bytes");
	qcow2_refcount_set(blk, 4, 1, 0x1234);
	ok(blk[2] == 0x12 && blk[3] == 0x34, "refcount: 16-bit entries are big-endian");
	qcow2_refcount_set(blk, 5, 1, 0x89abcdef);
	ok(blk[4] == 0x89 && blk[7] == 0xef && qcow2_refcount_get(blk, 5, 1) == 0x89abcdef,
	   "refcount: 32-bit entries are big-endian");
	qcow2_refcount_set(blk, 6, 1, 0x0102030405060708ULL);
	ok(blk[8] == 1 && blk[15] == 8 &&
	   qcow2_refcount_get(blk, 6, 1) == 0x0102030405060708ULL,
	   "refcount: 64-bit entries are big-endian");
	qcow2_refcount_set(blk, 3, 0, 0x1ff);
	ok(blk[0] == 0xff && blk[1] == 0, "refcount: values are truncated to the width");
}

/* ------------------------------------------------------- snapshots */

static size_t build_snapshot(u8 *b, u64 l1off, u32 l1_size, const char *id, const char *name,
			     u32 extra, u64 disk_size)
{
	size_t idl = strlen(id), nl = strlen(name);
	size_t n = 40 + extra + idl + nl;

	memset(b, 0xee, (n + 7) & ~7UL);
	put64(b, 0, l1off);
	put32(b, 8, l1_size);
	put16(b, 12, (u16)idl);
	put16(b, 14, (u16)nl);
	put32(b, 16, 1700000000);
	put32(b, 20, 5);
	put64(b, 24, 0);
	put32(b, 32, 0);
	put32(b, 36, extra);
	memset(b + 40, 0, extra);
	if (extra >= 16)
		put64(b, 48, disk_size);
	memcpy(b + 40 + extra, id, idl);
	memcpy(b + 40 + extra + idl, name, nl);
	return n;
}

static void test_snapshots(void)
{
	u8 b[4096] __attribute__((aligned(8)));
	struct qcow2_snapshot_info si;
	const struct qcow2_info *v3 = &qis[Q_V3], *v2 = &qis[Q_V2];
	const char *err = NULL;
	size_t n;
	int rc;

	n = build_snapshot(b, 0x50000, 2, "1", "s1", 24, GiB);
	rc = qcow2_parse_snapshot(v3, b, 72, MiB, &si, &err);
	ok(n == 67 && rc == 72 && si.entry_len == 72 && si.l1_table_offset == 0x50000 &&
	   si.l1_size == 2 && si.disk_size == GiB && si.id_len == 1 && si.name_len == 2 &&
	   si.id == (const char *)b + 64 && !memcmp(si.id, "1", 1) &&
	   si.name == (const char *)b + 65 && !memcmp(si.name, "s1", 2),
	   "snapshot: v3 entry with 24 bytes of extra data");
	rc = qcow2_parse_snapshot(v3, b, 67, MiB, &si, &err);
	ok(rc == 72, "snapshot: trailing padding need not be present");
	rc = qcow2_parse_snapshot(v3, b, 66, MiB, &si, &err);
	ok(rc == -ENODATA, "snapshot: one byte short -> -ENODATA");
	rc = qcow2_parse_snapshot(v3, b, 39, MiB, &si, &err);
	ok(rc == -ENODATA, "snapshot: 39 bytes -> -ENODATA");
	rc = qcow2_parse_snapshot(v3, b, 0, MiB, &si, &err);
	ok(rc == -ENODATA, "snapshot: empty buffer -> -ENODATA");

	/* Two back-to-back entries. */
	n = build_snapshot(b, 0x50000, 2, "1", "first", 16, GiB);
	n = (n + 7) & ~7UL;
	build_snapshot(b + n, 0x60000, 3, "22", "second", 16, 2 * GiB);
	rc = qcow2_parse_snapshot(v3, b, sizeof(b), MiB, &si, &err);
	ok(rc == (int)n && si.disk_size == GiB && !memcmp(si.name, "first", 5),
	   "snapshot: first of two entries (16 bytes extra)");
	rc = qcow2_parse_snapshot(v3, b + n, sizeof(b) - n, MiB, &si, &err);
	ok(rc == 64 && si.disk_size == 2 * GiB && si.l1_size == 3 &&
	   si.id_len == 2 && !memcmp(si.id, "22", 2) && !memcmp(si.name, "second", 6),
	   "snapshot: second entry starts 8-byte aligned");

	n = build_snapshot(b, 0x50000, 2, "1", "s", 0, 0);
	rc = qcow2_parse_snapshot(v2, b, n, MiB, &si, &err);
	ok(rc == 48 && si.disk_size == 0, "snapshot: v2 entry without extra data");
	rc = qcow2_parse_snapshot(v3, b, n, MiB, &si, &err);
	ok(rc == -EINVAL && contains(err, "snapshot extra data too small"),
	   "snapshot: v3 entry without extra data rejected");
	n = build_snapshot(b, 0x50000, 2, "1", "s", 8, 0);
	rc = qcow2_parse_snapshot(v3, b, n, MiB, &si, &err);
	ok(rc == -EINVAL && contains(err, "snapshot extra data too small"),
	   "snapshot: v3 entry with 8 bytes extra rejected");
	n = build_snapshot(b, 0x50000, 2, "1", "s", 8, 0);
	rc = qcow2_parse_snapshot(v2, b, n, MiB, &si, &err);
	ok(rc == 56 && si.disk_size == 0, "snapshot: v2 entry with 8 bytes extra, no disk size");
	n = build_snapshot(b, 0x50000, 2, "1", "s", 1024, GiB);
	rc = qcow2_parse_snapshot(v3, b, n, MiB, &si, &err);
	ok(rc == 1072 && si.disk_size == GiB, "snapshot: 1024 bytes of extra data accepted");
	n = build_snapshot(b, 0x50000, 2, "1", "s", 1025, GiB);
	rc = qcow2_parse_snapshot(v3, b, n, MiB, &si, &err);
	ok(rc == -EINVAL && contains(err, "snapshot extra data too large"),
	   "snapshot: 1025 bytes of extra data rejected");
	rc = qcow2_parse_snapshot(v3, b, 40, MiB, &si, &err);
	ok(rc == -EINVAL, "snapshot: bad extra size is reported before asking for more data");

	n = build_snapshot(b, 0x50200, 2, "1", "s", 16, GiB);
	rc = qcow2_parse_snapshot(v3, b, n, MiB, &si, &err);
	ok(rc == -EINVAL && contains(err, "snapshot L1 table offset not cluster aligned"),
	   "snapshot: unaligned L1 offset");
	n = build_snapshot(b, 0x50000, 2, "1", "s", 16, GiB);
	rc = qcow2_parse_snapshot(v3, b, n, 0x50000, &si, &err);
	ok(rc == 64, "snapshot: L1 table starting at the end of the device");
	rc = qcow2_parse_snapshot(v3, b, n, 0x4ffff, &si, &err);
	ok(rc == -EINVAL && contains(err, "snapshot L1 table beyond end of device"),
	   "snapshot: L1 table beyond end of device");
	n = build_snapshot(b, 0x50000, (4 << 20) + 1, "1", "s", 16, GiB);
	rc = qcow2_parse_snapshot(v3, b, n, ~0ULL, &si, &err);
	ok(rc == -EINVAL && contains(err, "snapshot L1 table too large"),
	   "snapshot: L1 table > 32 MiB");
	n = build_snapshot(b, 0, 1, "1", "s", 16, GiB);
	rc = qcow2_parse_snapshot(v3, b, n, MiB, &si, &err);
	ok(rc == -EINVAL && contains(err, "snapshot L1 table offset is zero"),
	   "snapshot: L1 offset 0 with entries");
	n = build_snapshot(b, 0, 0, "1", "s", 16, 0);
	rc = qcow2_parse_snapshot(v3, b, n, MiB, &si, &err);
	ok(rc == 64 && si.l1_size == 0, "snapshot: empty L1 with offset 0");
	n = build_snapshot(b, 0xffffffffffff0000ULL, 2, "1", "s", 16, GiB);
	rc = qcow2_parse_snapshot(v3, b, n, ~0ULL, &si, &err);
	ok(rc == -EINVAL && contains(err, "snapshot L1 table offset overflow"),
	   "snapshot: L1 offset overflow");
	n = build_snapshot(b, 0x50000, 2, "", "", 16, GiB);
	rc = qcow2_parse_snapshot(v3, b, n, MiB, &si, &err);
	ok(rc == 56 && si.id_len == 0 && si.name_len == 0, "snapshot: empty id and name");
}

/* ============================================== against qemu-img/qemu-io */

static char tmpdir[64];

static int __attribute__((format(printf, 1, 2))) sh(const char *fmt, ...)
{
	char *cmd, *full;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	if (vasprintf(&cmd, fmt, ap) < 0)
		abort();
	va_end(ap);
	if (asprintf(&full, "cd %s && { %s ; } >>log 2>&1", tmpdir, cmd) < 0)
		abort();
	rc = system(full);
	if (rc)
		diag("command failed (%d): %s", rc, cmd);
	free(full);
	free(cmd);
	return rc;
}

static char *__attribute__((format(printf, 1, 2))) sh_out(const char *fmt, ...)
{
	char *cmd, *full, *out = NULL;
	size_t cap = 0, len = 0;
	va_list ap;
	FILE *f;

	va_start(ap, fmt);
	if (vasprintf(&cmd, fmt, ap) < 0)
		abort();
	va_end(ap);
	if (asprintf(&full, "cd %s && %s 2>>log", tmpdir, cmd) < 0)
		abort();
	f = popen(full, "r");
	if (f) {
		for (;;) {
			size_t r;

			if (cap - len < 4096) {
				cap = cap * 2 + 8192;
				out = realloc(out, cap);
				if (!out)
					abort();
			}
			r = fread(out + len, 1, cap - len - 1, f);
			if (!r)
				break;
			len += r;
		}
		if (pclose(f) != 0) {
			diag("command failed: %s", cmd);
			free(out);
			out = NULL;
		} else {
			out[len] = 0;
		}
	}
	free(full);
	free(cmd);
	return out;
}

static u8 *read_image(const char *name, size_t *len)
{
	char path[256];
	struct stat st;
	FILE *f;
	u8 *b;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	f = fopen(path, "rb");
	if (!f || fstat(fileno(f), &st)) {
		if (f)
			fclose(f);
		return NULL;
	}
	b = calloc(1, st.st_size + 1);
	if (!b || fread(b, 1, st.st_size, f) != (size_t)st.st_size) {
		free(b);
		b = NULL;
	}
	fclose(f);
	*len = st.st_size;
	return b;
}

/* Minimal JSON lookups: good enough for qemu-img's fixed output. */
static const char *json_find(const char *js, const char *key)
{
	char pat[96];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = js ? strstr(js, pat) : NULL;
	if (!p)
		return NULL;
	p += strlen(pat);
	while (*p == ' ')
		p++;
	return p;
}

static bool json_u64(const char *js, const char *key, u64 *v)
{
	const char *p = json_find(js, key);

	if (!p)
		return false;
	*v = strtoull(p, NULL, 10);
	return true;
}

static bool json_bool(const char *js, const char *key, bool *v)
{
	const char *p = json_find(js, key);

	if (!p)
		return false;
	*v = !strncmp(p, "true", 4);
	return true;
}

static bool json_str(const char *js, const char *key, char *out, size_t n)
{
	const char *p = json_find(js, key);
	size_t i = 0;

	if (!p || *p != '"')
		return false;
	for (p++; *p && *p != '"' && i + 1 < n; p++)
		out[i++] = *p;
	out[i] = 0;
	return true;
}

static unsigned int json_count(const char *js, const char *needle)
{
	unsigned int n = 0;
	const char *p = js;

	while (p && (p = strstr(p, needle))) {
		n++;
		p += strlen(needle);
	}
	return n;
}

struct image_spec {
	const char *name;
	const char *setup;	/* shell commands run in the temp dir */
	bool expect_backing;
	bool expect_data_file;
	bool expect_bitmaps;
	unsigned int snapshots;
};

static bool parse_image(const char *name, u8 **img, size_t *len, struct qcow2_info *qi)
{
	const char *err = NULL;
	u32 cb;
	int rc;

	*img = read_image(name, len);
	if (!*img) {
		diag("%s: cannot read", name);
		return false;
	}
	rc = qcow2_peek_cluster_bits(*img, *len < 512 ? *len : 512, &cb, &err);
	if (rc) {
		diag("%s: peek: %s", name, err);
		return false;
	}
	rc = qcow2_parse_header(*img, *len < (1ULL << cb) ? *len : (1ULL << cb), *len, qi, &err);
	if (rc)
		diag("%s: parse: %d %s", name, rc, err);
	return rc == 0;
}

/* Refcount of host cluster @off, read through the reftable. */
static u64 image_refcount(const struct qcow2_info *qi, const u8 *img, size_t len, u64 off)
{
	u64 rb_bits = qi->cluster_bits + 3 - qi->refcount_order;
	u64 ci = off >> qi->cluster_bits;
	u64 rti = ci >> rb_bits;
	u64 rte, rb;

	if (rti >= (qi->refcount_table_clusters * qi->cluster_size) / 8)
		return 0;
	if (qi->refcount_table_offset + rti * 8 + 8 > len)
		return 0;
	rte = get64(img, qi->refcount_table_offset + rti * 8);
	rb = rte & QCOW2_REFT_OFFSET_MASK;
	if (!rb || rb + qi->cluster_size > len)
		return ~0ULL;
	return qcow2_refcount_get(img + rb, qi->refcount_order, ci & ((1ULL << rb_bits) - 1));
}

static void check_info(const struct image_spec *s)
{
	struct qcow2_info qi;
	size_t len = 0;
	u8 *img = NULL;
	char *js;
	u64 v;
	bool b, good;
	char str[1100], name[1100];

	if (!ok(sh("%s", s->setup) == 0, "qemu %s: create image", s->name)) {
		ok(false, "qemu %s: header accepted", s->name);
		return;
	}
	good = parse_image(s->name, &img, &len, &qi);
	ok(good, "qemu %s: header accepted", s->name);
	js = sh_out("qemu-img info -U --output=json %s", s->name);
	if (!good || !js) {
		ok(false, "qemu %s: fields match qemu-img info", s->name);
		goto out;
	}

	good = true;
#define CHECK(cond) do { if (!(cond)) { good = false; diag("%s: %s", s->name, #cond); } } while (0)
	CHECK(json_u64(js, "virtual-size", &v) && v == qi.size);
	CHECK(json_u64(js, "cluster-size", &v) && v == qi.cluster_size);
	CHECK(json_str(js, "compat", str, sizeof(str)) &&
	      !strcmp(str, qi.version == 2 ? "0.10" : "1.1"));
	CHECK(json_u64(js, "refcount-bits", &v) && v == 1ULL << qi.refcount_order);
	if (json_bool(js, "extended-l2", &b))
		CHECK(b == qi.extended_l2);
	else
		CHECK(qi.version == 2 && !qi.extended_l2);
	if (json_str(js, "compression-type", str, sizeof(str)))
		CHECK(!strcmp(str, qi.compression_type ? "zstd" : "zlib"));
	else
		CHECK(qi.compression_type == 0);
	CHECK(json_bool(js, "lazy-refcounts", &b) ? b == !!(qi.compatible_features & 1) :
						    !(qi.compatible_features & 1));
	CHECK(json_bool(js, "dirty-flag", &b) && b == !!(qi.incompatible_features & 1));
	CHECK(!json_bool(js, "corrupt", &b) || b == !!(qi.incompatible_features & 2));
	CHECK(qi.l1_size >= qi.l1_needed && qi.crypt_method == 0);
	if (s->expect_backing) {
		CHECK(json_str(js, "backing-filename", str, sizeof(str)));
		CHECK(qcow2_backing_name(&qi, img, len, name, sizeof(name)) > 0 &&
		      !strcmp(name, str));
		CHECK(json_str(js, "backing-filename-format", str, sizeof(str)) &&
		      qi.has_backing_fmt && !strcmp(str, qi.backing_fmt));
	} else {
		CHECK(!json_find(js, "backing-filename") && !qi.backing_file_offset &&
		      !qi.has_backing_fmt);
	}
	CHECK(s->expect_data_file == !!(qi.incompatible_features & QCOW2_INCOMPAT_DATA_FILE));
	CHECK(s->expect_data_file == qi.has_data_file_ext);
	CHECK(s->expect_data_file == !!json_find(js, "data-file"));
	CHECK(s->expect_bitmaps == qi.has_bitmaps_ext);
	CHECK(s->expect_bitmaps == !!(qi.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS));
	CHECK(qi.nb_snapshots == s->snapshots);
	CHECK(json_count(js, "\"vm-clock-nsec\"") == qi.nb_snapshots);
	/* The header, the reftable and the L1 table are referenced once. */
	CHECK(image_refcount(&qi, img, len, 0) == 1);
	CHECK(image_refcount(&qi, img, len, qi.refcount_table_offset) == 1);
	if (qi.l1_size)
		CHECK(image_refcount(&qi, img, len, qi.l1_table_offset) == 1);
	CHECK(image_refcount(&qi, img, len, (len + qi.cluster_size) & ~(qi.cluster_size - 1)) == 0);
	ok(good, "qemu %s: fields match qemu-img info", s->name);

	if (qi.nb_snapshots) {
		u64 off = qi.snapshots_offset;
		unsigned int i;

		good = true;
		for (i = 0; i < qi.nb_snapshots && good; i++) {
			struct qcow2_snapshot_info si;
			const char *err = NULL;
			char id[16];
			int rc = off <= len ? qcow2_parse_snapshot(&qi, img + off, len - off, len,
								   &si, &err) : -EINVAL;

			CHECK(rc > 0);
			if (rc <= 0)
				break;
			snprintf(id, sizeof(id), "%u", i + 1);
			snprintf(str, sizeof(str), "s%u", i + 1);
			CHECK(si.id_len == strlen(id) && !memcmp(si.id, id, si.id_len));
			CHECK(si.name_len == strlen(str) && !memcmp(si.name, str, si.name_len));
			CHECK(si.disk_size == qi.size && si.l1_size >= qi.l1_needed);
			CHECK(image_refcount(&qi, img, len, si.l1_table_offset) == 1);
			off += rc;
		}
		ok(good, "qemu %s: %u snapshot entries parsed", s->name, qi.nb_snapshots);
	}
#undef CHECK
out:
	free(js);
	free(img);
}

#define CREATE		"qemu-img create -q -f qcow2 "
#define IO(img, cmds)	"qemu-io -f qcow2 " cmds " " img

static const struct image_spec info_images[] = {
	{ .name = "v2-64k.qcow2", .setup = CREATE "-o compat=0.10 v2-64k.qcow2 64M" },
	{ .name = "v2-512.qcow2",
	  .setup = CREATE "-o compat=0.10,cluster_size=512 v2-512.qcow2 8M" },
	{ .name = "v3-512.qcow2", .setup = CREATE "-o cluster_size=512 v3-512.qcow2 8M" },
	{ .name = "v3-4k.qcow2", .setup = CREATE "-o cluster_size=4k v3-4k.qcow2 64M" },
	{ .name = "v3-64k.qcow2", .setup = CREATE "v3-64k.qcow2 64M" },
	{ .name = "v3-2M.qcow2", .setup = CREATE "-o cluster_size=2M v3-2M.qcow2 1G" },
	{ .name = "v3-100G.qcow2", .setup = CREATE "v3-100G.qcow2 100G" },
	{ .name = "v3-odd.qcow2", .setup = CREATE "v3-odd.qcow2 1000001" },
	{ .name = "v3-empty.qcow2", .setup = CREATE "v3-empty.qcow2 0" },
	{ .name = "rc1.qcow2", .setup = CREATE "-o refcount_bits=1 rc1.qcow2 16M && "
	  IO("rc1.qcow2", "-c 'write -P 1 0 64k'") },
	{ .name = "rc2.qcow2", .setup = CREATE "-o refcount_bits=2 rc2.qcow2 16M" },
	{ .name = "rc4.qcow2", .setup = CREATE "-o refcount_bits=4 rc4.qcow2 16M" },
	{ .name = "rc8.qcow2", .setup = CREATE "-o refcount_bits=8 rc8.qcow2 16M" },
	{ .name = "rc16.qcow2", .setup = CREATE "-o refcount_bits=16 rc16.qcow2 16M" },
	{ .name = "rc32.qcow2", .setup = CREATE "-o refcount_bits=32 rc32.qcow2 16M" },
	{ .name = "rc64.qcow2", .setup = CREATE "-o refcount_bits=64 rc64.qcow2 16M" },
	{ .name = "rc64-512.qcow2",
	  .setup = CREATE "-o refcount_bits=64,cluster_size=512 rc64-512.qcow2 16M" },
	{ .name = "extl2-64k.qcow2", .setup = CREATE "-o extended_l2=on extl2-64k.qcow2 64M" },
	{ .name = "extl2-16k.qcow2",
	  .setup = CREATE "-o extended_l2=on,cluster_size=16k extl2-16k.qcow2 64M" },
	{ .name = "extl2-2M.qcow2",
	  .setup = CREATE "-o extended_l2=on,cluster_size=2M extl2-2M.qcow2 4G" },
	{ .name = "zstd.qcow2", .setup = CREATE "-o compression_type=zstd zstd.qcow2 64M" },
	{ .name = "lazy.qcow2", .setup = CREATE "-o lazy_refcounts=on lazy.qcow2 64M" },
	{ .name = "top.qcow2",
	  .setup = CREATE "base.qcow2 64M && " CREATE "-b base.qcow2 -F qcow2 top.qcow2",
	  .expect_backing = true },
	{ .name = "top-raw.qcow2",
	  .setup = "qemu-img create -q -f raw base.raw 64M && "
		   CREATE "-o cluster_size=512 -b base.raw -F raw top-raw.qcow2",
	  .expect_backing = true },
	{ .name = "top-v2.qcow2",
	  .setup = CREATE "-o compat=0.10 base2.qcow2 64M && "
		   CREATE "-o compat=0.10 -b base2.qcow2 -F qcow2 top-v2.qcow2",
	  .expect_backing = true },
	{ .name = "datafile.qcow2",
	  .setup = CREATE "-o data_file=datafile.raw datafile.qcow2 64M",
	  .expect_data_file = true },
	{ .name = "bitmaps.qcow2",
	  .setup = CREATE "bitmaps.qcow2 64M && "
		   "qemu-img bitmap --add --granularity 64k bitmaps.qcow2 bm0",
	  .expect_bitmaps = true },
	{ .name = "snap.qcow2",
	  .setup = CREATE "snap.qcow2 64M && "
		   IO("snap.qcow2", "-c 'write -P 0xab 0 128k'") " && "
		   "qemu-img snapshot -c s1 snap.qcow2 && "
		   IO("snap.qcow2", "-c 'write -P 0xcd 0 4k'") " && "
		   "qemu-img snapshot -c s2 snap.qcow2",
	  .snapshots = 2 },
	{ .name = "snap-v2.qcow2",
	  .setup = CREATE "-o compat=0.10 snap-v2.qcow2 64M && "
		   "qemu-img snapshot -c s1 snap-v2.qcow2",
	  .snapshots = 1 },
	/* qemu-io dies with SIGABRT and leaves the dirty bit set */
	{ .name = "dirty.qcow2",
	  .setup = CREATE "-o lazy_refcounts=on dirty.qcow2 64M && "
		   "{ " IO("dirty.qcow2", "-c 'write -P 0x5a 0 128k' -c abort") "; true; }" },
};


/* One extent of `qemu-img map --output=json`. */
struct extent {
	u64 start, length, offset;
	bool present, zero, data, has_offset;
};

static struct extent *parse_map(const char *js, size_t *n)
{
	struct extent *e = NULL;
	size_t cap = 0;
	const char *p = js;

	*n = 0;
	while ((p = strchr(p, '{'))) {
		const char *end = strchr(p, '}');
		char obj[512];
		size_t l;

		if (!end)
			break;
		l = end - p < (long)sizeof(obj) - 1 ? (size_t)(end - p) : sizeof(obj) - 1;
		memcpy(obj, p, l);
		obj[l] = 0;
		if (*n == cap) {
			cap = cap * 2 + 16;
			e = realloc(e, cap * sizeof(*e));
			if (!e)
				abort();
		}
		memset(&e[*n], 0, sizeof(e[*n]));
		json_u64(obj, "start", &e[*n].start);
		json_u64(obj, "length", &e[*n].length);
		json_bool(obj, "present", &e[*n].present);
		json_bool(obj, "zero", &e[*n].zero);
		json_bool(obj, "data", &e[*n].data);
		e[*n].has_offset = json_u64(obj, "offset", &e[*n].offset);
		(*n)++;
		p = end;
	}
	return e;
}

struct map_spec {
	const char *name;
	const char *setup;
	unsigned int expect_types;	/* bitmask of types that must be seen */
	bool expect_cross;		/* a compressed stream spans host clusters */
};

/*
 * Compare the guest data of one unit with what qemu-img convert produced:
 * host bytes for NORMAL, zeros for ZERO_*, and for deflate-compressed
 * clusters the inflated stream read from [offset, offset + csize).
 * Returns false on a mismatch; *checked tells whether it compared anything.
 */
static bool check_unit_data(const struct qcow2_info *qi, const u8 *img, size_t len,
			    const u8 *raw, u64 guest, u64 end, enum qcow2_cluster_type t,
			    s64 host, const struct qcow2_compressed *c, bool *checked)
{
	u64 n = end - guest, i;

	*checked = true;
	switch (t) {
	case QCOW2_CL_NORMAL:
		for (i = 0; i < n; i++)
			if (raw[guest + i] != ((u64)host + i < len ? img[host + i] : 0))
				return false;
		return true;
	case QCOW2_CL_ZERO_PLAIN:
	case QCOW2_CL_ZERO_ALLOC:
	case QCOW2_CL_UNALLOCATED:
	case QCOW2_CL_UNALLOCATED_ALLOC:
		for (i = 0; i < n; i++)
			if (raw[guest + i])
				return false;
		return true;
	case QCOW2_CL_COMPRESSED:
#ifdef HAVE_ZLIB
		if (qi->compression_type == QCOW2_COMPRESSION_DEFLATE) {
			u64 csize = c->nb_sectors * 512 - (c->offset & 511);
			u8 *in = calloc(1, csize), *out = malloc(qi->cluster_size);
			z_stream zs;
			bool good;
			int rc;

			memcpy(in, img + c->offset,
			       c->offset + csize <= len ? csize : len - c->offset);
			memset(&zs, 0, sizeof(zs));
			inflateInit2(&zs, -15);
			zs.next_in = in;
			zs.avail_in = (uInt)csize;
			zs.next_out = out;
			zs.avail_out = (uInt)qi->cluster_size;
			rc = inflate(&zs, Z_FINISH);
			/* The input is sector-granular: the stream may end early. */
			good = (rc == Z_STREAM_END || rc == Z_BUF_ERROR) && zs.avail_out == 0;
			inflateEnd(&zs);
			guest &= ~(qi->cluster_size - 1);
			for (i = 0; good && i < qi->cluster_size && guest + i < qi->size; i++)
				good = raw[guest + i] == out[i];
			free(in);
			free(out);
			return good;
		}
#endif
		(void)c;
		*checked = false;
		return true;
	default:
		*checked = false;
		return false;
	}
}

#define T(x)	(1U << QCOW2_CL_##x)

/*
 * Walk the active L1/L2 tables of an image with the functions under test,
 * classify every (sub)cluster and compare with qemu-img map.
 */
static void check_map(const struct map_spec *s)
{
	struct qcow2_info qi;
	struct extent *ext = NULL;
	size_t len = 0, n_ext = 0, ei = 0;
	u8 *img = NULL, *l2buf = NULL;
	char *js = NULL;
	unsigned int seen = 0, units = 0, mismatches = 0, data_checked = 0, data_bad = 0;
	unsigned int crossing = 0;
	char raw_name[128];
	size_t raw_len = 0;
	u8 *raw = NULL;
	u64 guest, unit;
	bool good;

	if (!ok(sh("%s", s->setup) == 0, "qemu map %s: create image", s->name))
		return;
	good = parse_image(s->name, &img, &len, &qi);
	js = sh_out("qemu-img map -U --output=json %s", s->name);
	snprintf(raw_name, sizeof(raw_name), "%s.raw", s->name);
	if (!sh("qemu-img convert -U -O raw %s %s", s->name, raw_name))
		raw = read_image(raw_name, &raw_len);
	if (!ok(good && js && raw && raw_len == qi.size,
		"qemu map %s: header accepted, map and raw contents read", s->name))
		goto out;
	ext = parse_map(js, &n_ext);
	l2buf = calloc(1, qi.cluster_size);
	unit = 1ULL << qi.subcluster_bits;

	good = true;
	for (guest = 0; guest < qi.size; guest += unit) {
		u64 l1i = guest >> (qi.cluster_bits + qi.l2_bits);
		u64 l2i = (guest >> qi.cluster_bits) & ((1ULL << qi.l2_bits) - 1);
		unsigned int sc = (guest >> qi.subcluster_bits) & (qi.extended_l2 ? 31 : 0);
		u64 end = guest + unit < qi.size ? guest + unit : qi.size;
		struct qcow2_l2_entry e = { 0, 0 };
		enum qcow2_cluster_type t = QCOW2_CL_UNALLOCATED;
		const char *err = "";
		s64 host = -1;
		struct qcow2_compressed c = { 0, 0 };
		bool present, zero, data, checked;
		u64 pos;

		units++;
		if (l1i < qi.l1_size) {
			u64 l1o = qi.l1_table_offset + l1i * 8;
			u64 l1e = l1o + 8 <= len ? get64(img, l1o) : 0;
			s64 l2o = qcow2_l1_entry_l2_offset(&qi, l1e, len, &err);

			if (l2o < 0) {
				diag("%s: L1[%" PRIu64 "]: %s", s->name, l1i, err);
				good = false;
				break;
			}
			if (l2o > 0) {
				u64 avail = len - l2o;

				if (avail > qi.cluster_size)
					avail = qi.cluster_size;

				memset(l2buf, 0, qi.cluster_size);
				memcpy(l2buf, img + l2o, avail);
				qcow2_l2_entry_load(&qi, l2buf, (unsigned int)l2i, &e);
				t = qcow2_l2_type(&qi, &e, sc, &err);
			}
		}
		seen |= 1U << t;
		if (t == QCOW2_CL_INVALID) {
			diag("%s: guest %#" PRIx64 ": invalid: %s", s->name, guest, err);
			good = false;
			break;
		}
		if (t == QCOW2_CL_NORMAL || t == QCOW2_CL_ZERO_ALLOC ||
		    t == QCOW2_CL_UNALLOCATED_ALLOC) {
			host = qcow2_l2_host_offset(&qi, &e, len, &err);
			if (host < 0) {
				diag("%s: guest %#" PRIx64 ": %s", s->name, guest, err);
				good = false;
				break;
			}
			host += (s64)sc << qi.subcluster_bits;
		}
		if (t == QCOW2_CL_COMPRESSED) {
			u64 last;

			if (qcow2_decode_compressed(&qi, e.entry, len, &c, &err)) {
				diag("%s: guest %#" PRIx64 ": %s", s->name, guest, err);
				good = false;
				break;
			}
			last = c.offset + c.nb_sectors * 512 - (c.offset & 511) - 1;
			if (last >= len + 511) {
				diag("%s: compressed data past EOF", s->name);
				good = false;
			}
			crossing += (last >> qi.cluster_bits) != (c.offset >> qi.cluster_bits);
		}
		if (!check_unit_data(&qi, img, len, raw, guest, end, t, host, &c, &checked)) {
			if (data_bad++ < 5)
				diag("%s: guest %#" PRIx64 " (%s): data differs from qemu-img "
				     "convert", s->name, guest, type_name(t));
		}
		data_checked += checked;
		present = t == QCOW2_CL_NORMAL || t == QCOW2_CL_COMPRESSED ||
			  t == QCOW2_CL_ZERO_PLAIN || t == QCOW2_CL_ZERO_ALLOC;
		data = t == QCOW2_CL_NORMAL || t == QCOW2_CL_COMPRESSED;
		zero = !data;	/* no backing file: unallocated reads as zeros */

		/* Every extent overlapping [guest, end) must agree. */
		for (pos = guest; pos < end;) {
			const struct extent *x;
			bool m = false;

			while (ei < n_ext && ext[ei].start + ext[ei].length <= pos)
				ei++;
			if (ei >= n_ext || ext[ei].start > pos) {
				diag("%s: no map extent at %#" PRIx64, s->name, pos);
				good = false;
				break;
			}
			x = &ext[ei];
			m |= x->present != present || x->data != data;
			/* NORMAL may read as zero when the host file is sparse. */
			m |= t != QCOW2_CL_NORMAL && x->zero != zero;
			/* QEMU reports an offset exactly when a host cluster backs it. */
			m |= (host >= 0) != x->has_offset;
			if (host >= 0 && x->has_offset)
				m |= x->offset + (pos - x->start) != (u64)host + (pos - guest);
			if (m && mismatches++ < 5)
				diag("%s: guest %#" PRIx64 " %s host %#" PRIx64 " vs map start %#"
				     PRIx64 " present %d zero %d data %d offset %#" PRIx64,
				     s->name, pos, type_name(t), (u64)host, x->start, x->present,
				     x->zero, x->data, x->offset);
			pos = x->start + x->length < end ? x->start + x->length : end;
		}
	}
	ok(good && !mismatches && units, "qemu map %s: %u units classified like qemu-img map",
	   s->name, units);
	if (!ok((seen & s->expect_types) == s->expect_types,
		"qemu map %s: expected cluster types present", s->name))
		diag("seen %#x expected %#x", seen, s->expect_types);
	if (s->expect_cross)
		ok(crossing > 0, "qemu map %s: %u compressed streams cross a host cluster boundary",
		   s->name, crossing);
	ok(good && !data_bad && data_checked,
	   "qemu map %s: data of %u units matches qemu-img convert", s->name, data_checked);
out:
	free(raw);
	free(l2buf);
	free(ext);
	free(js);
	free(img);
}

#define STD_IO		"-c 'write -P 0xab 0 64k' -c 'write -z 128k 64k' " \
			"-c 'write -c -P 0xcd 256k 64k' -c 'write -P 0x11 400k 4k' " \
			"-c 'write -P 0xab 1M 64k' -c 'write -z 1M 64k'"
#define ALL_STD		(T(UNALLOCATED) | T(NORMAL) | T(ZERO_PLAIN) | T(ZERO_ALLOC) | \
			 T(COMPRESSED))

static const struct map_spec map_images[] = {
	{ .name = "m-64k.qcow2",
	  .setup = CREATE "m-64k.qcow2 4M && " IO("m-64k.qcow2", STD_IO),
	  .expect_types = ALL_STD },
	{ .name = "m-4k.qcow2",
	  .setup = CREATE "-o cluster_size=4k m-4k.qcow2 4M && " IO("m-4k.qcow2", STD_IO),
	  .expect_types = ALL_STD },
	{ .name = "m-512.qcow2",
	  .setup = CREATE "-o cluster_size=512 m-512.qcow2 3M && " IO("m-512.qcow2", STD_IO),
	  .expect_types = ALL_STD },
	{ .name = "m-2M.qcow2",
	  .setup = CREATE "-o cluster_size=2M m-2M.qcow2 16M && "
		   IO("m-2M.qcow2", "-c 'write -P 0xab 0 64k' -c 'write -z 4M 2M' "
		      "-c 'write -c -P 0xcd 8M 2M' -c 'write -P 1 12M 2M' "
		      "-c 'write -z 12M 2M'"),
	  .expect_types = ALL_STD },
	{ .name = "m-v2.qcow2",
	  .setup = CREATE "-o compat=0.10 m-v2.qcow2 4M && "
		   IO("m-v2.qcow2", "-c 'write -P 0xab 0 64k' -c 'write -z 128k 64k' "
		      "-c 'write -c -P 0xcd 256k 64k' -c 'write -P 0x11 400k 4k'"),
	  .expect_types = T(UNALLOCATED) | T(NORMAL) | T(COMPRESSED) },
	{ .name = "m-zstd.qcow2",
	  .setup = CREATE "-o compression_type=zstd m-zstd.qcow2 4M && "
		   IO("m-zstd.qcow2", STD_IO),
	  .expect_types = ALL_STD },
	{ .name = "m-extl2.qcow2",
	  .setup = CREATE "-o extended_l2=on m-extl2.qcow2 4M && "
		   IO("m-extl2.qcow2", "-c 'write -P 0xaa 0 2k' -c 'write -P 0xaa 6k 2k' "
		      "-c 'write -z 64k 4k' -c 'write -P 0x55 128k 64k' "
		      "-c 'write -z 136k 8k' -c 'write -c -P 0xcd 256k 64k' "
		      "-c 'write -z 1M 64k'"),
	  .expect_types = ALL_STD | T(UNALLOCATED_ALLOC) },
	{ .name = "m-extl2-16k.qcow2",
	  .setup = CREATE "-o extended_l2=on,cluster_size=16k m-extl2-16k.qcow2 2M && "
		   IO("m-extl2-16k.qcow2", "-c 'write -P 0xaa 512 512' -c 'write -z 16k 1k' "
		      "-c 'write -P 1 32k 16k' -c 'write -z 33k 2k' "
		      "-c 'write -c -P 2 64k 16k'"),
	  .expect_types = ALL_STD | T(UNALLOCATED_ALLOC) },
	/* ~40 KB of random data per 64k cluster: streams straddle host clusters */
	{ .name = "m-conv.qcow2",
	  .setup = "head -c 1M /dev/zero > m-conv.raw && "
		   "for i in 0 1 2 3 4 5 6 7; do head -c 40000 /dev/urandom | "
		   "dd of=m-conv.raw bs=64k seek=$i conv=notrunc status=none; done && "
		   "qemu-img convert -c -O qcow2 m-conv.raw m-conv.qcow2",
	  .expect_types = T(COMPRESSED) | T(UNALLOCATED), .expect_cross = true },
	{ .name = "m-snap.qcow2",
	  .setup = CREATE "-o refcount_bits=2 m-snap.qcow2 4M && "
		   IO("m-snap.qcow2", "-c 'write -P 0xab 0 256k'") " && "
		   "qemu-img snapshot -c s1 m-snap.qcow2 && "
		   IO("m-snap.qcow2", "-c 'write -P 0xcd 64k 4k' -c 'write -z 1M 64k'"),
	  .expect_types = T(UNALLOCATED) | T(NORMAL) | T(ZERO_PLAIN) },
};


/* Refcounts and COPIED flags after a snapshot, for 2..64 bit refcounts. */
static void check_snapshot_refcounts(unsigned int bits)
{
	char name[32];
	struct qcow2_info qi;
	size_t len = 0;
	u8 *img = NULL;
	bool good;

	memset(&qi, 0, sizeof(qi));
	snprintf(name, sizeof(name), "rs%u.qcow2", bits);
	if (!ok(sh("qemu-img create -q -f qcow2 -o refcount_bits=%u %s 1M && "
		   "qemu-io -f qcow2 -c 'write -P 1 0 128k' %s && "
		   "qemu-img snapshot -c s1 %s && qemu-io -f qcow2 -c 'write -P 2 0 4k' %s",
		   bits, name, name, name, name) == 0,
		"qemu %s: create, write, snapshot, overwrite", name))
		return;
	good = parse_image(name, &img, &len, &qi);
	if (good) {
		u64 l1e = get64(img, qi.l1_table_offset);
		const char *err = NULL;
		s64 l2o = qcow2_l1_entry_l2_offset(&qi, l1e, len, &err);
		struct qcow2_l2_entry e0, e1;
		u64 h0, h1;

		good = l2o > 0 && (u64)l2o + 16 <= len && (l1e & QCOW2_OFLAG_COPIED) &&
		       image_refcount(&qi, img, len, l2o) == 1;
		if (good) {
			qcow2_l2_entry_load(&qi, img + l2o, 0, &e0);
			qcow2_l2_entry_load(&qi, img + l2o, 1, &e1);
			h0 = e0.entry & QCOW2_L2E_OFFSET_MASK;
			h1 = e1.entry & QCOW2_L2E_OFFSET_MASK;
			/* cluster 0 was copied (COW), cluster 1 is still shared */
			good = (e0.entry & CP) && !(e1.entry & CP) &&
			       image_refcount(&qi, img, len, h0) == 1 &&
			       image_refcount(&qi, img, len, h1) == 2;
		}
	}
	ok(good && qi.refcount_order < 7 && (1U << qi.refcount_order) == bits,
	   "qemu %s: refcounts 1 (copied) and 2 (shared) read with %u-bit entries", name, bits);
	free(img);
}

static bool have_qemu(void)
{
	return access("/usr/bin/qemu-img", X_OK) == 0 && access("/usr/bin/qemu-io", X_OK) == 0;
}

static void test_qemu(void)
{
	size_t i;
	unsigned int bits;

	if (!have_qemu()) {
		printf("ok %u - qemu-img tests # SKIP qemu-img/qemu-io not installed\n", ++n_tests);
		n_pass++;
		return;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/format-test.XXXXXX");
	if (!mkdtemp(tmpdir)) {
		ok(false, "mkdtemp");
		return;
	}
	for (i = 0; i < ARRAY_LEN(info_images); i++)
		check_info(&info_images[i]);
	for (i = 0; i < ARRAY_LEN(map_images); i++)
		check_map(&map_images[i]);
	for (bits = 2; bits <= 64; bits *= 2)
		check_snapshot_refcounts(bits);

	if (n_fail && getenv("FORMAT_TEST_KEEP")) {
		diag("images kept in %s", tmpdir);
	} else {
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
		if (system(cmd))
			diag("could not remove %s", tmpdir);
	}
}

int main(void)
{
	/* Finish (and remove the temp dir) even if the reader goes away. */
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("TAP version 13\n");
	test_peek();
	test_header_cases();
	test_header_details();
	test_derived();
	init_qis();
	test_l2_type();
	test_l2_table_load();
	test_subcluster_run();
	test_host_offset();
	test_l1_entry();
	test_compressed();
	test_refcounts();
	test_snapshots();
	test_qemu();
	printf("1..%u\n", n_tests);
	printf("# format-test: %u passed, %u failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}
