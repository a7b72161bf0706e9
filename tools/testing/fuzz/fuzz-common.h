/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the libFuzzer targets for qcow2-format.c: an input
 * reader, an invariant check that aborts, and a qcow2_info built the way
 * the module builds it (through qcow2_parse_header()).
 */
#ifndef _QCOW2_FUZZ_COMMON_H
#define _QCOW2_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#include "qcow2-format.h"

int LLVMFuzzerTestOneInput(const u8 *data, size_t size);

/* An invariant of the API: report and abort (libFuzzer keeps the input). */
#define CHECK(cond)							\
	do {								\
		if (!(cond)) {						\
			fprintf(stderr, "%s:%d: invariant failed: %s\n",\
				__FILE__, __LINE__, #cond);		\
			abort();					\
		}							\
	} while (0)

/* Sequential reader: past the end everything reads as zero. */
struct fz_in {
	const u8 *p;
	size_t len;
	size_t pos;
};

static inline u8 fz_u8(struct fz_in *in)
{
	return in->pos < in->len ? in->p[in->pos++] : 0;
}

static inline u64 fz_be(struct fz_in *in, unsigned int bytes)
{
	u64 v = 0;

	while (bytes--)
		v = (v << 8) | fz_u8(in);
	return v;
}

static inline const u8 *fz_rest(struct fz_in *in, size_t *len)
{
	*len = in->len - in->pos;
	return in->p + in->pos;
}

/* A copy of @len bytes in a buffer of exactly that size (ASan bounds). */
static inline u8 *fz_dup(const u8 *p, size_t len)
{
	u8 *b = malloc(len ? len : 1);

	CHECK(b);
	if (len)
		memcpy(b, p, len);
	return b;
}

static inline void fz_put_be(u8 *p, u64 v, unsigned int bytes)
{
	while (bytes--) {
		p[bytes] = (u8)v;
		v >>= 8;
	}
}

#define FZ_CFG_EXTL2	0x01
#define FZ_CFG_V2	0x02
#define FZ_CFG_DATAFILE	0x04
#define FZ_CFG_ZSTD	0x08

/*
 * Fill @qi for an image described by a config byte (FZ_CFG_*) and a
 * cluster_bits selector, by parsing a header built from them, as the module
 * does at open.  Returns false for combinations the parser refuses.
 */
static inline bool fz_make_info(u8 cfg, u8 cb_sel, struct qcow2_info *qi)
{
	u8 h[512] = { 0 };
	u32 cb = QCOW2_MIN_CLUSTER_BITS +
		 cb_sel % (QCOW2_MAX_CLUSTER_BITS - QCOW2_MIN_CLUSTER_BITS + 1);
	u64 cs = 1ULL << cb, incompat = 0;
	const char *err = NULL;

	if (cfg & FZ_CFG_V2)
		cfg &= ~(FZ_CFG_EXTL2 | FZ_CFG_DATAFILE | FZ_CFG_ZSTD);
	if ((cfg & FZ_CFG_EXTL2) && cb < QCOW2_MIN_EXT_L2_CLUSTER_BITS) {
		cb += QCOW2_MIN_EXT_L2_CLUSTER_BITS - QCOW2_MIN_CLUSTER_BITS;
		cs = 1ULL << cb;
	}
	if (cfg & FZ_CFG_EXTL2)
		incompat |= QCOW2_INCOMPAT_EXTL2;
	if (cfg & FZ_CFG_DATAFILE)
		incompat |= QCOW2_INCOMPAT_DATA_FILE;
	if (cfg & FZ_CFG_ZSTD)
		incompat |= QCOW2_INCOMPAT_COMPRESSION;
	fz_put_be(h + 0, QCOW2_MAGIC, 4);
	fz_put_be(h + 4, cfg & FZ_CFG_V2 ? 2 : 3, 4);
	fz_put_be(h + 20, cb, 4);
	fz_put_be(h + 24, 64ULL << 20, 8);		/* size: 64 MiB */
	fz_put_be(h + 36, 4096, 4);			/* l1_size: enough */
	fz_put_be(h + 40, 3 * cs, 8);			/* l1_table_offset */
	fz_put_be(h + 48, cs, 8);			/* refcount_table_offset */
	fz_put_be(h + 56, 1, 4);			/* refcount_table_clusters */
	fz_put_be(h + 72, incompat, 8);
	fz_put_be(h + 96, 4, 4);			/* refcount_order */
	fz_put_be(h + 100, 112, 4);			/* header_length */
	h[104] = cfg & FZ_CFG_ZSTD ? QCOW2_COMPRESSION_ZSTD : 0;

	return !qcow2_parse_header(h, sizeof(h), 1ULL << 50, qi, &err);
}

#endif /* _QCOW2_FUZZ_COMMON_H */
