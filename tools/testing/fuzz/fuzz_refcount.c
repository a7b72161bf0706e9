// SPDX-License-Identifier: GPL-2.0
/*
 * Fuzz target: refcount block get/set for every refcount_order (0..6, and
 * an invalid 7 that must do nothing).
 *
 * Input: a refcount_order selector, a block-size selector (512 bytes to
 * 64 KiB), an operation count, the operations (4-byte index, 8-byte value,
 * big-endian), then the initial block contents (zero padded).  Each set is
 * checked against a model of the format (sub-byte widths packed LSB first,
 * wider ones big-endian): the value reads back truncated to the width and
 * no other refcount in the block changes.
 */
#include "fuzz-common.h"

#define MAX_OPS		64
#define FULL_CHECK	4096	/* compare every entry of blocks this small */

static u64 model_get(const u8 *b, u32 order, u64 idx)
{
	u32 width = 1U << order, i;
	u64 bit = idx * width, v = 0;

	if (width < 8)
		return (b[bit / 8] >> (bit % 8)) & ((1U << width) - 1);
	for (i = 0; i < width / 8; i++)
		v = (v << 8) | b[bit / 8 + i];
	return v;
}

int LLVMFuzzerTestOneInput(const u8 *data, size_t size)
{
	struct fz_in in = { .p = data, .len = size };
	u32 order = fz_u8(&in) % 8;
	size_t bytes = (size_t)512 << (fz_u8(&in) % 8);
	unsigned int nops = fz_u8(&in) % (MAX_OPS + 1), k;
	u64 idx[MAX_OPS], val[MAX_OPS];
	u64 entries, mask, i;
	const u8 *rest;
	u8 *block, *before;
	size_t len;

	for (k = 0; k < nops; k++) {
		idx[k] = fz_be(&in, 4);
		val[k] = fz_be(&in, 8);
	}
	rest = fz_rest(&in, &len);
	block = malloc(bytes);
	before = malloc(bytes);
	CHECK(block && before);
	memset(block, 0, bytes);
	memcpy(block, rest, len < bytes ? len : bytes);

	if (order > QCOW2_MAX_REFCOUNT_ORDER) {
		/* Invalid orders read as 0 and never write. */
		memcpy(before, block, bytes);
		for (k = 0; k < nops; k++) {
			CHECK(qcow2_refcount_get(block, order, idx[k] % bytes) == 0);
			qcow2_refcount_set(block, order, idx[k] % bytes, val[k]);
		}
		CHECK(!memcmp(before, block, bytes));
		goto out;
	}

	entries = ((u64)bytes * 8) >> order;
	mask = order == 6 ? ~0ULL : (1ULL << (1U << order)) - 1;
	if (entries <= FULL_CHECK)
		for (i = 0; i < entries; i++)
			CHECK(qcow2_refcount_get(block, order, i) == model_get(block, order, i));

	for (k = 0; k < nops; k++) {
		u64 j = idx[k] % entries;
		u64 first = (j << order) / 8, last = (((j + 1) << order) - 1) / 8;
		/* Entries sharing a byte with entry j. */
		u64 lo = (first * 8) >> order, hi = (((last + 1) * 8) >> order) - 1, m;

		memcpy(before, block, bytes);
		CHECK(qcow2_refcount_get(block, order, j) == model_get(block, order, j));
		qcow2_refcount_set(block, order, j, val[k]);
		CHECK(qcow2_refcount_get(block, order, j) == (val[k] & mask));
		CHECK(model_get(block, order, j) == (val[k] & mask));
		/* Bytes outside the entry are untouched ... */
		CHECK(!memcmp(before, block, first));
		CHECK(!memcmp(before + last + 1, block + last + 1, bytes - last - 1));
		/* ... and so are the entries sharing its byte. */
		for (m = lo; m <= hi; m++)
			if (m != j)
				CHECK(model_get(before, order, m) == model_get(block, order, m));
		/* Setting the old value back restores the block. */
		qcow2_refcount_set(block, order, j, model_get(before, order, j));
		CHECK(!memcmp(before, block, bytes));
		qcow2_refcount_set(block, order, j, val[k]);
	}
out:
	free(before);
	free(block);
	return 0;
}
