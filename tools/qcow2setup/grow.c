// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2setup: room to grow for writable image files.
 *
 * A loop device has the size its file had when it was attached, and the
 * target allocates clusters inside the image device only.  So before a
 * writable image file is attached, it is extended (sparsely: no disk space
 * is used) to the largest size the image can reach while mapped:
 *
 *   end of the last cluster in use (from the refcounts)
 *   + every guest cluster allocated anew (data)
 *   + an L2 table for every L2 range
 *   + refcount blocks for all of that, and a refcount table for them
 *     twice (the target moves the table to a bigger one)
 *   + slack for clusters freed but not reusable before the next commit
 *
 * Clusters shared with internal snapshots or compressed ones that get
 * rewritten are covered: their old copies are part of "in use".  At close
 * the file is cut back to the end of its last cluster in use, never below
 * its size before open (qcow2setup close, after the mapping is gone).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2setup.h"

static uint64_t div_up(uint64_t a, uint64_t b)
{
	return a / b + !!(a % b);
}

/*
 * End (bytes) of the last cluster with a non-zero refcount.  Reads the
 * refcount table and, from its end backwards, refcount blocks until one has
 * a cluster in use.
 */
int image_used_end(struct layer *l, uint64_t *end)
{
	const struct qcow2_info *qi = &l->qi;
	uint64_t c = qi->cluster_size;
	uint64_t rt_bytes = (uint64_t)qi->refcount_table_clusters * c;
	uint64_t per_block = (c * 8) >> qi->refcount_order;
	uint64_t t, i;
	size_t got;
	__be64 *rt;
	void *blk;
	int r;

	*end = 0;
	rt = xmalloc(rt_bytes);
	blk = xmalloc(c);
	r = read_full(l->fd, rt, rt_bytes, qi->refcount_table_offset, &got);
	if (r || got < rt_bytes) {
		r = r ? r : -EIO;
		goto out;
	}
	for (t = rt_bytes / 8; t-- > 0;) {
		uint64_t off = be64_to_cpu(rt[t]) & QCOW2_REFT_OFFSET_MASK;

		if (!off)
			continue;
		if (off % c || off + c > l->size) {
			r = -EINVAL;
			goto out;
		}
		r = read_full(l->fd, blk, c, off, &got);
		if (r || got < c) {
			r = r ? r : -EIO;
			goto out;
		}
		for (i = per_block; i-- > 0;) {
			if (qcow2_refcount_get(blk, qi->refcount_order, i)) {
				*end = (t * per_block + i + 1) * c;
				goto out;
			}
		}
	}
out:
	free(blk);
	free(rt);
	return r;
}

/* Upper bound of the image file size while mapped writable. */
uint64_t image_max_size(const struct layer *l, uint64_t used_end)
{
	const struct qcow2_info *qi = &l->qi;
	uint64_t c = qi->cluster_size;
	uint64_t guest = div_up(qi->size, c);
	uint64_t l2 = div_up(guest, c >> qi->l2_entry_shift);
	uint64_t per_block = (c * 8) >> qi->refcount_order;
	uint64_t base = div_up(used_end, c) + guest + l2;
	uint64_t total = base, rt = 0;
	int k;

	for (k = 0; k < 4; k++) {
		uint64_t blocks = div_up(total, per_block);

		rt = div_up(div_up(total + blocks, per_block) * 8, c);
		total = base + blocks + 2 * rt;
	}
	total += total / 64 + 16;	/* slack: frees wait for a commit */
	if (total > (uint64_t)INT64_MAX / c)
		return (uint64_t)INT64_MAX & ~(c - 1);
	return total * c;
}
