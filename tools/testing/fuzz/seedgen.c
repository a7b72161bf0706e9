// SPDX-License-Identifier: GPL-2.0
/*
 * seedgen IMAGE OUTDIR KIB: turn one qcow2 image (made by qemu-img) into
 * seed inputs for the fuzz targets, in OUTDIR/<target>/:
 *   fuzz_header    device size + the first 4 KiB of the image
 *   fuzz_open      device size + the first KIB KiB of the image
 *   fuzz_l2        config + device size + the first used L2 tables (<= 4 KiB)
 *   fuzz_snapshot  config + device size + the snapshot table (<= 64 KiB)
 *   fuzz_refcount  order + block size + two operations + the first refcount
 *                  block (<= 4 KiB)
 * The image is parsed with the module's own qcow2-format.c.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <libgen.h>

#include "fuzz-common.h"

#define MAX_TABLE	4096
#define MAX_SNAP_TABLE	(64 << 10)

static u8 *img;
static size_t img_len;
static const char *outdir, *base;

static void put(const char *target, const char *suffix, const u8 *pre,
		size_t pre_len, u64 off, size_t len)
{
	char path[4096];
	FILE *f;

	if (off > img_len)
		off = img_len;
	if (len > img_len - off)
		len = img_len - off;
	snprintf(path, sizeof(path), "%s/%s/%s%s", outdir, target, base, suffix);
	f = fopen(path, "w");
	if (!f || fwrite(pre, 1, pre_len, f) != pre_len ||
	    fwrite(img + off, 1, len, f) != len || fclose(f)) {
		perror(path);
		exit(1);
	}
}

static u64 get_be64(u64 off)
{
	u64 v = 0;
	int i;

	for (i = 0; i < 8; i++)
		v = (v << 8) | (off + i < img_len ? img[off + i] : 0);
	return v;
}

/* Bytes of a table at @off up to its last non-zero @esz-byte entry. */
static size_t used_len(u64 off, size_t max, size_t esz)
{
	static const u8 zero[16];
	size_t n = 0, i;

	for (i = 0; i + esz <= max && off + i + esz <= img_len; i += esz)
		if (memcmp(img + off + i, zero, esz))
			n = i + esz;
	return n ? n : esz;
}

int main(int argc, char **argv)
{
	struct qcow2_info qi;
	const char *err = NULL;
	u8 pre[2 + 8 + 3 + 24];
	size_t kib, len, hlen, n;
	u64 i, l2, rb;
	FILE *f;
	u8 cfg;

	if (argc != 4) {
		fprintf(stderr, "usage: seedgen IMAGE OUTDIR KIB\n");
		return 2;
	}
	outdir = argv[2];
	base = basename(argv[1]);
	kib = strtoul(argv[3], NULL, 0);
	f = fopen(argv[1], "r");
	if (!f || fseek(f, 0, SEEK_END) || ftell(f) < 0) {
		perror(argv[1]);
		return 1;
	}
	img_len = ftell(f);
	img = malloc(img_len + 1);
	rewind(f);
	if (!img || fread(img, 1, img_len, f) != img_len) {
		perror(argv[1]);
		return 1;
	}
	fclose(f);

	fz_put_be(pre, img_len, 8);
	put("fuzz_header", "", pre, 8, 0, 4096);
	put("fuzz_open", "", pre, 8, 0, kib << 10);
	/* Encrypted: also as if unencrypted, to reach the crypto extension. */
	if (img_len >= 36 && get_be64(28) & 0xffffffff) {
		memset(img + 32, 0, 4);
		put("fuzz_header", "-nocrypt", pre, 8, 0, 4096);
		put("fuzz_open", "-nocrypt", pre, 8, 0, kib << 10);
	}

	hlen = img_len < (2U << 20) ? img_len : (2U << 20);
	if (qcow2_parse_header(img, hlen, img_len, &qi, &err)) {
		fprintf(stderr, "seedgen: %s: %s (fuzz_open seed only)\n", base, err);
		return 0;
	}
	cfg = (qi.extended_l2 ? FZ_CFG_EXTL2 : 0) | (qi.version == 2 ? FZ_CFG_V2 : 0) |
	      (qi.incompatible_features & QCOW2_INCOMPAT_DATA_FILE ? FZ_CFG_DATAFILE : 0) |
	      (qi.compression_type ? FZ_CFG_ZSTD : 0);
	pre[0] = cfg;
	pre[1] = qi.cluster_bits - QCOW2_MIN_CLUSTER_BITS;
	fz_put_be(pre + 2, img_len, 8);

	/* The first two L2 tables in use. */
	for (i = 0, n = 0; i < qi.l1_size && n < 2; i++) {
		l2 = get_be64(qi.l1_table_offset + i * 8) & QCOW2_L1E_OFFSET_MASK;
		if (!l2 || l2 >= img_len)
			continue;
		len = qi.cluster_size < MAX_TABLE ? qi.cluster_size : MAX_TABLE;
		put("fuzz_l2", n ? "-l2b" : "-l2a", pre, 10, l2,
		    used_len(l2, len, 1U << qi.l2_entry_shift));
		n++;
	}
	if (qi.nb_snapshots)
		put("fuzz_snapshot", "", pre, 10, qi.snapshots_offset, MAX_SNAP_TABLE);

	/* The first refcount block, with a set of 1 and a set of 0. */
	rb = get_be64(qi.refcount_table_offset) & QCOW2_REFT_OFFSET_MASK;
	if (rb && rb < img_len) {
		len = qi.cluster_size < MAX_TABLE ? qi.cluster_size : MAX_TABLE;
		pre[0] = qi.refcount_order;
		pre[1] = qi.cluster_bits - QCOW2_MIN_CLUSTER_BITS;
		pre[2] = 2;
		memset(pre + 3, 0, 24);
		fz_put_be(pre + 3, 5, 4);
		fz_put_be(pre + 7, 1, 8);
		fz_put_be(pre + 15, 1, 4);
		put("fuzz_refcount", "", pre, 27, rb, used_len(rb, len, 8));
	}
	return 0;
}
