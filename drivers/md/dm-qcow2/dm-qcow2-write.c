// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2 write path: cluster allocation, refcounts, copy-on-write,
 * discard and write-zeroes, and the metadata commit that flush and FUA wait
 * for.
 *
 * Only the top layer is written.  Metadata lives in memory between commits:
 * L2 and refcount-block slices in the metadata cache, the L1 and refcount
 * tables in arrays with a dirty bit per sector.  A commit makes it durable
 * in dependency order, so that a crash at any point leaves an image QEMU
 * accepts (at worst with leaked clusters):
 *
 *   1. refcount blocks (increments)                    FLUSH
 *      (data of new clusters, new L2 tables and refcount blocks were written
 *       before the commit started, so this flush covers them too)
 *   2. refcount table entries for new refcount blocks  FLUSH (only if any)
 *   3. L2 slices and L1 sectors                         FLUSH
 *      (a few of them: written with FUA instead, and with the flush of
 *       step 1 sent as their PREFLUSH, see qcow2_commit_copies())
 *   4. refcount decrements of references that step 3 removed   FLUSH
 *      (only if any).  A freed cluster is discarded on the device and reused
 *      only after I/O that may still use it has drained.
 *
 * So a reference is never durable before the refcount that covers it, data
 * never before the L2 entry that points to it, an L2 table never before its
 * L1 entry.  One commit serves every flush that arrived before it started
 * (group commit).
 *
 * Updates stop only while a commit copies the dirty slices and table
 * sectors of steps 1 to 3 (one instant: every reference in the copies has
 * its refcount in them); the copies are written while updates go on, and a
 * slice or sector changed meanwhile stays dirty for the next commit.  When
 * the dirty bit of lazy refcounts must be set first, or there is no memory
 * for the copies, updates stay stopped until step 3 is durable.  Moving
 * the refcount table (qcow2_grow_reftable()) waits for copies in flight.
 *
 * Locking: a guest cluster is modified under its cluster lock (hashed bit
 * locks); metadata state (tables, cache contents, allocator) under
 * meta_lock, never held across data I/O nor the write of a new L2 table
 * (qcow2_l2_writable()); updates hold update_sem for read
 * while they change metadata, and a commit holds it for write while it
 * copies or writes the slices.  A write
 * that allocates in map() (qcow2_alloc_in_map()) only tries its locks and
 * counts itself in fast_updates instead of update_sem while it changes
 * metadata; commits wait for that count too.  Data is written outside
 * updates: the L2 entry that points to it is stored when the write is done
 * (by its completion, in any context, for map(); by the worker after it
 * for workers), and fast_stores counts the stores to come.  A commit that
 * copies the L2 slice meanwhile (its refcounts count the cluster, its
 * entries do not yet: a leak at worst) leaves it dirty, and one that writes
 * slices from the cache itself, or must include every write in flight,
 * waits for them.  A free of what such an entry pointed to before is queued
 * in an update after the store.
 * Workers of qt->wq wait for cluster locks, and there are only so many of
 * them: nothing that holds a cluster lock (or counts in fast_updates or
 * fast_stores) may wait for an item of qt->wq.  The write of a copy made in map() is submitted from
 * qt->io_wq, and a failed allocation in map() lets go of its lock before a
 * worker gives its cluster back.
 */
#include <linux/blkdev.h>
#include <linux/hash.h>
#include <linux/ktime.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "dm-qcow2.h"

/* Writeback groups of the metadata cache, in commit order. */
#define QCOW2_GROUP_REFCOUNT	0
#define QCOW2_GROUP_MAPPING	1

/* Dirty slices one cluster update may add (L2, refblocks, new tables). */
#define QCOW2_UPDATE_SLICES	6
/* Dirty slices an allocation in map() may add (its L2 and refcount slice). */
#define QCOW2_MAP_ALLOC_SLICES	2
/* ... of up to QCOW2_BATCH_MAX contiguous clusters (L2, two refcount slices) */
#define QCOW2_MAP_RUN_SLICES	3
/* A new L2 table of at most this many slices enters the cache zero-filled. */
#define QCOW2_NEW_L2_SLICES	32
/* Step 3 of a commit that goes with FUA (qcow2_commit_copies()), at most. */
#define QCOW2_COMMIT_FUA_WRITES	8U
/* Whole clusters one write allocates at once (1 MiB of 64 KiB clusters). */
#define QCOW2_BATCH_MAX		16U
/* A fill around written data of at most this size goes in the data write. */
#define QCOW2_FILL_INLINE	(64U << 10)
/* Commit when this many freed ranges wait for their decrement. */
#define QCOW2_MAX_DEFERRED	4096

/* Dirty sectors of the L1 or refcount table taken to be written. */
struct qcow2_table_copy {
	unsigned long *secs;	/* which sectors: tc->nr of them */
	__be64 *buf;		/* their contents, in sector order */
	unsigned int nr;
};

/* Writes submitted together: the last one to complete wakes the waiter. */
struct qcow2_batch_io {
	atomic_t pending;
	struct completion done;
	blk_status_t status;
};

/* What a commit writes while updates go on (qcow2_commit_take()). */
struct qcow2_commit_set {
	struct qcow2_wb_set rc;		/* refcount slices */
	struct qcow2_table_copy rt;	/* refcount table sectors */
	struct qcow2_wb_set map;	/* L2 slices */
	struct qcow2_table_copy l1;	/* L1 sectors */
};

struct qcow2_deferred {
	struct list_head list;
	u64 offset;		/* host bytes */
	u64 len;
};

static int qcow2_defer_free(struct qcow2_target *qt, u64 offset, u64 len);
static int qcow2_set_dirty_bit(struct qcow2_target *qt, bool dirty);

static struct qcow2_layer *qcow2_top(struct qcow2_target *qt)
{
	return &qt->layers[0];
}

void qcow2_set_mode(struct qcow2_target *qt, enum qcow2_mode mode,
		    const char *why)
{
	if (qt->mode == mode || (qt->mode == QCOW2_MODE_FAIL))
		return;
	DMERR("%s: switching to %s mode: %s", qcow2_dev_name(qt),
	      mode == QCOW2_MODE_FAIL ? "fail" : "read-only", why);
	WRITE_ONCE(qt->mode, mode);
	dm_table_event(qt->ti->table);
}

/* Metadata contradicts itself: set the qcow2 corrupt bit and stop writing. */
void qcow2_corrupt(struct qcow2_target *qt, const char *why)
{
	__be64 incompat;

	if (!test_and_set_bit(QCOW2_FLAG_CORRUPT, &qt->flags)) {
		DMERR("%s: image is corrupt: %s; repair it with qemu-img check -r all",
		      qcow2_dev_name(qt), why);
		/* Version 2 headers end before the feature fields. */
		if (qcow2_top(qt)->qi.version >= 3) {
			incompat = cpu_to_be64(qcow2_top(qt)->qi.incompatible_features |
					       QCOW2_INCOMPAT_CORRUPT);
			qcow2_write_header(qt, offsetof(struct qcow2_header,
							incompatible_features),
					   &incompat, sizeof(incompat));
		}
	}
	qcow2_set_mode(qt, QCOW2_MODE_RO, "corrupt metadata");
}

/* ----------------------------------------------------------------------- */
/* L1 and refcount tables: in-memory arrays written back by sector         */

static void qcow2_table_dirty(unsigned long *bits, u64 index)
{
	set_bit((index * sizeof(u64)) >> SECTOR_SHIFT, bits);
}

static u64 qcow2_table_sectors(u64 entries)
{
	return DIV_ROUND_UP(entries * sizeof(u64), SECTOR_SIZE);
}

/* The on-disk form of sector @sec of @table, into @buf. */
static void qcow2_table_encode(const u64 *table, u64 entries, unsigned long sec,
			       __be64 *buf)
{
	const unsigned int per = SECTOR_SIZE / sizeof(u64);
	unsigned int i;

	for (i = 0; i < per; i++) {
		u64 idx = (u64)sec * per + i;

		buf[i] = cpu_to_be64(idx < entries ? READ_ONCE(table[idx]) : 0);
	}
}

static void qcow2_batch_end_io(struct bio *bio)
{
	struct qcow2_batch_io *b = bio->bi_private;

	if (bio->bi_status)
		WRITE_ONCE(b->status, bio->bi_status);
	bio_put(bio);
	if (atomic_dec_and_test(&b->pending))
		complete(&b->done);
}

static void qcow2_table_copy_free(struct qcow2_table_copy *tc)
{
	bitmap_free(tc->secs);
	kfree(tc->buf);
	tc->secs = NULL;
	tc->buf = NULL;
	tc->nr = 0;
}

/*
 * Take up to @max dirty sectors of @table to be written by
 * qcow2_table_copy_write(): copy them and clear their bits.  A sector
 * changed after this is dirty again.  Called with updates excluded.
 * Returns -ENOMEM (nothing taken) if the copy gets no memory from @gfp.
 */
static int qcow2_table_copy_take(const u64 *table, u64 entries, unsigned long *dirty,
				 unsigned int max, gfp_t gfp, struct qcow2_table_copy *tc)
{
	u64 nr = qcow2_table_sectors(entries);
	unsigned long sec;
	unsigned int i = 0;

	tc->nr = min_t(u64, bitmap_weight(dirty, nr), max);
	tc->secs = NULL;
	tc->buf = NULL;
	if (!tc->nr)
		return 0;
	tc->secs = bitmap_zalloc(nr, gfp);
	tc->buf = kmalloc_array(tc->nr, SECTOR_SIZE, gfp);
	if (!tc->secs || !tc->buf) {
		qcow2_table_copy_free(tc);
		return -ENOMEM;
	}
	for_each_set_bit(sec, dirty, nr) {
		if (i == tc->nr)
			break;
		qcow2_table_encode(table, entries, sec,
				   tc->buf + (size_t)i++ * (SECTOR_SIZE / sizeof(u64)));
		set_bit(sec, tc->secs);
		clear_bit(sec, dirty);
	}
	return 0;
}

/* A copy not written (or not durable): its sectors are dirty again. */
static void qcow2_table_copy_cancel(struct qcow2_table_copy *tc, u64 entries,
				    unsigned long *dirty)
{
	unsigned long sec;

	if (tc->secs)
		for_each_set_bit(sec, tc->secs, qcow2_table_sectors(entries))
			set_bit(sec, dirty);
	qcow2_table_copy_free(tc);
}

/* Sectors of a table one request writes at most (a run may take several). */
#define QCOW2_TABLE_IO_SECTORS	128U

/*
 * Submit the write of @len bytes of kmalloc'ed @buf at byte @offset of the
 * image, with @flags (REQ_PREFLUSH, REQ_FUA) too.
 */
static void qcow2_table_submit(struct qcow2_target *qt, u64 offset, void *buf, u32 len,
			       blk_opf_t flags, struct qcow2_batch_io *b)
{
	struct block_device *bdev = qcow2_top(qt)->dev->bdev;
	unsigned int nr = DIV_ROUND_UP(offset_in_page(buf) + len, PAGE_SIZE);
	struct bio *bio;
	u32 n;

	bio = bio_alloc_bioset(bdev, nr, REQ_OP_WRITE | REQ_SYNC | REQ_META | flags,
			       GFP_NOIO, &qt->write_bs);
	bio->bi_iter.bi_sector = offset >> SECTOR_SHIFT;
	for (; len; buf += n, len -= n) {
		n = min_t(u32, len, PAGE_SIZE - offset_in_page(buf));
		__bio_add_page(bio, virt_to_page(buf), n, offset_in_page(buf));
	}
	bio->bi_private = b;
	bio->bi_end_io = qcow2_batch_end_io;
	atomic_inc(&b->pending);
	submit_bio(bio);
}

/*
 * Write the copy taken by qcow2_table_copy_take() to the table at @offset and
 * free it: each run of adjacent sectors in one request (up to
 * QCOW2_TABLE_IO_SECTORS), all submitted together and waited for once.
 * @flags (REQ_PREFLUSH, REQ_FUA) go on every request.  Returns the number
 * of sectors written or a negative errno, in which case the sectors are
 * dirty again.  @redirtied (if not NULL) counts the sectors changed since
 * the copy (dirty again already).
 */
static int qcow2_table_copy_write(struct qcow2_target *qt, struct qcow2_table_copy *tc,
				  u64 entries, u64 offset, unsigned long *dirty,
				  blk_opf_t flags, unsigned int *redirtied)
{
	struct qcow2_batch_io b = { .status = BLK_STS_OK };
	u64 nr = qcow2_table_sectors(entries);
	unsigned int first, end, n, i = 0;
	struct blk_plug plug;
	unsigned long sec;
	int r;

	if (redirtied)
		*redirtied = 0;
	if (!tc->nr)
		return 0;
	atomic_set(&b.pending, 1);
	init_completion(&b.done);
	blk_start_plug(&plug);
	for_each_set_bitrange(first, end, tc->secs, nr) {
		for (; first < end; first += n, i += n) {
			n = min(end - first, QCOW2_TABLE_IO_SECTORS);
			qcow2_table_submit(qt, offset + (u64)first * SECTOR_SIZE,
					   tc->buf + (size_t)i * (SECTOR_SIZE / sizeof(u64)),
					   n * SECTOR_SIZE, flags, &b);
		}
	}
	blk_finish_plug(&plug);
	if (!atomic_dec_and_test(&b.pending))
		wait_for_completion_io(&b.done);
	r = blk_status_to_errno(READ_ONCE(b.status));
	if (r) {
		DMERR_LIMIT("%s: write of %u table sectors at %llu failed: %d",
			    qcow2_dev_name(qt), tc->nr, offset, r);
		qcow2_table_copy_cancel(tc, entries, dirty);
		return r;
	}
	if (redirtied)
		for_each_set_bit(sec, tc->secs, nr)
			if (test_bit(sec, dirty))
				(*redirtied)++;
	r = tc->nr;
	qcow2_table_copy_free(tc);
	return r;
}

/*
 * Write the dirty sectors of @table back with updates excluded all along,
 * a page's worth at a time, so that the copy needs no more than a page
 * (and a bitmap) of memory.  Sets *@wrote if any were written.
 */
static int qcow2_table_writeback(struct qcow2_target *qt, const u64 *table,
				 u64 entries, u64 offset, unsigned long *dirty,
				 bool *wrote)
{
	struct qcow2_table_copy tc;
	int r;

	do {
		r = qcow2_table_copy_take(table, entries, dirty, PAGE_SIZE / SECTOR_SIZE,
					  GFP_NOIO, &tc);
		if (!r)
			r = qcow2_table_copy_write(qt, &tc, entries, offset, dirty, 0, NULL);
		if (r > 0)
			*wrote = true;
	} while (r > 0);
	return r;
}

/* ----------------------------------------------------------------------- */
/* Metadata clusters                                                       */

/*
 * Does host cluster @c overlap metadata the header points to (the header,
 * the L1 table, the refcount table, the snapshot table's first cluster)?
 * No data may be written there and none of it may be freed.
 */
static bool qcow2_is_fixed_metadata(struct qcow2_target *qt, u64 c)
{
	const struct qcow2_info *qi = &qcow2_top(qt)->qi;
	u64 off = c << qi->cluster_bits, end = off + qi->cluster_size;

	return !c ||
	       (off < qi->l1_table_offset + (u64)qi->l1_size * 8 &&
		end > qi->l1_table_offset) ||
	       (off < qi->refcount_table_offset +
		((u64)qi->refcount_table_clusters << qi->cluster_bits) &&
		end > qi->refcount_table_offset) ||
	       (qi->nb_snapshots && off == qi->snapshots_offset);
}

/*
 * The metadata index (qt->meta_index) maps a host cluster of the top layer to
 * what it holds besides the metadata at places the header names: a count of
 * active L1 entries using it as their L2 table, a refcount block, a cluster of
 * a snapshot (its table entry, its L1 table, an L2 table it uses).  Built at
 * open from tables in memory, the snapshot table and the snapshot L1 tables,
 * and kept current under meta_lock by the allocator; looked up locklessly.
 */
unsigned long qcow2_meta_kinds(struct qcow2_target *qt, u64 c)
{
	void *v;

	if ((unsigned long)c != c)
		return 0;
	v = xa_load(&qt->meta_index, c);
	return v ? xa_to_value(v) : 0;
}

/* Record host cluster @c as a @kind (QCOW2_META_*); L2 uses are counted. */
int qcow2_meta_add(struct qcow2_target *qt, u64 c, unsigned long kind, gfp_t gfp)
{
	unsigned long v = qcow2_meta_kinds(qt, c);

	if ((unsigned long)c != c)
		return -EFBIG;
	v = kind == QCOW2_META_L2 ? v + kind : v | kind;
	return xa_err(xa_store(&qt->meta_index, c, xa_mk_value(v), gfp));
}

/* An active L1 entry no longer uses host cluster @c as its L2 table. */
static void qcow2_meta_put_l2(struct qcow2_target *qt, u64 c)
{
	unsigned long v = qcow2_meta_kinds(qt, c);

	if (v < QCOW2_META_L2)
		return;
	v -= QCOW2_META_L2;
	if (v)	/* replaces an existing entry: allocates nothing */
		xa_store(&qt->meta_index, c, xa_mk_value(v), GFP_NOWAIT);
	else
		xa_erase(&qt->meta_index, c);
}

/*
 * Is host cluster @c the L2 table of exactly one active L1 entry and nothing
 * else, so that it may be changed in place?
 */
bool qcow2_l2_exclusive(struct qcow2_target *qt, u64 c)
{
	return qcow2_meta_kinds(qt, c) == QCOW2_META_L2 && !qcow2_is_fixed_metadata(qt, c);
}

/*
 * Offset of the L2 table that maps guest byte @guest if the image owns it
 * alone (COPIED, no snapshot refers to it), so that its entries may change
 * in place; else 0 (none, shared, or a bad L1 entry: the worker reports it).
 */
s64 qcow2_own_l2(struct qcow2_target *qt, u64 guest)
{
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	u64 l1_idx = guest >> (qi->cluster_bits + qi->l2_bits);
	const char *err;
	u64 l1e;
	s64 l2;

	if (guest >= top->size || l1_idx >= top->l1_size)
		return 0;
	l1e = READ_ONCE(top->l1[l1_idx]);
	if (!(l1e & QCOW2_OFLAG_COPIED))
		return 0;
	l2 = qcow2_l1_entry_l2_offset(qi, l1e, top->dev_size, &err);
	if (l2 <= 0 || !qcow2_l2_exclusive(qt, l2 >> qi->cluster_bits))
		return 0;
	return l2;
}

/* Is host cluster @c metadata, so that no data may go there nor be freed? */
bool qcow2_is_metadata(struct qcow2_target *qt, u64 c)
{
	return qcow2_is_fixed_metadata(qt, c) || qcow2_meta_kinds(qt, c);
}

/*
 * The host cluster of L2 entry @l2e of the top layer when data may be
 * written into it in place: a cluster of our own (COPIED), not compressed,
 * inside the device and not metadata.  -1 otherwise (the worker decides
 * what to do, and reports a corrupt entry).
 */
s64 qcow2_own_host(struct qcow2_layer *top, const struct qcow2_l2_entry *l2e)
{
	const struct qcow2_info *qi = &top->qi;
	const char *err;
	s64 h;

	if (!(l2e->entry & QCOW2_OFLAG_COPIED) || (l2e->entry & QCOW2_OFLAG_COMPRESSED))
		return -1;
	h = qcow2_l2_host_offset(qi, l2e, top->dev_size, &err);
	if (h <= 0 || h + qi->cluster_size > top->dev_size ||
	    qcow2_is_metadata(top->qt, h >> qi->cluster_bits))
		return -1;
	return h;
}

/* ----------------------------------------------------------------------- */
/* Refcounts                                                               */

/*
 * Find the refcount entry of host cluster @cluster.  Returns 1 if no
 * refcount block covers it (refcount 0), 0 with the slice pinned in *@sp and
 * the entry index in *@idx, or a negative errno.
 */
static int qcow2_refcount_slice(struct qcow2_target *qt, u64 cluster,
				struct qcow2_slice **sp, u64 *idx, bool nowait)
{
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	u64 rt = cluster >> qt->rb_bits;
	u64 entry = cluster & ((1ULL << qt->rb_bits) - 1);
	u32 slice_entries_bits = top->slice_bits + 3 - qi->refcount_order;
	u64 rb, byte;
	struct qcow2_slice *s;

	if (rt >= qt->reftable_entries)
		return 1;
	rb = qt->reftable[rt] & QCOW2_REFT_OFFSET_MASK;
	if (!rb)
		return 1;
	if ((rb & (qi->cluster_size - 1)) || rb + qi->cluster_size > top->dev_size ||
	    (qt->reftable[rt] & QCOW2_REFT_RESERVED_MASK)) {
		if (nowait)
			return -EWOULDBLOCK;	/* qcow2_corrupt() does I/O */
		qcow2_corrupt(qt, "refcount table entry invalid");
		return -EIO;
	}
	if (qcow2_is_fixed_metadata(qt, rb >> qi->cluster_bits) ||
	    qcow2_meta_kinds(qt, rb >> qi->cluster_bits) & ~QCOW2_META_REFBLOCK) {
		if (nowait)
			return -EWOULDBLOCK;
		qcow2_corrupt(qt, "refcount block overlaps other metadata");
		return -EIO;
	}
	byte = (entry << qi->refcount_order) >> 3;
	s = qcow2_slice_get(qt->cache, top, rb + (byte & ~((1ULL << top->slice_bits) - 1)),
			    nowait);
	if (IS_ERR(s))
		return PTR_ERR(s);
	*sp = s;
	*idx = entry & ((1ULL << slice_entries_bits) - 1);
	return 0;
}

/* Add @delta to the refcount of host cluster @cluster (it has a block). */
static int qcow2_refcount_add(struct qcow2_target *qt, u64 cluster, s64 delta,
			      u64 *result)
{
	struct qcow2_layer *top = qcow2_top(qt);
	u32 order = top->qi.refcount_order;
	u64 max = order == 6 ? U64_MAX : (1ULL << (1U << order)) - 1;
	struct qcow2_slice *s;
	u64 idx, v;
	int r;

	r = qcow2_refcount_slice(qt, cluster, &s, &idx, false);
	if (r) {
		if (r == 1)
			qcow2_corrupt(qt, "reference to a cluster without refcount block");
		return r > 0 ? -EIO : r;
	}
	v = qcow2_refcount_get(qcow2_slice_data(s), order, idx);
	if ((delta < 0 && v < (u64)-delta) || (delta > 0 && max - v < (u64)delta)) {
		qcow2_slice_put(qt->cache, s);
		qcow2_corrupt(qt, delta < 0 ? "refcount underflow" : "refcount overflow");
		return -EIO;
	}
	qcow2_refcount_set(qcow2_slice_data(s), order, idx, v + delta);
	qcow2_slice_mark_dirty(qt->cache, s, QCOW2_GROUP_REFCOUNT);
	qcow2_slice_put(qt->cache, s);
	if (v + delta == 0 && cluster < qt->free_hint)
		qt->free_hint = cluster;
	if (result)
		*result = v + delta;
	return 0;
}

/* Update the header field(s) at @offset: read-modify-write of sector 0 + flush. */
int qcow2_write_header(struct qcow2_target *qt, unsigned int offset,
		       const void *val, unsigned int len)
{
	struct qcow2_layer *top = qcow2_top(qt);
	void *buf;
	int r;

	buf = kmalloc(SECTOR_SIZE, GFP_NOIO);
	if (!buf)
		return -ENOMEM;
	r = qcow2_read_bytes(qt, top, 0, buf, SECTOR_SIZE);
	if (!r) {
		memcpy(buf + offset, val, len);
		r = qcow2_write_bytes(qt, top, 0, buf, SECTOR_SIZE);
	}
	if (!r)
		r = blkdev_issue_flush(top->dev->bdev);
	kfree(buf);
	return r;
}

static int qcow2_zero_cluster(struct qcow2_target *qt, u64 offset)
{
	struct qcow2_layer *top = qcow2_top(qt);

	return blkdev_issue_zeroout(top->dev->bdev, offset >> SECTOR_SHIFT,
				    top->qi.cluster_size >> SECTOR_SHIFT,
				    GFP_NOIO, BLKDEV_ZERO_NOUNMAP);
}

/*
 * The refcount table is full: move it to a bigger one at the start of the
 * first host range it does not cover, together with a refcount block for that
 * range which also covers the new table.  The switch is one header write.
 */
static int qcow2_grow_reftable(struct qcow2_target *qt, u64 rt_needed)
{
	struct qcow2_layer *top = qcow2_top(qt);
	struct qcow2_info *qi = &top->qi;
	u64 k = qt->reftable_entries;
	u64 base = k << qt->rb_bits;		/* first cluster of range k */
	u64 per_cluster = qi->cluster_size / sizeof(u64);
	u64 entries = max(rt_needed + 1, k + k / 2 + 1);
	u64 n, i, old_off = qi->refcount_table_offset;
	u64 old_len = (u64)qi->refcount_table_clusters << qi->cluster_bits;
	unsigned long *dirty = NULL;
	u64 *table = NULL;
	void *buf = NULL;
	struct {
		__be64 offset;
		__be32 clusters;
	} __packed hdr;
	int r;

	entries = round_up(entries, per_cluster);
	n = entries / per_cluster;
	if (entries * sizeof(u64) > QCOW2_MAX_REFTABLE_BYTES || n + 1 > (1ULL << qt->rb_bits))
		return -EFBIG;
	if ((base + 1 + n) << qi->cluster_bits > top->dev_size)
		return -ENOSPC;
	/* Nothing lives where no refcount block covers it, unless corrupt. */
	for (i = 0; i <= n; i++) {
		if (qcow2_is_metadata(qt, base + i)) {
			qcow2_corrupt(qt, "metadata in clusters without refcount block");
			return -EIO;
		}
	}

	/*
	 * Entries of the new table must only point to durable blocks: the
	 * slices a commit took copies of are off the dirty list until the
	 * copies are written, so wait for those first.  No commit takes new
	 * copies meanwhile (this is an update).
	 */
	wait_event(qt->copies_wait, !smp_load_acquire(&qt->copies_busy));
	r = qcow2_cache_writeback(qt->cache, QCOW2_GROUP_REFCOUNT);
	if (r >= 0)
		r = blkdev_issue_flush(top->dev->bdev);
	if (r)
		return r;

	table = kvcalloc(entries, sizeof(u64), GFP_NOIO);
	dirty = bitmap_zalloc(DIV_ROUND_UP(entries * sizeof(u64), SECTOR_SIZE), GFP_NOIO);
	buf = kvzalloc(max_t(u64, qi->cluster_size, n << qi->cluster_bits), GFP_NOIO);
	if (!table || !dirty || !buf) {
		r = -ENOMEM;
		goto out;
	}
	r = qcow2_meta_add(qt, base, QCOW2_META_REFBLOCK, GFP_NOIO);
	if (r)
		goto out;
	/* The refcount block of range k: itself and the n table clusters. */
	for (i = 0; i <= n; i++)
		qcow2_refcount_set(buf, qi->refcount_order, i, 1);
	qcow2_cache_invalidate(qt->cache, top, base << qi->cluster_bits,
			       (n + 1) << qi->cluster_bits);
	r = qcow2_write_bytes(qt, top, base << qi->cluster_bits, buf, qi->cluster_size);
	if (r)
		goto out;

	memcpy(table, qt->reftable, k * sizeof(u64));
	table[k] = base << qi->cluster_bits;
	memset(buf, 0, qi->cluster_size);
	for (i = 0; i < entries; i++)
		((__be64 *)buf)[i] = cpu_to_be64(table[i]);
	r = qcow2_write_bytes(qt, top, (base + 1) << qi->cluster_bits, buf,
			      n << qi->cluster_bits);
	if (!r)
		r = blkdev_issue_flush(top->dev->bdev);
	if (r)
		goto out;

	hdr.offset = cpu_to_be64((base + 1) << qi->cluster_bits);
	hdr.clusters = cpu_to_be32(n);
	r = qcow2_write_header(qt, offsetof(struct qcow2_header, refcount_table_offset),
			       &hdr, sizeof(hdr));
	if (r)
		goto out;

	swap(qt->reftable, table);
	swap(qt->reftable_dirty, dirty);
	qt->reftable_entries = entries;
	qi->refcount_table_offset = (base + 1) << qi->cluster_bits;
	qi->refcount_table_clusters = n;
	/* The old table is garbage once the header switch is durable (it is). */
	r = qcow2_defer_free(qt, old_off, old_len);
out:
	if (r && qt->reftable_entries != entries)	/* not switched */
		xa_erase(&qt->meta_index, base);
	kvfree(buf);
	bitmap_free(dirty);
	kvfree(table);
	return r;
}

/* Give host range @rt a refcount block, placed at its own first cluster. */
static int qcow2_new_refblock(struct qcow2_target *qt, u64 rt)
{
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	u64 off = (rt << qt->rb_bits) << qi->cluster_bits;
	struct qcow2_slice *s;
	int r;

	if (rt >= qt->reftable_entries) {
		r = qcow2_grow_reftable(qt, rt);
		/* Growing placed a block for the first uncovered range. */
		return r;
	}
	if (off + qi->cluster_size > top->dev_size)
		return -ENOSPC;
	/* No block for clusters in use (range 0 has the header): corrupt. */
	if (qcow2_is_metadata(qt, off >> qi->cluster_bits)) {
		qcow2_corrupt(qt, "no refcount block for metadata clusters");
		return -EIO;
	}
	r = qcow2_meta_add(qt, off >> qi->cluster_bits, QCOW2_META_REFBLOCK, GFP_NOIO);
	if (r)
		return r;
	qcow2_cache_invalidate(qt->cache, top, off, qi->cluster_size);
	r = qcow2_zero_cluster(qt, off);
	if (r)
		return r;
	s = qcow2_slice_get_new(qt->cache, top, off);
	qcow2_refcount_set(qcow2_slice_data(s), qi->refcount_order, 0, 1);
	qcow2_slice_mark_dirty(qt->cache, s, QCOW2_GROUP_REFCOUNT);
	qcow2_slice_put(qt->cache, s);
	qt->reftable[rt] = off;
	qcow2_table_dirty(qt->reftable_dirty, rt);
	return 0;
}

/*
 * Zeroing ahead.  Without extended L2, a write of part of a new cluster must
 * write zeros over the rest of it: 60 KiB of zeros next to a 4 KiB write at
 * 64 KiB clusters.  Where the device has write-zeroes, the free clusters
 * after the allocator's position are zeroed ahead instead, a few MiB in one
 * request (which may unmap them), and a partial write to a cluster taken
 * from that range writes only its data.  The range is only started, and
 * refilled when half of it is used, for writes that need such a fill, so
 * that images written in whole clusters (or with extended L2) do not pay
 * for it.
 *
 * [zero_lo, zero_hi) holds only clusters that are free (refcount 0, which
 * also means no I/O is in flight to them) and were zeroed while this table
 * owned the device: the allocator moves zero_lo past every cluster it hands
 * out, and a reload (after a suspend, when userspace may have written the
 * image) empties the range.  Freed clusters never re-enter it, as they lie
 * below zero_lo.  The zeros are written without meta_lock, the clusters
 * being zeroed in [zero_pend_lo, zero_pend_hi) meanwhile: an allocation that
 * comes to one of them waits for the zeros (or, in map(), leaves it to the
 * worker), so that they never race its data, and moves zero_pend_lo past it.
 */
#define QCOW2_ZERO_AHEAD	(4U << 20)

/* A fill was written for want of zeroed clusters: start zeroing ahead. */
static void qcow2_zero_ahead_kick(struct qcow2_target *qt)
{
	if (test_bit(QCOW2_FLAG_NO_ZERO_AHEAD, &qt->flags) ||
	    test_and_set_bit(QCOW2_FLAG_ZEROING, &qt->flags))
		return;
	queue_work(qt->wq, &qt->zero_work);
}

/* Zeroing ahead has a write-zeroes in flight over [zero_pend_lo, zero_pend_hi). */
static bool qcow2_zero_busy(struct qcow2_target *qt)
{
	/* Pairs with the release in qcow2_zero_ahead_work() once written. */
	return smp_load_acquire(&qt->zero_busy);
}

/*
 * Allocate one host cluster (refcount 0 -> 1), the first free one from
 * free_hint on and below cluster @nr (the end of the device, or with
 * @nowait any bound).  Called under meta_lock.
 * With @nowait (from map(), where nothing may wait for I/O), -EWOULDBLOCK
 * rather than a metadata read, a new refcount block, a wait for zeroing
 * ahead, reporting a full device or reporting corruption (which writes the
 * header): the worker does those.  Callers with a use for a cluster that
 * reads zeros (a write of part of it) pass @zeroed: *@zeroed says whether
 * it does (zeroed ahead, see qcow2_zero_ahead_work()).
 */
static s64 qcow2_alloc_below(struct qcow2_target *qt, u64 nr, bool nowait, bool *zeroed)
{
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	u64 c = qt->free_hint;
	struct qcow2_slice *s;
	u64 idx, n;
	int r;

	while (c < nr) {
		r = qcow2_refcount_slice(qt, c, &s, &idx, nowait);
		if (r < 0)
			return r;
		if (r == 1 && nowait)
			return -EWOULDBLOCK;
		if (r == 1) {
			r = qcow2_new_refblock(qt, c >> qt->rb_bits);
			if (r == -ENOSPC)
				break;	/* no room for the block or a bigger table */
			if (r)
				return r;
			continue;	/* the block took a cluster: look again */
		}
		/* Scan the rest of this slice. */
		n = 1ULL << (top->slice_bits + 3 - qi->refcount_order);
		for (; idx < n && c < nr; idx++, c++) {
			if (qcow2_refcount_get(qcow2_slice_data(s), qi->refcount_order, idx))
				continue;
			if (qcow2_is_metadata(qt, c)) {
				qcow2_slice_put(qt->cache, s);
				if (nowait)
					return -EWOULDBLOCK;
				qcow2_corrupt(qt, "refcount of a metadata cluster is 0");
				return -EIO;
			}
			if (c >= qt->zero_pend_lo && c < qt->zero_pend_hi) {
				/* Its zeros are being written: not to race them. */
				if (qcow2_zero_busy(qt)) {
					if (nowait) {
						qcow2_slice_put(qt->cache, s);
						return -EWOULDBLOCK;
					}
					qcow2_count(qt, QCOW2_STAT_ZERO_AHEAD_WAITS);
					wait_event(qt->zero_wait, !qcow2_zero_busy(qt));
				}
				qt->zero_pend_lo = c + 1;
			}
			qcow2_refcount_set(qcow2_slice_data(s), qi->refcount_order, idx, 1);
			qcow2_slice_mark_dirty(qt->cache, s, QCOW2_GROUP_REFCOUNT);
			qcow2_slice_put(qt->cache, s);
			qt->free_hint = c + 1;
			if (zeroed)
				*zeroed = c >= qt->zero_lo && c < qt->zero_hi;
			/* Whatever it holds next, it is not ours to call zero. */
			if (c >= qt->zero_lo && c < qt->zero_hi) {
				qt->zero_lo = c + 1;
				/* Refill for writes that have a use for zeros. */
				if (zeroed && qt->zero_hi - qt->zero_lo <=
					      (QCOW2_ZERO_AHEAD >> qi->cluster_bits) / 2)
					qcow2_zero_ahead_kick(qt);
			}
			return c << qi->cluster_bits;
		}
		qcow2_slice_put(qt->cache, s);
	}
	if (nowait)
		return -EWOULDBLOCK;	/* the worker reports it */
	qt->free_hint = nr;
	if (!test_and_set_bit(QCOW2_FLAG_NOSPACE, &qt->flags)) {
		DMWARN("%s: image device is full", qcow2_dev_name(qt));
		dm_table_event(qt->ti->table);
	}
	return -ENOSPC;
}

static s64 __qcow2_alloc_cluster(struct qcow2_target *qt, bool nowait, bool *zeroed)
{
	struct qcow2_layer *top = qcow2_top(qt);

	return qcow2_alloc_below(qt, top->dev_size >> top->qi.cluster_bits, nowait, zeroed);
}

static s64 qcow2_alloc_cluster(struct qcow2_target *qt)
{
	return __qcow2_alloc_cluster(qt, false, NULL);
}

/*
 * The first run of at most @want free clusters that starts within @want
 * clusters of *@lo: its start in *@lo, its end returned (*@lo if none).
 */
static u64 qcow2_free_run(struct qcow2_target *qt, u64 *lo, u64 want)
{
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	u64 nr = top->dev_size >> qi->cluster_bits;
	u64 c = *lo, end = min(nr, *lo + want), idx, n;
	struct qcow2_slice *s;
	bool used, found = false;

	n = 1ULL << (top->slice_bits + 3 - qi->refcount_order);
	while (c < end) {
		/* Clusters without a refcount block are where new ones go. */
		if (qcow2_refcount_slice(qt, c, &s, &idx, false))
			break;
		for (; idx < n && c < end; idx++, c++) {
			used = qcow2_refcount_get(qcow2_slice_data(s), qi->refcount_order, idx) ||
			       qcow2_is_metadata(qt, c);
			if (used && found)
				break;
			if (!used && !found) {
				found = true;
				*lo = c;
				end = min(nr, c + want);
			}
		}
		qcow2_slice_put(qt->cache, s);
		if (idx < n && c < end)
			break;	/* the run ended at a used cluster */
	}
	return found ? c : *lo;
}

void qcow2_zero_ahead_work(struct work_struct *work)
{
	struct qcow2_target *qt = container_of(work, struct qcow2_target, zero_work);
	struct qcow2_layer *top = qcow2_top(qt);
	struct block_device *bdev = top->dev->bdev;
	u32 cb = top->qi.cluster_bits;
	u64 want = max_t(u64, QCOW2_ZERO_AHEAD >> cb, 1);
	u64 lo, hi;
	int r;

	if (!bdev_write_zeroes_sectors(bdev)) {
		set_bit(QCOW2_FLAG_NO_ZERO_AHEAD, &qt->flags);
		goto out;
	}
	mutex_lock(&qt->meta_lock);
	if (READ_ONCE(qt->mode) != QCOW2_MODE_RW || !qt->reftable ||
	    qt->zero_hi > qt->zero_lo + want / 2)
		goto unlock;	/* nothing to write to, or zeros enough */
	/* Extend what is left of the range, or start at the allocator. */
	lo = qt->zero_lo < qt->zero_hi ? qt->zero_hi : qt->free_hint;
	hi = qcow2_free_run(qt, &lo, want);
	if (hi == lo)
		goto unlock;
	/* Allocations may go on meanwhile, but wait to take one of these. */
	qt->zero_pend_lo = lo;
	qt->zero_pend_hi = hi;
	WRITE_ONCE(qt->zero_busy, true);
	mutex_unlock(&qt->meta_lock);
	r = blkdev_issue_zeroout(bdev, lo << (cb - SECTOR_SHIFT), (hi - lo) << (cb - SECTOR_SHIFT),
				 GFP_NOIO, BLKDEV_ZERO_NOFALLBACK);
	/* The zeros are on the device before anyone sees this. */
	smp_store_release(&qt->zero_busy, false);
	wake_up_all(&qt->zero_wait);
	if (!r) {
		qcow2_count(qt, QCOW2_STAT_ZERO_AHEAD);
		qcow2_count_add(qt, QCOW2_STAT_ZERO_AHEAD_CLUSTERS, hi - lo);
	}
	mutex_lock(&qt->meta_lock);
	lo = qt->zero_pend_lo;	/* past the clusters taken meanwhile */
	qt->zero_pend_lo = 0;
	qt->zero_pend_hi = 0;
	if (r) {
		/* Harmless (the clusters are free), but do not try again. */
		DMWARN_LIMIT("%s: zeroing free clusters failed (%d): no zeroing ahead",
			     qcow2_dev_name(qt), r);
		set_bit(QCOW2_FLAG_NO_ZERO_AHEAD, &qt->flags);
		goto unlock;
	}
	if (lo >= hi)
		goto unlock;
	if (lo != qt->zero_hi)
		qt->zero_lo = lo;
	qt->zero_hi = hi;
unlock:
	mutex_unlock(&qt->meta_lock);
out:
	clear_bit(QCOW2_FLAG_ZEROING, &qt->flags);
}

/*
 * Drop one reference to every host cluster in [@offset, @offset + @len) once
 * the mapping change that removed it is durable: at the end of the next
 * commit.  Contiguous ranges are merged.
 */
static int qcow2_queue_free(struct qcow2_target *qt, u64 offset, u64 len)
{
	struct qcow2_deferred *d;

	/*
	 * Merge whole clusters only: compressed byte ranges may share a host
	 * cluster, and each range holds its own reference to it.
	 */
	if (!list_empty(&qt->deferred) &&
	    !((offset | len) & (qcow2_top(qt)->qi.cluster_size - 1))) {
		d = list_last_entry(&qt->deferred, struct qcow2_deferred, list);
		if (d->offset + d->len == offset &&
		    !((d->offset | d->len) & (qcow2_top(qt)->qi.cluster_size - 1))) {
			d->len += len;
			return 0;
		}
	}
	d = kmalloc(sizeof(*d), GFP_NOIO);
	if (!d)
		return -ENOMEM;
	d->offset = offset;
	d->len = len;
	list_add_tail(&d->list, &qt->deferred);
	qt->nr_deferred++;
	return 0;
}

/* Queue the free of a reference from an L2 entry: never to metadata. */
static int qcow2_defer_free(struct qcow2_target *qt, u64 offset, u64 len)
{
	u32 cb = qcow2_top(qt)->qi.cluster_bits;
	u64 c;

	for (c = offset >> cb; c <= (offset + len - 1) >> cb; c++) {
		if (qcow2_is_metadata(qt, c)) {
			qcow2_corrupt(qt, "a reference to a metadata cluster");
			return -EIO;
		}
	}
	return qcow2_queue_free(qt, offset, len);
}

/* Wait until no bio that was mapped before now still uses old mappings. */
static void qcow2_drain_inflight(struct qcow2_target *qt)
{
	unsigned int old = qt->inflight_gen;

	WRITE_ONCE(qt->inflight_gen, old ^ 1);
	smp_mb();	/* pairs with qcow2_inflight_get() */
	wait_event(qt->inflight_wait, !atomic_read(&qt->inflight[old]));
}

/*
 * Take the frees whose mapping change the commit in progress has just made
 * durable.  Called with update_sem held for write, so no update can add a
 * free whose L2 change is not on disk yet.
 */
static void qcow2_take_deferred(struct qcow2_target *qt, struct list_head *list)
{
	mutex_lock(&qt->meta_lock);
	list_splice_init(&qt->deferred, list);
	qt->nr_deferred = 0;
	mutex_unlock(&qt->meta_lock);
}

/*
 * Apply taken refcount decrements and pass discards of freed clusters down.
 * Returns the number of decrements applied or a negative errno.
 */
static int qcow2_apply_deferred(struct qcow2_target *qt, struct list_head *list)
{
	struct qcow2_layer *top = qcow2_top(qt);
	u32 cb = top->qi.cluster_bits;
	struct qcow2_deferred *d, *tmp;
	int r = 0, n = 0;

	if (list_empty(list))
		return 0;

	qcow2_drain_inflight(qt);

	mutex_lock(&qt->meta_lock);
	list_for_each_entry_safe(d, tmp, list, list) {
		u64 c, first = d->offset >> cb;
		u64 last = (d->offset + d->len - 1) >> cb;

		for (c = first; c <= last && !r; c++) {
			u64 left;

			r = qcow2_refcount_add(qt, c, -1, &left);
			if (r)
				break;
			n++;
			if (!left) {
				qcow2_count(qt, QCOW2_STAT_FREED_CLUSTERS);
				/* Freed: nothing may find stale metadata there. */
				qcow2_cache_invalidate(qt->cache, top, c << cb, 1ULL << cb);
				if (qt->discard_passdown)
					blkdev_issue_discard(top->dev->bdev,
							     (c << cb) >> SECTOR_SHIFT,
							     (1ULL << cb) >> SECTOR_SHIFT,
							     GFP_NOIO);
			}
		}
		list_del(&d->list);
		kfree(d);
	}
	mutex_unlock(&qt->meta_lock);
	return r ?: n;
}

static void qcow2_fast_put(struct qcow2_target *qt, atomic_t *count)
{
	if (atomic_dec_and_test(count))
		wake_up(&qt->fast_wait);
}

/*
 * Exclude every update: those of workers (update_sem) and the allocations
 * made in map(), counted in fast_updates until their metadata changes are
 * made.  Their entries may still be stored meanwhile (fast_stores).
 */
static u64 qcow2_updates_lock(struct qcow2_target *qt)
{
	u64 t0 = ktime_get_ns();

	down_write(&qt->update_sem);
	WRITE_ONCE(qt->fast_blocked, true);
	smp_mb();	/* pairs with qcow2_alloc_begin() */
	wait_event(qt->fast_wait, !atomic_read(&qt->fast_updates));
	return t0;
}

/*
 * With updates excluded, also wait until the allocations made in map() have
 * stored their entries: before L2 slices are written from the cache itself,
 * or when the commit must include every write in flight.
 */
static void qcow2_updates_drain(struct qcow2_target *qt)
{
	smp_mb();	/* orders fast_updates seen 0 before fast_stores */
	wait_event(qt->fast_wait, !atomic_read(&qt->fast_stores));
}

/* @t0: what qcow2_updates_lock() returned; the time counts as blocked. */
static void qcow2_updates_unlock(struct qcow2_target *qt, u64 t0)
{
	WRITE_ONCE(qt->fast_blocked, false);
	up_write(&qt->update_sem);
	qcow2_count_add(qt, QCOW2_STAT_COMMIT_BLOCKED_USECS,
			div_u64(ktime_get_ns() - t0, NSEC_PER_USEC));
}

/*
 * Steps 1 to 3 of a commit with updates excluded all along: the dirty slices
 * are written from the cache.  Takes the frees that step 3 makes durable.
 */
static int qcow2_commit_locked(struct qcow2_target *qt, bool refcounts,
			       struct list_head *freed)
{
	struct qcow2_layer *top = qcow2_top(qt);
	struct block_device *bdev = top->dev->bdev;
	bool wrote = false;
	int r = 0;

	if (refcounts)
		r = qcow2_cache_writeback(qt->cache, QCOW2_GROUP_REFCOUNT);
	/* Also makes the data of every completed write durable. */
	if (r >= 0)
		r = blkdev_issue_flush(bdev);
	if (!r && refcounts)
		r = qcow2_table_writeback(qt, qt->reftable, qt->reftable_entries,
					  top->qi.refcount_table_offset,
					  qt->reftable_dirty, &wrote);
	if (!r && wrote)
		r = blkdev_issue_flush(bdev);
	/* Lazy refcounts: references may now get ahead of their refcounts. */
	if (!r && !refcounts && !qt->dirty_bit)
		r = qcow2_set_dirty_bit(qt, true);
	wrote = false;
	if (!r)
		r = qcow2_cache_writeback(qt->cache, QCOW2_GROUP_MAPPING);
	if (r > 0)
		wrote = true;
	if (r >= 0)
		r = qcow2_table_writeback(qt, top->l1, top->l1_size,
					  top->qi.l1_table_offset, qt->l1_dirty,
					  &wrote);
	if (!r && wrote)
		r = blkdev_issue_flush(bdev);
	if (!r)
		qcow2_take_deferred(qt, freed);
	return r;
}

/*
 * Take copies of the dirty slices for steps 1 and 3, and of the dirty
 * refcount table and L1 sectors, so that updates may go on while they are
 * written (qcow2_commit_copies(); qt->copies_busy meanwhile).  Not when the
 * dirty bit of lazy refcounts must be set first.  Called with updates
 * excluded; false when the commit must keep them out all along.
 */
static bool qcow2_commit_take(struct qcow2_target *qt, bool refcounts,
			      struct qcow2_commit_set *cs)
{
	const gfp_t gfp = GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN;
	struct qcow2_layer *top = qcow2_top(qt);

	if (!refcounts && !qt->dirty_bit)
		return false;
	INIT_LIST_HEAD(&cs->rc.slices);
	cs->rc.nr = 0;
	cs->rt.nr = 0;
	cs->rt.secs = NULL;
	cs->rt.buf = NULL;
	if (refcounts && (qcow2_cache_wb_take(qt->cache, QCOW2_GROUP_REFCOUNT, true, &cs->rc) ||
			  qcow2_table_copy_take(qt->reftable, qt->reftable_entries,
						qt->reftable_dirty, UINT_MAX, gfp, &cs->rt)))
		goto cancel_rc;
	if (qcow2_cache_wb_take(qt->cache, QCOW2_GROUP_MAPPING, true, &cs->map))
		goto cancel_rc;
	if (qcow2_table_copy_take(top->l1, top->l1_size, qt->l1_dirty, UINT_MAX, gfp, &cs->l1))
		goto cancel_map;
	qcow2_count_add(qt, QCOW2_STAT_COMMIT_COPIES,
			cs->rc.nr + cs->rt.nr + cs->map.nr + cs->l1.nr);
	WRITE_ONCE(qt->copies_busy, true);
	return true;

cancel_map:
	qcow2_cache_wb_cancel(qt->cache, &cs->map);
cancel_rc:
	qcow2_table_copy_cancel(&cs->rt, qt->reftable_entries, qt->reftable_dirty);
	qcow2_cache_wb_cancel(qt->cache, &cs->rc);
	return false;
}

/*
 * Steps 1 to 3 from the copies qcow2_commit_take() made, updates going on.
 * The L1 sectors go with the L2 slices: every L2 table they point to was
 * written (zeroed or copied) before it entered the L1 table.  What is not
 * written is dirty again.
 *
 * A step 3 of at most QCOW2_COMMIT_FUA_WRITES slices and sectors (a flush
 * after a few allocations: fsync after each write) goes out with REQ_FUA,
 * and, when no flush has followed step 1, REQ_PREFLUSH instead of that
 * flush: one round trip instead of three (flush, writes, flush), and on a
 * device with FUA one flush per commit instead of two.  Larger ones go as
 * plain writes between two flushes, which merge adjacent slices (requests
 * with FUA or a flush do not merge).
 */
static int qcow2_commit_copies(struct qcow2_target *qt, struct qcow2_commit_set *cs)
{
	struct qcow2_layer *top = qcow2_top(qt);
	struct block_device *bdev = top->dev->bdev;
	unsigned int step3 = cs->map.nr + cs->l1.nr;
	bool fua = step3 && step3 <= QCOW2_COMMIT_FUA_WRITES;
	blk_opf_t flags = 0;
	unsigned int redirtied;
	int r, n;

	r = qcow2_cache_wb_write(qt->cache, &cs->rc, 0);
	if (r < 0)
		goto out;
	/* Also makes the data of every write completed before the copy durable. */
	if (cs->rt.nr || !fua) {
		r = blkdev_issue_flush(bdev);
		if (r)
			goto out;
	} else {
		r = 0;
		flags = REQ_PREFLUSH;
	}
	n = qcow2_table_copy_write(qt, &cs->rt, qt->reftable_entries,
				   top->qi.refcount_table_offset, qt->reftable_dirty,
				   0, &redirtied);
	if (n < 0) {
		r = n;
		goto out;
	}
	qcow2_count_add(qt, QCOW2_STAT_COMMIT_REDIRTIED, redirtied);
	if (n)
		r = blkdev_issue_flush(bdev);
	if (r)
		goto out;
	if (fua) {
		flags |= REQ_FUA;
		qcow2_count(qt, QCOW2_STAT_COMMIT_FUA);
	}
	r = qcow2_cache_wb_write(qt->cache, &cs->map, flags);
	if (r < 0)
		goto out;
	/* Durable, and their flush covered what came before them. */
	if (r)
		flags &= ~REQ_PREFLUSH;
	n = qcow2_table_copy_write(qt, &cs->l1, top->l1_size,
				   top->qi.l1_table_offset, qt->l1_dirty, flags, &redirtied);
	if (n < 0) {
		r = n;
		goto out;
	}
	qcow2_count_add(qt, QCOW2_STAT_COMMIT_REDIRTIED, redirtied);
	if (fua)
		r = 0;
	else if (r + n > 0)
		r = blkdev_issue_flush(bdev);
out:
	/* Whatever was not written (none if all went well). */
	qcow2_table_copy_cancel(&cs->rt, qt->reftable_entries, qt->reftable_dirty);
	qcow2_cache_wb_cancel(qt->cache, &cs->map);
	qcow2_table_copy_cancel(&cs->l1, top->l1_size, qt->l1_dirty);
	/* qcow2_grow_reftable() may move the table now. */
	smp_store_release(&qt->copies_busy, false);
	wake_up_all(&qt->copies_wait);
	return r;
}

/* Frees taken for a commit that failed: back to the queue. */
static void qcow2_untake_deferred(struct qcow2_target *qt, struct list_head *list)
{
	struct list_head *pos;

	mutex_lock(&qt->meta_lock);
	list_for_each(pos, list)
		qt->nr_deferred++;
	list_splice_init(list, &qt->deferred);
	mutex_unlock(&qt->meta_lock);
}

/*
 * Make everything written so far durable and reachable (see the top of this
 * file).  Returns 0 or the error that failed the commit; a failed commit
 * switches the device to fail mode, since on-disk metadata is then unknown.
 */
static int __qcow2_commit(struct qcow2_target *qt, bool refcounts, bool drain)
{
	struct block_device *bdev = qcow2_top(qt)->dev->bdev;
	struct qcow2_commit_set cs;
	LIST_HEAD(freed);
	u64 t0;
	int r;

	t0 = qcow2_updates_lock(qt);
	if (drain)
		qcow2_updates_drain(qt);
	if (qcow2_commit_take(qt, refcounts, &cs)) {
		/* The frees whose L2 and L1 changes the copies hold. */
		qcow2_take_deferred(qt, &freed);
		qcow2_updates_unlock(qt, t0);
		r = qcow2_commit_copies(qt, &cs);
		if (r)
			qcow2_untake_deferred(qt, &freed);
	} else {
		qcow2_count(qt, QCOW2_STAT_COMMIT_LOCKED);
		if (!drain)
			qcow2_updates_drain(qt);
		r = qcow2_commit_locked(qt, refcounts, &freed);
		qcow2_updates_unlock(qt, t0);
	}
	if (!r)
		r = qcow2_apply_deferred(qt, &freed);
	/*
	 * 4. Decrements of references that step 3 removed: durable before the
	 * flush that waits for this commit completes, so that a crash after it
	 * leaks nothing.  Increments of updates made since step 3 may go along:
	 * a refcount ahead of its reference is only a leak until the next
	 * commit.
	 */
	if (r > 0 && refcounts) {
		t0 = qcow2_updates_lock(qt);
		r = qcow2_cache_writeback(qt->cache, QCOW2_GROUP_REFCOUNT);
		if (r >= 0)
			r = blkdev_issue_flush(bdev);
		qcow2_updates_unlock(qt, t0);
	}
	if (r > 0)
		r = 0;
	if (r)
		qcow2_set_mode(qt, QCOW2_MODE_FAIL, "metadata write failed");
	return r;
}

/* Set or clear the dirty bit (lazy refcounts), durably. */
static int qcow2_set_dirty_bit(struct qcow2_target *qt, bool dirty)
{
	struct qcow2_info *qi = &qcow2_top(qt)->qi;
	u64 incompat = qi->incompatible_features;
	__be64 val;
	int r;

	if (dirty)
		incompat |= QCOW2_INCOMPAT_DIRTY;
	else
		incompat &= ~QCOW2_INCOMPAT_DIRTY;
	val = cpu_to_be64(incompat);
	r = qcow2_write_header(qt, offsetof(struct qcow2_header, incompatible_features),
			       &val, sizeof(val));
	if (!r) {
		qi->incompatible_features = incompat;
		qt->dirty_bit = dirty;
	}
	return r;
}

/*
 * One commit, with commit_mutex held.  @drain: wait for the allocations made
 * in map() to store their entries first, so that the commit includes every
 * write in flight (else it includes those completed before it started).
 */
static int qcow2_commit_run(struct qcow2_target *qt, bool full, bool drain)
{
	u64 t0 = ktime_get_ns();
	int r;

	WRITE_ONCE(qt->commit_seq, qt->commit_seq + 1);
	/* Odd before the commit takes anything: see qcow2_flush_clean(). */
	smp_mb();
	qt->commits_started++;
	if (full)
		qt->full_commits_started++;
	r = __qcow2_commit(qt, full, drain);
	WRITE_ONCE(qt->commit_error, r);
	/* Even once its writes and flushes are done (and its error known). */
	smp_store_release(&qt->commit_seq, qt->commit_seq + 1);
	qcow2_count(qt, QCOW2_STAT_COMMITS);
	qcow2_count_add(qt, QCOW2_STAT_COMMIT_USECS,
			div_u64(ktime_get_ns() - t0, NSEC_PER_USEC));
	return r;
}

/*
 * Group commit: a caller needs a commit that started after it called; one
 * that started later and finished serves it too.  With lazy refcounts a
 * flush leaves refcount blocks in memory (@full false); a full commit writes
 * them too.
 */
int qcow2_commit(struct qcow2_target *qt, bool full)
{
	u64 *started, seen;
	int r;

	full |= !qt->lazy_refcounts;
	started = full ? &qt->full_commits_started : &qt->commits_started;
	seen = READ_ONCE(*started);
	mutex_lock(&qt->commit_mutex);
	if (*started > seen)
		r = qt->commit_error;
	else
		r = qcow2_commit_run(qt, full, false);
	mutex_unlock(&qt->commit_mutex);
	return r;
}

/*
 * Whether a flush has nothing of ours to make durable, so that map() can
 * pass it to the device: no dirty slice, no free waiting for a commit, and
 * no commit running (whose copies are off the dirty list until written),
 * with nothing of that changing while we look.  Dirty L1 and refcount table
 * sectors need no check of their own: the update that dirties one (a new L2
 * table, a new refcount block) allocates a cluster, which dirties the
 * refcount block that counts it, and one commit takes both.  With lazy
 * refcounts, refcount blocks stay dirty across flushes by design: those
 * flushes always commit.  The writes a flush covers have completed, so
 * their updates (for an allocation in map(), the slice marked dirty before
 * its data write) are seen here.
 */
bool qcow2_flush_clean(struct qcow2_target *qt)
{
	/* Pairs with the release in qcow2_commit_run(): its writes are done. */
	unsigned int seq = smp_load_acquire(&qt->commit_seq);
	bool clean;

	if ((seq & 1) || qt->lazy_refcounts)
		return false;
	clean = READ_ONCE(qt->mode) == QCOW2_MODE_RW && !READ_ONCE(qt->commit_error) &&
		!qcow2_cache_has_dirty(qt->cache) && !READ_ONCE(qt->nr_deferred);
	/* What a commit takes, before its count again: pairs with the smp_mb(). */
	smp_rmb();
	return clean && READ_ONCE(qt->commit_seq) == seq;
}

/*
 * Clean shutdown, suspend or the commit message: write everything back,
 * the entries of writes in flight too (no cluster they allocated is leaked
 * on disk), and, with lazy refcounts, clear the dirty bit.
 */
int qcow2_commit_clean(struct qcow2_target *qt)
{
	int r;

	mutex_lock(&qt->commit_mutex);
	r = qcow2_commit_run(qt, true, true);
	/* Anything dirtied while it ran (nothing, once quiesced): write it too. */
	if (!r && qcow2_cache_has_dirty(qt->cache))
		r = qcow2_commit_run(qt, true, true);
	if (!r && qt->dirty_bit)
		r = qcow2_set_dirty_bit(qt, false);
	mutex_unlock(&qt->commit_mutex);
	return r;
}

/* ----------------------------------------------------------------------- */
/* Cluster locks                                                           */

/*
 * A guest cluster is modified under its cluster lock: a bit of a hashed
 * array, taken by workers (waiting) and by map() (trying), and released by
 * either or, for an allocation made in map(), by the completion of its data
 * write in whatever context that runs.  Lockdep sees the one lock a worker
 * waits for and holds (qcow2_cluster_lock() to qcow2_cluster_unlock_waited(),
 * in one task; the others are only tried), as one class: it checks that
 * nothing waits for it while holding a lock that its holders take, nor
 * flushes the work of qt->wq while holding it.
 */
static unsigned int qcow2_cluster_bit(u64 guest_cluster)
{
	return hash_64(guest_cluster, QCOW2_CLUSTER_LOCK_BITS);
}

static void qcow2_cluster_lock(struct qcow2_target *qt, unsigned int bit)
{
	lock_map_acquire(&qt->cluster_dep_map);
	wait_on_bit_lock(qt->cluster_locks, bit, TASK_UNINTERRUPTIBLE);
}

static bool qcow2_cluster_trylock(struct qcow2_target *qt, unsigned int bit)
{
	return !test_and_set_bit_lock(bit, qt->cluster_locks);
}

static void qcow2_cluster_unlock(struct qcow2_target *qt, unsigned int bit)
{
	clear_and_wake_up_bit(bit, qt->cluster_locks);
}

/* Unlock the lock taken by qcow2_cluster_lock(). */
static void qcow2_cluster_unlock_waited(struct qcow2_target *qt, unsigned int bit)
{
	lock_map_release(&qt->cluster_dep_map);
	qcow2_cluster_unlock(qt, bit);
}

/* ----------------------------------------------------------------------- */
/* Cluster updates                                                         */

/*
 * Enter a metadata update: make sure the cache has room for its dirty slices
 * and the deferred list is bounded (committing if needed), then exclude
 * commits until qcow2_end_update().
 */
static int qcow2_begin_update(struct qcow2_target *qt)
{
	int r;

	while (!qcow2_cache_reserve(qt->cache, QCOW2_UPDATE_SLICES) ||
	       READ_ONCE(qt->nr_deferred) > QCOW2_MAX_DEFERRED) {
		r = qcow2_commit(qt, true);
		if (r)
			return r;
		if (qcow2_cache_reserve(qt->cache, QCOW2_UPDATE_SLICES))
			break;
	}
	down_read(&qt->update_sem);
	return 0;
}

static void qcow2_end_update(struct qcow2_target *qt)
{
	up_read(&qt->update_sem);
	qcow2_cache_unreserve(qt->cache, QCOW2_UPDATE_SLICES);
}

/*
 * Make the L2 table of L1 entry @l1_idx writable in place: allocate it, or
 * copy it if it is shared with a snapshot.  Returns its offset.  Called
 * under meta_lock, which it drops while it writes a new table (the writes
 * that allocate in map() only try meta_lock: holding it across the zeroing
 * of every new table sent them all to the workers).  A bit of l2_busy,
 * hashed from @l1_idx, keeps other updates of the entry waiting meanwhile.
 */
static s64 qcow2_l2_writable(struct qcow2_target *qt, u64 l1_idx)
{
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	unsigned int busy = hash_64(l1_idx, ilog2(BITS_PER_LONG));
	bool zeroed = false;
	const char *err;
	s64 old, new;
	void *buf;
	u64 l1e;
	int r;

	while (test_bit(busy, &qt->l2_busy)) {
		mutex_unlock(&qt->meta_lock);
		/* For lockdep, a bit of l2_busy is held by the writer of a table. */
		lock_map_acquire(&qt->l2_busy_dep_map);
		wait_on_bit(&qt->l2_busy, busy, TASK_UNINTERRUPTIBLE);
		lock_map_release(&qt->l2_busy_dep_map);
		mutex_lock(&qt->meta_lock);
	}
	l1e = top->l1[l1_idx];
	old = qcow2_l1_entry_l2_offset(qi, l1e, top->dev_size, &err);
	if (old > 0 && ((l1e & QCOW2_OFLAG_COPIED) ?
			!qcow2_l2_exclusive(qt, old >> qi->cluster_bits) :
			(qcow2_is_fixed_metadata(qt, old >> qi->cluster_bits) ||
			 qcow2_meta_kinds(qt, old >> qi->cluster_bits) & QCOW2_META_REFBLOCK))) {
		old = -EIO;
		err = "L1 entry points to other metadata";
	}
	if (old < 0) {
		qcow2_corrupt(qt, err);
		return -EIO;
	}
	if (old && (l1e & QCOW2_OFLAG_COPIED))
		return old;

	/* A new table may take a cluster zeroed ahead as it is. */
	new = __qcow2_alloc_cluster(qt, false, old ? NULL : &zeroed);
	if (new < 0)
		return new;
	r = qcow2_meta_add(qt, new >> qi->cluster_bits, QCOW2_META_L2, GFP_NOIO);
	if (r) {
		qcow2_refcount_add(qt, new >> qi->cluster_bits, -1, NULL);
		return r;
	}
	qcow2_cache_invalidate(qt->cache, top, new, qi->cluster_size);
	if (zeroed) {
		qcow2_count(qt, QCOW2_STAT_ZEROED_TABLES);
		r = 0;
	} else {
		/* Nothing refers to @new yet, and the entry stays as it is. */
		set_bit(busy, &qt->l2_busy);
		lock_map_acquire_try(&qt->l2_busy_dep_map);
		mutex_unlock(&qt->meta_lock);
		if (!old) {
			r = qcow2_zero_cluster(qt, new);
		} else {
			/* A shared table is never modified in place: disk is current. */
			buf = kvmalloc(qi->cluster_size, GFP_NOIO);
			r = buf ? qcow2_read_bytes(qt, top, old, buf, qi->cluster_size) :
				  -ENOMEM;
			if (!r)
				r = qcow2_write_bytes(qt, top, new, buf, qi->cluster_size);
			kvfree(buf);
		}
		mutex_lock(&qt->meta_lock);
		lock_map_release(&qt->l2_busy_dep_map);
		clear_and_wake_up_bit(busy, &qt->l2_busy);
	}
	/* Spare the first lookups a read of the zeros (small tables). */
	if (!r && !old && qi->cluster_size >> top->slice_bits <= QCOW2_NEW_L2_SLICES)
		qcow2_cache_add_zeroed(qt->cache, top, new, qi->cluster_size);
	/* A snapshot's table: not a reference that may point at metadata. */
	if (!r && old)
		r = qcow2_queue_free(qt, old, qi->cluster_size);
	if (r) {
		qcow2_meta_put_l2(qt, new >> qi->cluster_bits);
		qcow2_refcount_add(qt, new >> qi->cluster_bits, -1, NULL);
		return r;
	}
	if (old)
		qcow2_meta_put_l2(qt, old >> qi->cluster_bits);
	WRITE_ONCE(top->l1[l1_idx], new | QCOW2_OFLAG_COPIED);
	qcow2_table_dirty(qt->l1_dirty, l1_idx);
	return new;
}

/* Where the bytes of one (sub)cluster come from when it is not written. */
static int qcow2_fill(struct qcow2_target *qt, enum qcow2_cluster_type type,
		      const struct qcow2_l2_entry *old, u64 guest_cluster,
		      u32 from, u32 to, void *buf)
{
	struct qcow2_layer *top = qcow2_top(qt);
	u64 guest = guest_cluster + from;
	u64 len = to - from;
	struct qcow2_run run;
	int r;

	switch (type) {
	case QCOW2_CL_NORMAL:
		return qcow2_read_data(qt, top, (old->entry & QCOW2_L2E_OFFSET_MASK) + from,
					buf, len);
	case QCOW2_CL_COMPRESSED:
		return qcow2_decompress_to_buf(qt, top, old->entry, from, buf, len);
	case QCOW2_CL_UNALLOCATED:
	case QCOW2_CL_UNALLOCATED_ALLOC:
		/* Backing data, resolved through the layers below. */
		while (len) {
			qcow2_resolve(qt, 1, guest, len, false, &run);
			switch (run.type) {
			case QCOW2_RUN_DATA:
				r = qcow2_read_data(qt, run.layer, run.host, buf, run.len);
				break;
			case QCOW2_RUN_COMPRESSED:
				r = qcow2_decompress_to_buf(qt, run.layer, run.entry,
							    run.offset_in_cluster,
							    buf, run.len);
				break;
			case QCOW2_RUN_ZERO:
				memset(buf, 0, run.len);
				r = 0;
				break;
			default:
				r = -EIO;
				break;
			}
			if (r)
				return r;
			buf += run.len;
			guest += run.len;
			len -= run.len;
		}
		return 0;
	default:
		memset(buf, 0, len);
		return 0;
	}
}

static void qcow2_copy_from_bio(struct bio *bio, void *dst)
{
	struct bvec_iter iter;
	struct bio_vec bv;

	bio_for_each_segment(bv, bio, iter) {
		memcpy_from_bvec(dst, &bv);
		dst += bv.bv_len;
	}
}

/* Write a bio's data unchanged at byte @host of the top device, waiting. */
static int qcow2_write_bio_at(struct qcow2_target *qt, struct bio *bio, u64 host)
{
	struct bio *clone;
	int r;

	clone = bio_alloc_clone(qcow2_top(qt)->dev->bdev, bio, GFP_NOIO, &qt->write_bs);
	if (!clone)
		return -ENOMEM;
	clone->bi_iter.bi_sector = host >> SECTOR_SHIFT;
	clone->bi_opf &= ~(REQ_PREFLUSH | REQ_FUA);
	r = submit_bio_wait(clone);
	bio_put(clone);
	return r;
}

/* Subcluster type for the fill of a byte range of an entry. */
static enum qcow2_cluster_type qcow2_sc_type(struct qcow2_target *qt,
					     const struct qcow2_l2_entry *e,
					     unsigned int sc)
{
	const char *err;

	return qcow2_l2_type(&qcow2_top(qt)->qi, e, sc, &err);
}

/*
 * Do the layers below the top read [@guest, @guest + @len) as zeros?  With
 * @nowait, only from cached metadata (false when it is not cached).
 */
static bool qcow2_below_zero(struct qcow2_target *qt, u64 guest, u64 len, bool nowait)
{
	struct qcow2_run run;

	return !qcow2_resolve(qt, 1, guest, len, nowait, &run) &&
	       run.type == QCOW2_RUN_ZERO && run.len >= len;
}

/*
 * Is everything in [@start, @end) of guest cluster @guest_cluster with entry
 * @old, outside the written [@off, @off + @len), zeros?  Then the fill need
 * not be copied.  @nowait: see qcow2_below_zero().
 */
static bool qcow2_fill_is_zero(struct qcow2_target *qt, const struct qcow2_l2_entry *old,
			       u64 guest_cluster, u32 start, u32 end, u32 off, u32 len,
			       bool nowait)
{
	u32 scb = qcow2_top(qt)->qi.subcluster_bits;
	unsigned int sc;

	for (sc = start >> scb; sc <= (end - 1) >> scb; sc++) {
		u32 a = max(start, sc << scb), b = min(end, (sc + 1) << scb);

		if (a >= off && b <= off + len)
			continue;	/* written whole: no fill */
		switch (qcow2_sc_type(qt, old, sc)) {
		case QCOW2_CL_ZERO_PLAIN:
		case QCOW2_CL_ZERO_ALLOC:
			break;
		case QCOW2_CL_UNALLOCATED:
		case QCOW2_CL_UNALLOCATED_ALLOC:
			if (qt->nr_layers == 1 ||
			    qcow2_below_zero(qt, guest_cluster + a, b - a, nowait))
				break;
			return false;
		default:
			return false;
		}
	}
	return true;
}

/*
 * Fill [@start, @end) of a cluster with entry @old into @buf, around the
 * bytes [@off, @off + @len) that the caller copies in afterwards.  Adjacent
 * subclusters of one type are filled by one call.  When the data sits inside
 * such a run and is no larger than the fill around it, the run is filled
 * whole, data bytes included: one read of the backing cluster instead of a
 * read of the head and another of the tail.
 */
static int qcow2_fill_around(struct qcow2_target *qt, const struct qcow2_l2_entry *old,
			     u64 guest_cluster, u32 start, u32 end, u32 off, u32 len,
			     void *buf)
{
	u32 scb = qcow2_top(qt)->qi.subcluster_bits;
	enum qcow2_cluster_type t;
	u32 a, b, c;
	int r = 0;

	for (a = start; !r && a < end; a = b) {
		t = qcow2_sc_type(qt, old, a >> scb);
		b = min(end, ((a >> scb) + 1) << scb);
		while (b < end && qcow2_sc_type(qt, old, b >> scb) == t)
			b = min(end, b + (1U << scb));

		if (a < off && b > off + len && len <= b - a - len) {
			r = qcow2_fill(qt, t, old, guest_cluster, a, b, buf + a - start);
			continue;
		}
		if (a < off)
			r = qcow2_fill(qt, t, old, guest_cluster, a, min(b, off),
				       buf + a - start);
		c = max(a, off + len);
		if (!r && b > c)
			r = qcow2_fill(qt, t, old, guest_cluster, c, b, buf + c - start);
	}
	return r;
}

/* Add [@p, @lim) of the fill that starts at byte @start to @b. */
static void qcow2_add_fill(struct bio *b, struct bio *src, u32 start, u32 p, u32 lim)
{
	u32 pofs, n;

	for (; p < lim; p += n) {
		pofs = (p - start) & (PAGE_SIZE - 1);
		n = min_t(u32, PAGE_SIZE - pofs, lim - p);
		__bio_add_page(b, src ? src->bi_io_vec[(p - start) >> PAGE_SHIFT].bv_page :
				  ZERO_PAGE(0), n, pofs);
	}
}

/*
 * One write of [@start, @end) at byte @host of the top device: the fill
 * around the first @len bytes of @bio, which go at @off.  The fill is zero
 * pages, or with @src the pages of that bio (one per page of the fill, from
 * @start), which need not hold the data yet.  NULL if that takes more
 * segments than a bio holds (or, without waiting, no memory).
 */
static struct bio *qcow2_filled_bio(struct qcow2_target *qt, struct bio *bio,
				    u64 host, u32 start, u32 end, u32 off, u32 len,
				    struct bio *src, gfp_t gfp)
{
	unsigned int nr = DIV_ROUND_UP(off - start, PAGE_SIZE) +
			  DIV_ROUND_UP(end - off - len, PAGE_SIZE) + 1 + bio_segments(bio);
	struct bvec_iter iter, data = bio->bi_iter;
	struct bio_vec bv;
	struct bio *b;

	if (nr > BIO_MAX_VECS)
		return NULL;
	b = bio_alloc_bioset(qcow2_top(qt)->dev->bdev, nr,
			     REQ_OP_WRITE | (bio->bi_opf & REQ_SYNC), gfp,
			     &qt->write_bs);
	if (!b)
		return NULL;
	bio_clone_blkg_association(b, bio);
	b->bi_ioprio = bio->bi_ioprio;
	b->bi_iter.bi_sector = (host + start) >> SECTOR_SHIFT;
	qcow2_add_fill(b, src, start, start, off);
	data.bi_size = len;	/* @bio may go on past the cluster */
	__bio_for_each_segment(bv, bio, iter, data)
		__bio_add_page(b, bv.bv_page, bv.bv_len, bv.bv_offset);
	qcow2_add_fill(b, src, start, off + len, end);
	return b;
}

/*
 * Write @bio at byte @host + @off of the top device and zeros around it in
 * [@host + @start, @host + @end), with no bounce buffer and no copy of the
 * data.  Up to QCOW2_FILL_INLINE, the zeros go along with the data in one
 * write of zero pages: one request rather than three, and write-zeroes is
 * not cheap everywhere (QEMU writes real zeros for it on a tmpfs file).
 * Larger fills use write-zeroes where the device has it (zero pages
 * otherwise), submitted with the data and waited for once.  -EOPNOTSUPP:
 * the device refused to zero, fill through a buffer instead.
 */
static int qcow2_write_zero_filled(struct qcow2_target *qt, struct bio *bio, u64 host,
				   u32 start, u32 end, u32 off, u32 len)
{
	struct block_device *bdev = qcow2_top(qt)->dev->bdev;
	struct bio *zeros = NULL, *clone;
	int r = 0, w;

	if (end - start <= QCOW2_FILL_INLINE) {
		clone = qcow2_filled_bio(qt, bio, host, start, end, off, len, NULL, GFP_NOIO);
		if (clone) {
			r = submit_bio_wait(clone);
			bio_put(clone);
			return r;
		}
	}
	clone = bio_alloc_clone(bdev, bio, GFP_NOIO, &qt->write_bs);
	if (!clone)
		return -ENOMEM;
	clone->bi_iter.bi_sector = (host + off) >> SECTOR_SHIFT;
	clone->bi_opf &= ~(REQ_PREFLUSH | REQ_FUA);
	if (start < off)
		r = __blkdev_issue_zeroout(bdev, (host + start) >> SECTOR_SHIFT,
					   (off - start) >> SECTOR_SHIFT, GFP_NOIO,
					   &zeros, BLKDEV_ZERO_NOUNMAP);
	if (!r && end > off + len)
		r = __blkdev_issue_zeroout(bdev, (host + off + len) >> SECTOR_SHIFT,
					   (end - off - len) >> SECTOR_SHIFT, GFP_NOIO,
					   &zeros, BLKDEV_ZERO_NOUNMAP);
	/* The data write completes last: it waits for the zeroing bios. */
	if (zeros) {
		bio_chain(zeros, clone);
		submit_bio(zeros);
	}
	w = submit_bio_wait(clone);
	bio_put(clone);
	return r ?: w;
}

/*
 * The L2 slice that an update of (@l1_idx, @l2_idx) will use, read and
 * pinned before meta_lock is taken, so that a cache miss does not hold up
 * every other update.  Only for tables of our own (COPIED): those never move
 * while the image is mapped, so the slice stays the right one.  NULL when
 * there is nothing to read ahead (or, @nowait, the slice is not cached);
 * errors are found again under the lock.
 */
static struct qcow2_slice *qcow2_l2_prefetch(struct qcow2_target *qt, u64 l1_idx,
					     u64 l2_idx, bool nowait)
{
	struct qcow2_layer *top = qcow2_top(qt);
	u64 l1e = READ_ONCE(top->l1[l1_idx]);
	struct qcow2_slice *s;
	const char *err;
	s64 l2;

	if (!(l1e & QCOW2_OFLAG_COPIED))
		return NULL;
	l2 = qcow2_l1_entry_l2_offset(&top->qi, l1e, top->dev_size, &err);
	if (l2 <= 0)
		return NULL;
	s = qcow2_slice_get(qt->cache, top,
			    qcow2_l2_slice_off(top, l2, l2_idx), nowait);
	return IS_ERR(s) ? NULL : s;
}

/*
 * Begin an update of L2 entry (@l1_idx, @l2_idx): begin_update, take
 * meta_lock, make the L2 table writable and get the entry's slice.  Returns
 * the slice with meta_lock held, or an ERR_PTR with the update ended and the
 * lock dropped.
 */
static struct qcow2_slice *qcow2_begin_l2_update(struct qcow2_target *qt, u64 l1_idx,
						 u64 l2_idx)
{
	struct qcow2_layer *top = qcow2_top(qt);
	struct qcow2_slice *s;
	s64 l2;
	int r;

	r = qcow2_begin_update(qt);
	if (r)
		return ERR_PTR(r);
	mutex_lock(&qt->meta_lock);
	l2 = qcow2_l2_writable(qt, l1_idx);
	if (l2 < 0)
		s = ERR_PTR(l2);
	else
		s = qcow2_slice_get(qt->cache, top, qcow2_l2_slice_off(top, l2, l2_idx), false);
	if (IS_ERR(s)) {
		mutex_unlock(&qt->meta_lock);
		qcow2_end_update(qt);
	}
	return s;
}

/*
 * The entry stores of a worker's update, made after its data write (as for
 * an allocation in map(): see qcow2_alloc_in_map()): @n of them into L2
 * slice @s.  Called in the update; fast_stores counts it from here to
 * qcow2_worker_stored(), so that a commit need not wait for the data write:
 * it copies the slice without the entries and leaves it dirty.
 */
static void qcow2_worker_store_begin(struct qcow2_target *qt, struct qcow2_slice *s,
				     unsigned int n)
{
	while (n--)
		qcow2_slice_mark_store(qt->cache, s, QCOW2_GROUP_MAPPING);
	atomic_inc(&qt->fast_stores);
}

static void qcow2_worker_stored(struct qcow2_target *qt)
{
	qcow2_fast_put(qt, &qt->fast_stores);
}

/*
 * After a data write failed (its entry stores cancelled): give the @n
 * clusters at @host back, in an update of their own.  A commit may have
 * made their refcounts durable meanwhile: until this one's, they are leaked,
 * never referenced.
 */
static void qcow2_give_back(struct qcow2_target *qt, const u64 *host, unsigned int n)
{
	u32 cb = qcow2_top(qt)->qi.cluster_bits;
	unsigned int i;

	if (qcow2_begin_update(qt))
		return;
	mutex_lock(&qt->meta_lock);
	for (i = 0; i < n; i++)
		if (qcow2_refcount_add(qt, host[i] >> cb, -1, NULL))
			break;
	mutex_unlock(&qt->meta_lock);
	qcow2_end_update(qt);
}

/*
 * Write [@off, @off + @len) of guest cluster @guest_cluster from @bio (or
 * zeros if @bio is NULL), under its cluster lock.  The update allocates the
 * host cluster and ends before the data is written; the entry is stored
 * after the write, and the free of what it pointed to before (a shared or
 * compressed cluster) queued in an update after that, never before: a
 * commit takes the frees whose L2 changes its copies hold.
 */
static int qcow2_write_cluster(struct qcow2_target *qt, u64 guest_cluster,
			       u32 off, u32 len, struct bio *bio)
{
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	u32 cb = qi->cluster_bits, scb = qi->subcluster_bits;
	u64 l1_idx = guest_cluster >> (cb + qi->l2_bits);
	u64 l2_idx = (guest_cluster >> cb) & ((1ULL << qi->l2_bits) - 1);
	u32 slice_entries_bits = top->slice_bits - qi->l2_entry_shift;
	unsigned int idx = l2_idx & ((1U << slice_entries_bits) - 1);
	unsigned int sc_first = off >> scb, sc_last = (off + len - 1) >> scb, sc;
	struct qcow2_l2_entry old, new;
	enum qcow2_cluster_type t;
	u64 host, old_host = 0, free_len = 0;
	bool in_place, alloc = false, want_zeros, zeroed = false;
	bool fill_zero = false, buffered = false, store;
	struct qcow2_slice *s, *pre;
	u32 start, end;
	const char *err;
	void *buf = NULL;
	s64 h;
	int r;

	pre = qcow2_l2_prefetch(qt, l1_idx, l2_idx, false);
	s = qcow2_begin_l2_update(qt, l1_idx, l2_idx);
	if (IS_ERR(s)) {
		r = PTR_ERR(s);
		goto out;
	}
	qcow2_l2_entry_load(qi, qcow2_slice_data(s), idx, &old);

	for (sc = sc_first; sc <= sc_last; sc++) {
		if (qcow2_sc_type(qt, &old, sc) == QCOW2_CL_INVALID) {
			qcow2_l2_type(qi, &old, sc, &err);
			qcow2_corrupt(qt, err);
			r = -EIO;
			goto unlock;
		}
	}
	t = qcow2_sc_type(qt, &old, sc_first);
	/* In place: a host cluster of our own (COPIED), not compressed. */
	in_place = (old.entry & QCOW2_OFLAG_COPIED) && t != QCOW2_CL_COMPRESSED &&
		   (old.entry & QCOW2_L2E_OFFSET_MASK);
	new = old;
	if (in_place) {
		h = qcow2_l2_host_offset(qi, &old, top->dev_size, &err);
		if (h >= 0 && qcow2_is_metadata(qt, h >> cb)) {
			h = -EIO;
			err = "L2 entry points to metadata";
		}
		if (h < 0) {
			qcow2_corrupt(qt, err);
			r = -EIO;
			goto unlock;
		}
		host = h;
	} else {
		/* Zeros are of use to a write of part of a (sub)cluster only. */
		want_zeros = (off | (off + len)) & ((1U << scb) - 1) &&
			     qcow2_fill_is_zero(qt, &old, guest_cluster, 0, qi->cluster_size,
						off, len, true);
		h = __qcow2_alloc_cluster(qt, false, want_zeros ? &zeroed : NULL);
		if (h < 0) {
			r = h;
			goto unlock;
		}
		host = h;
		alloc = true;
		if (t == QCOW2_CL_COMPRESSED) {
			struct qcow2_compressed c;

			if (qcow2_decode_compressed(qi, old.entry, top->dev_size, &c, &err)) {
				qcow2_refcount_add(qt, host >> cb, -1, NULL);
				qcow2_corrupt(qt, err);
				r = -EIO;
				goto unlock;
			}
			old_host = c.offset & ~(u64)(SECTOR_SIZE - 1);
			free_len = c.nb_sectors << SECTOR_SHIFT;
		} else if (old.entry & QCOW2_L2E_OFFSET_MASK) {
			old_host = old.entry & QCOW2_L2E_OFFSET_MASK;
			free_len = qi->cluster_size;
		}
		if (free_len && qcow2_is_metadata(qt, old_host >> cb)) {
			qcow2_refcount_add(qt, host >> cb, -1, NULL);
			qcow2_corrupt(qt, "L2 entry points to metadata");
			r = -EIO;
			goto unlock;
		}
		new.entry = host;
		new.bitmap = qi->extended_l2 && t != QCOW2_CL_COMPRESSED ? old.bitmap : 0;
	}

	/*
	 * The range to write: the bytes given, widened to whole subclusters
	 * (whole clusters without extended L2) where what is around them must
	 * be filled in; the whole cluster when a shared or compressed cluster
	 * is copied.
	 */
	if (!in_place && (old.entry & QCOW2_L2E_OFFSET_MASK || t == QCOW2_CL_COMPRESSED) &&
	    (!qi->extended_l2 || t == QCOW2_CL_COMPRESSED || old.bitmap & QCOW2_L2_BITMAP_ALL_ALLOC)) {
		start = 0;
		end = qi->cluster_size;
	} else {
		start = qcow2_sc_type(qt, &old, sc_first) == QCOW2_CL_NORMAL && in_place ?
			off : sc_first << scb;
		end = qcow2_sc_type(qt, &old, sc_last) == QCOW2_CL_NORMAL && in_place ?
			off + len : (sc_last + 1) << scb;
	}

	/* The entry once written (a standard one loses its zero flag). */
	new.entry = (new.entry & ~(QCOW2_OFLAG_ZERO | QCOW2_OFLAG_COMPRESSED)) |
		    QCOW2_OFLAG_COPIED;
	if (qi->extended_l2) {
		for (sc = start >> scb; sc <= (end - 1) >> scb; sc++) {
			new.bitmap |= 1ULL << sc;
			new.bitmap &= ~(1ULL << (32 + sc));
		}
		if (!in_place && start == 0 && end == qi->cluster_size)
			/* Copied whole: what was allocated before is now too. */
			new.bitmap |= old.bitmap & QCOW2_L2_BITMAP_ALL_ALLOC;
	}
	store = new.entry != old.entry || new.bitmap != old.bitmap;
	if (store)
		qcow2_worker_store_begin(qt, s, 1);
	qcow2_slice_put(qt->cache, s);
	mutex_unlock(&qt->meta_lock);
	qcow2_end_update(qt);

	if (alloc)
		qcow2_count(qt, QCOW2_STAT_WORKER_ALLOCS);
	/*
	 * The data alone, the data with zeros around it, or the fill and the
	 * data in a buffer (buffered).  Whether the fill is zeros is asked
	 * only when there is a fill.
	 */
	if (start == off && end == off + len && bio) {
		r = qcow2_write_bio_at(qt, bio, host + off);
	} else {
		fill_zero = qcow2_fill_is_zero(qt, &old, guest_cluster, start, end, off, len,
					       false);
		if (!bio || !fill_zero) {
			buffered = true;
		} else if (zeroed) {
			qcow2_count(qt, QCOW2_STAT_ZEROED_ALLOCS);
			r = qcow2_write_bio_at(qt, bio, host + off);
		} else {
			qcow2_count(qt, QCOW2_STAT_ZERO_FILLS);
			r = qcow2_write_zero_filled(qt, bio, host, start, end, off, len);
			buffered = r == -EOPNOTSUPP;
			if (alloc)
				qcow2_zero_ahead_kick(qt);
		}
	}
	if (buffered) {
		if (!fill_zero)
			qcow2_count(qt, QCOW2_STAT_COPIES);
		buf = kvmalloc(end - start, GFP_NOIO);
		r = buf ? qcow2_fill_around(qt, &old, guest_cluster, start, end,
					    off, len, buf) : -ENOMEM;
		if (!r) {
			if (bio)
				qcow2_copy_from_bio(bio, buf + off - start);
			else
				memset(buf + off - start, 0, len);
			r = qcow2_write_bytes(qt, top, host + start, buf, end - start);
		}
		kvfree(buf);
	}

	/* The data is written: now the entry may point to it. */
	if (store) {
		qcow2_slice_store_l2(qt->cache, s, qi, idx, new, r ? 0 : 1);
		qcow2_worker_stored(qt);
	}
	if (r) {
		if (alloc)
			qcow2_give_back(qt, &host, 1);
	} else if (free_len) {
		r = qcow2_begin_update(qt);
		if (!r) {
			mutex_lock(&qt->meta_lock);
			r = qcow2_defer_free(qt, old_host, free_len);
			mutex_unlock(&qt->meta_lock);
			qcow2_end_update(qt);
		}
	}
	goto out;

unlock:
	qcow2_slice_put(qt->cache, s);
	mutex_unlock(&qt->meta_lock);
	qcow2_end_update(qt);
out:
	if (pre)
		qcow2_slice_put(qt->cache, pre);
	return r;
}

/*
 * Discard or write zeroes over all of guest cluster @guest_cluster: make it a
 * zero cluster (or unallocated where nothing can show through) and free its
 * host cluster.  Returns -EAGAIN when only a data write can do it (v2 image
 * with a backing file and write-zeroes).
 */
static int qcow2_zero_whole_cluster(struct qcow2_target *qt, u64 guest_cluster,
				    bool discard)
{
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	u32 cb = qi->cluster_bits;
	u64 l1_idx = guest_cluster >> (cb + qi->l2_bits);
	u64 l2_idx = (guest_cluster >> cb) & ((1ULL << qi->l2_bits) - 1);
	u32 slice_entries_bits = top->slice_bits - qi->l2_entry_shift;
	bool backing = qt->nr_layers > 1, v2 = qi->version == 2;
	struct qcow2_l2_entry old, new = {};
	struct qcow2_compressed c;
	enum qcow2_cluster_type t;
	struct qcow2_slice *s;
	const char *err;
	s64 l2;
	int r;

	if (v2 && backing)
		return discard ? 0 : -EAGAIN;

	r = qcow2_begin_update(qt);
	if (r)
		return r;
	mutex_lock(&qt->meta_lock);
	l2 = qcow2_l1_entry_l2_offset(qi, top->l1[l1_idx], top->dev_size, &err);
	if (l2 == 0 && !backing)
		goto unlock;	/* unallocated, nothing below: already zeros */
	l2 = qcow2_l2_writable(qt, l1_idx);
	if (l2 < 0) {
		r = l2;
		goto unlock;
	}
	s = qcow2_slice_get(qt->cache, top,
			    qcow2_l2_slice_off(top, l2, l2_idx), false);
	if (IS_ERR(s)) {
		r = PTR_ERR(s);
		goto unlock;
	}
	l2_idx &= (1U << slice_entries_bits) - 1;
	qcow2_l2_entry_load(qi, qcow2_slice_data(s), l2_idx, &old);
	t = qcow2_l2_type(qi, &old, 0, &err);
	if (t != QCOW2_CL_COMPRESSED && (old.entry & QCOW2_L2E_OFFSET_MASK) &&
	    qcow2_is_metadata(qt, (old.entry & QCOW2_L2E_OFFSET_MASK) >> cb)) {
		t = QCOW2_CL_INVALID;
		err = "L2 entry points to metadata";
	}
	if (t == QCOW2_CL_INVALID) {
		qcow2_slice_put(qt->cache, s);
		qcow2_corrupt(qt, err);
		r = -EIO;
		goto unlock;
	}
	if (!v2) {
		if (qi->extended_l2)
			new.bitmap = QCOW2_L2_BITMAP_ALL_ZEROES;
		else
			new.entry = QCOW2_OFLAG_ZERO;
		/* Without anything below, an unallocated cluster is zeros already. */
		if (!backing && t == QCOW2_CL_UNALLOCATED && !old.bitmap)
			new = old;
	}
	if (new.entry != old.entry || new.bitmap != old.bitmap) {
		qcow2_l2_entry_store(qi, qcow2_slice_data(s), l2_idx, &new);
		qcow2_slice_mark_dirty(qt->cache, s, QCOW2_GROUP_MAPPING);
		qcow2_count(qt, QCOW2_STAT_ZEROED_CLUSTERS);
	}
	qcow2_slice_put(qt->cache, s);

	if (t == QCOW2_CL_COMPRESSED) {
		if (qcow2_decode_compressed(qi, old.entry, top->dev_size, &c, &err)) {
			qcow2_corrupt(qt, err);
			r = -EIO;
		} else {
			r = qcow2_defer_free(qt, c.offset & ~(u64)(SECTOR_SIZE - 1),
					     c.nb_sectors << SECTOR_SHIFT);
		}
	} else if (old.entry & QCOW2_L2E_OFFSET_MASK) {
		r = qcow2_defer_free(qt, old.entry & QCOW2_L2E_OFFSET_MASK,
				     qi->cluster_size);
	}
unlock:
	mutex_unlock(&qt->meta_lock);
	qcow2_end_update(qt);
	return r;
}

/*
 * Is the first guest cluster of a batch, entry (@l1_idx, @l2_idx), worth a
 * try: not mapped to a cluster of its own as far as a look at the cache
 * without locks tells?
 */
static bool qcow2_batch_worth(struct qcow2_target *qt, u64 l1_idx, u64 l2_idx)
{
	struct qcow2_layer *top = qcow2_top(qt);
	u32 slice_entries_bits = top->slice_bits - top->qi.l2_entry_shift;
	struct qcow2_slice *s = qcow2_l2_prefetch(qt, l1_idx, l2_idx, true);
	struct qcow2_l2_entry e;

	if (!s)
		return true;
	qcow2_l2_entry_load(&top->qi, qcow2_slice_data(s),
			    l2_idx & ((1U << slice_entries_bits) - 1), &e);
	qcow2_slice_put(qt->cache, s);
	return !(e.entry & QCOW2_L2E_OFFSET_MASK);
}

/*
 * Write @n (>= 2) whole guest clusters from byte @gc on, taken from @bio at
 * byte @done: those of them, from the first on and in one L2 slice, that
 * have no host cluster (unallocated or zero) are allocated together, their
 * data written in parallel (adjacent host clusters merge into one request)
 * and mapped in one pass.  Without a batch, a large write would wait for
 * each cluster in turn.  At most QCOW2_BATCH_MAX clusters.  Returns the
 * number of clusters written, 0 if the one-cluster path must do the first
 * one, or a negative errno.
 */
static int qcow2_write_batch(struct qcow2_target *qt, struct bio *bio, u64 done,
			     u64 gc, unsigned int n)
{
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	u32 cb = qi->cluster_bits;
	u64 l1_idx = gc >> (cb + qi->l2_bits);
	u64 l2_idx = (gc >> cb) & ((1ULL << qi->l2_bits) - 1);
	u32 slice_entries_bits = top->slice_bits - qi->l2_entry_shift;
	unsigned int first = l2_idx & ((1U << slice_entries_bits) - 1);
	u64 no_host = qi->extended_l2 || qi->version < 3 ? ~0ULL : ~QCOW2_OFLAG_ZERO;
	DECLARE_BITMAP(held, 1 << QCOW2_CLUSTER_LOCK_BITS);
	struct qcow2_batch_io b = { .status = BLK_STS_OK };
	u64 host[QCOW2_BATCH_MAX];
	struct qcow2_slice *s, *pre;
	struct qcow2_l2_entry e;
	unsigned int i, k, bit;
	struct blk_plug plug;
	s64 h;
	int r;

	n = min3(n, QCOW2_BATCH_MAX, (1U << slice_entries_bits) - first);
	if (n < 2 || !qcow2_batch_worth(qt, l1_idx, l2_idx))
		return 0;
	/*
	 * The first cluster's lock is waited for, as by the one-cluster path;
	 * the others are only tried, so that a batch never waits while holding
	 * a cluster lock (no lock order needed, no deadlock between batches):
	 * it ends before the first cluster whose lock is held elsewhere.
	 */
	bitmap_zero(held, 1 << QCOW2_CLUSTER_LOCK_BITS);
	bit = qcow2_cluster_bit(gc >> cb);
	qcow2_cluster_lock(qt, bit);
	__set_bit(bit, held);
	for (i = 1; i < n; i++) {
		bit = qcow2_cluster_bit((gc >> cb) + i);
		if (test_bit(bit, held))
			continue;
		if (!qcow2_cluster_trylock(qt, bit))
			break;
		__set_bit(bit, held);
	}
	n = i;
	if (n < 2) {
		r = 0;
		pre = NULL;
		goto out;
	}

	pre = qcow2_l2_prefetch(qt, l1_idx, l2_idx, false);
	s = qcow2_begin_l2_update(qt, l1_idx, l2_idx);
	if (IS_ERR(s)) {
		r = PTR_ERR(s);
		goto out;
	}
	/* Nothing to free or fill: no host cluster, whole clusters written. */
	for (k = 0; k < n; k++) {
		qcow2_l2_entry_load(qi, qcow2_slice_data(s), first + k, &e);
		if ((e.entry & no_host) || (qi->extended_l2 && (e.bitmap & QCOW2_L2_BITMAP_ALL_ALLOC)))
			break;
	}
	for (i = 0; i < k; i++) {
		h = qcow2_alloc_cluster(qt);
		if (h < 0)
			break;
		host[i] = h;
	}
	if (i < k || k < 2) {
		/* The one-cluster path reports what went wrong, if anything. */
		while (i--)
			qcow2_refcount_add(qt, host[i] >> cb, -1, NULL);
		qcow2_slice_put(qt->cache, s);
		r = 0;
		goto unlock;
	}
	/* The entries are stored once the data is written. */
	qcow2_worker_store_begin(qt, s, k);
	qcow2_slice_put(qt->cache, s);
	mutex_unlock(&qt->meta_lock);
	qcow2_end_update(qt);

	atomic_set(&b.pending, 1);
	init_completion(&b.done);
	blk_start_plug(&plug);
	for (i = 0; i < k; i++) {
		struct bio *clone = bio_alloc_clone(top->dev->bdev, bio, GFP_NOIO, &qt->write_bs);

		if (!clone) {
			WRITE_ONCE(b.status, BLK_STS_RESOURCE);
			break;
		}
		bio_trim(clone, (done >> SECTOR_SHIFT) + ((u64)i << (cb - SECTOR_SHIFT)),
			 1U << (cb - SECTOR_SHIFT));
		clone->bi_iter.bi_sector = host[i] >> SECTOR_SHIFT;
		clone->bi_opf &= ~(REQ_PREFLUSH | REQ_FUA);
		clone->bi_private = &b;
		clone->bi_end_io = qcow2_batch_end_io;
		atomic_inc(&b.pending);
		submit_bio(clone);
	}
	blk_finish_plug(&plug);
	if (!atomic_dec_and_test(&b.pending))
		wait_for_completion_io(&b.done);
	r = blk_status_to_errno(READ_ONCE(b.status));

	for (i = 0; i < k; i++) {
		e.entry = host[i] | QCOW2_OFLAG_COPIED;
		e.bitmap = qi->extended_l2 ? QCOW2_L2_BITMAP_ALL_ALLOC : 0;
		qcow2_slice_store_l2(qt->cache, s, qi, first + i, e, r ? 0 : 1);
	}
	qcow2_worker_stored(qt);
	if (r) {
		qcow2_give_back(qt, host, k);
		goto out;
	}
	qcow2_count_add(qt, QCOW2_STAT_WORKER_ALLOCS, k);
	r = k;
	goto out;

unlock:
	mutex_unlock(&qt->meta_lock);
	qcow2_end_update(qt);
out:
	if (pre)
		qcow2_slice_put(qt->cache, pre);
	/* The first cluster's lock was waited for, the others tried. */
	lock_map_release(&qt->cluster_dep_map);
	for_each_set_bit(bit, held, 1 << QCOW2_CLUSTER_LOCK_BITS)
		qcow2_cluster_unlock(qt, bit);
	return r;
}

/* ----------------------------------------------------------------------- */
/* Allocation in map()                                                     */

/* A fill read by qcow2_cow_src_alloc(): its pages and the bio. */
static void qcow2_cow_src_free(struct bio *src)
{
	struct bvec_iter_all iter;
	struct bio_vec *bv;

	bio_for_each_segment_all(bv, src, iter)
		__free_page(bv->bv_page);
	bio_put(src);
}

/* Unlock guest clusters @gc + [@from, @to), locked by an allocation in map(). */
static void qcow2_alloc_unlock(struct qcow2_target *qt, u64 gc, unsigned int from,
			       unsigned int to)
{
	for (; from < to; from++)
		qcow2_cluster_unlock(qt, qcow2_cluster_bit(gc + from));
}

/*
 * Start an update in map(), its cluster locks held: false if a commit is
 * keeping such updates out (give up then, with qcow2_alloc_abort()).
 */
static bool qcow2_alloc_begin(struct qcow2_target *qt)
{
	atomic_inc(&qt->fast_updates);
	smp_mb__after_atomic();	/* pairs with qcow2_updates_lock() */
	return !READ_ONCE(qt->fast_blocked);
}

/* An update in map() that changed nothing: let go of it. */
static void qcow2_alloc_abort(struct qcow2_target *qt, struct qcow2_bio *qb)
{
	qcow2_alloc_unlock(qt, qb->alloc_gc, 0, qb->alloc_n);
	qcow2_fast_put(qt, &qt->fast_updates);
}

/*
 * The metadata changes of an update in map() are made, but for the entries,
 * which the completion of its data write stores: commits need not wait for
 * that write, only commits that write L2 slices from the cache itself do
 * (fast_stores).
 */
static void qcow2_alloc_started(struct qcow2_target *qt)
{
	atomic_inc(&qt->fast_stores);
	qcow2_fast_put(qt, &qt->fast_updates);
}

/* The end of an update made in map(): in any context. */
static void qcow2_alloc_release(struct qcow2_target *qt, struct qcow2_bio *qb)
{
	qcow2_alloc_unlock(qt, qb->alloc_gc, 0, qb->alloc_n);
	qcow2_fast_put(qt, &qt->fast_stores);
}

/*
 * The data write failed: give the clusters back, then fail the bio.  The
 * cluster locks and fast_updates were released already (nothing refers to
 * the clusters, so a plain update can free them).
 */
static void qcow2_alloc_undo(struct work_struct *work)
{
	struct qcow2_bio *qb = container_of(work, struct qcow2_bio, work);
	struct bio *bio = dm_bio_from_per_bio_data(qb, sizeof(*qb));
	struct qcow2_target *qt = qb->qt;
	u64 host[QCOW2_BATCH_MAX];
	unsigned int i;

	/* Contiguous: the first at the entry, the others after it. */
	for (i = 0; i < qb->alloc_n; i++)
		host[i] = (qb->alloc_entry.entry & QCOW2_L2E_OFFSET_MASK) +
			  ((u64)i << qcow2_top(qt)->qi.cluster_bits);
	qcow2_give_back(qt, host, qb->alloc_n);
	bio_endio(bio);
}

static void qcow2_alloc_end_io(struct bio *w)
{
	struct bio *bio = w->bi_private;
	struct qcow2_bio *qb = dm_per_bio_data(bio, sizeof(*qb));
	struct qcow2_target *qt = qb->qt;
	const struct qcow2_info *qi = &qcow2_top(qt)->qi;
	blk_status_t st = w->bi_status;

	bio_put(w);
	if (qb->cow_src) {
		qcow2_cow_src_free(qb->cow_src);
		qb->cow_src = NULL;
	}
	if (st) {
		bio->bi_status = st;
		qcow2_slice_store_l2(qt->cache, qb->alloc_l2, qi, qb->alloc_idx,
				     qb->alloc_entry, 0);
		/*
		 * Release first: the worker that gives the cluster back may
		 * queue behind workers that wait for this cluster lock.  Until
		 * then the cluster is only leaked, never referenced.  Nothing
		 * to give back when the subclusters were of a cluster we had.
		 */
		qcow2_alloc_release(qt, qb);
		if (!qb->alloc_new) {
			bio_endio(bio);
			return;
		}
		INIT_WORK(&qb->work, qcow2_alloc_undo);
		queue_work(qt->wq, &qb->work);
		return;
	}
	/* The data is written: now the entries may point to it. */
	qcow2_slice_store_l2(qt->cache, qb->alloc_l2, qi, qb->alloc_idx,
			     qb->alloc_entry, qb->alloc_n);
	qcow2_alloc_release(qt, qb);
	bio_endio(bio);
}

/*
 * A bio that reads [@start, @end) of a cluster's fill from @run (data of a
 * backing layer) into pages of its own, one per page from @start.
 */
static struct bio *qcow2_cow_src_alloc(struct qcow2_target *qt, const struct qcow2_run *run,
				       u32 start, u32 end)
{
	unsigned int i, nr = DIV_ROUND_UP(end - start, PAGE_SIZE);
	struct bio *src;
	struct page *page;

	src = bio_alloc_bioset(run->layer->dev->bdev, nr, REQ_OP_READ, GFP_NOWAIT,
			       &qt->write_bs);
	if (!src)
		return NULL;
	src->bi_iter.bi_sector = run->host >> SECTOR_SHIFT;
	for (i = 0; i < nr; i++) {
		page = alloc_page(GFP_NOWAIT | __GFP_NOWARN);
		if (!page) {
			qcow2_cow_src_free(src);
			return NULL;
		}
		__bio_add_page(src, page, min_t(u32, PAGE_SIZE, end - start - i * PAGE_SIZE), 0);
	}
	return src;
}

/* The fill is read: write it with the data (bios are not submitted in irq). */
static void qcow2_cow_write(struct work_struct *work)
{
	struct qcow2_bio *qb = container_of(work, struct qcow2_bio, work);

	submit_bio_noacct(qb->cow_write);
}

static void qcow2_cow_read_end_io(struct bio *src)
{
	struct bio *bio = src->bi_private;
	struct qcow2_bio *qb = dm_per_bio_data(bio, sizeof(*qb));
	struct bio *w = qb->cow_write;

	if (src->bi_status) {
		/* Not written: fails @bio and gives the cluster back. */
		w->bi_status = src->bi_status;
		qcow2_alloc_end_io(w);
		return;
	}
	INIT_WORK(&qb->work, qcow2_cow_write);
	queue_work(qb->qt->io_wq, &qb->work);
}

/*
 * Allocate whole clusters for write @bio in map(), which starts at guest
 * offset @guest, a cluster boundary: its first 2 to QCOW2_BATCH_MAX
 * clusters, in one L2 slice, that have nothing in the top layer.  A whole
 * cluster needs no fill, whatever the layers below hold.  The clusters are
 * allocated while the allocator finds them contiguous on the host and in
 * cached refcounts; @bio is cut to them (dm core maps the rest as another
 * bio) and one clone writes them, whose completion stores their entries as
 * for one cluster (qcow2_alloc_end_io()).  The cluster locks are only
 * tried; a lock held elsewhere, or a lock bit that two of the clusters
 * share, ends the run.  Returns false, having changed nothing, when the
 * worker must do the write.
 */
static bool qcow2_alloc_whole_in_map(struct qcow2_target *qt, struct bio *bio, u64 guest)
{
	struct qcow2_bio *qb = dm_per_bio_data(bio, sizeof(*qb));
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	u32 cb = qi->cluster_bits;
	u32 slice_entries_bits = top->slice_bits - qi->l2_entry_shift;
	u64 gc = guest >> cb;
	unsigned int first = gc & ((1U << slice_entries_bits) - 1);
	unsigned int n, i, k, bit;
	struct qcow2_l2_entry old;
	u64 nr = top->dev_size >> cb;
	struct qcow2_slice *s;
	struct bio *w;
	s64 l2, h = 0;

	n = min3(bio->bi_iter.bi_size >> cb, QCOW2_BATCH_MAX, (1U << slice_entries_bits) - first);
	if (n < 2)
		return false;
	l2 = qcow2_own_l2(qt, guest);
	if (l2 <= 0)
		return false;
	for (i = 0; i < n; i++) {
		bit = qcow2_cluster_bit(gc + i);
		for (k = 0; k < i; k++)
			if (qcow2_cluster_bit(gc + k) == bit)
				break;
		if (k < i || !qcow2_cluster_trylock(qt, bit))
			break;
	}
	if (i < 2) {
		qcow2_alloc_unlock(qt, gc, 0, i);
		return false;
	}
	n = i;
	qb->qt = qt;
	qb->alloc_gc = gc;
	qb->alloc_n = n;
	qb->alloc_new = true;
	if (!qcow2_alloc_begin(qt))
		goto release;
	s = qcow2_slice_get(qt->cache, top,
			    qcow2_l2_slice_off(top, l2, gc & ((1ULL << qi->l2_bits) - 1)), true);
	if (IS_ERR(s))
		goto release;
	for (k = 0; k < n; k++) {
		qcow2_l2_entry_load(qi, qcow2_slice_data(s), first + k, &old);
		if (old.entry || old.bitmap)
			break;
	}
	/* Cloned before the cut: nothing to undo once clusters are allocated. */
	w = k ? bio_alloc_clone(top->dev->bdev, bio, GFP_NOWAIT, &qt->write_bs) : NULL;
	if (!w)
		goto put;
	i = 0;
	if (qcow2_cache_reserve(qt->cache, QCOW2_MAP_RUN_SLICES)) {
		if (mutex_trylock(&qt->meta_lock)) {
			/* The first cluster anywhere, the others right after it. */
			for (; i < k; i++) {
				s64 c = qcow2_alloc_below(qt, i ? min(nr, ((u64)h >> cb) + i + 1) : nr,
							  true, NULL);

				if (c < 0)
					break;
				if (!i)
					h = c;
			}
			if (i)
				qcow2_slice_mark_store(qt->cache, s, QCOW2_GROUP_MAPPING);
			mutex_unlock(&qt->meta_lock);
		}
		qcow2_cache_unreserve(qt->cache, QCOW2_MAP_RUN_SLICES);
	}
	if (!i) {
		bio_put(w);
		goto put;
	}
	qcow2_alloc_started(qt);
	qcow2_alloc_unlock(qt, gc, i, n);
	qb->alloc_n = i;
	qcow2_count(qt, QCOW2_STAT_MAP_WRITES);
	qcow2_count_add(qt, QCOW2_STAT_MAP_ALLOCS, i);
	/* Dirty now, and written from copies only until the entries are in. */
	qb->alloc_l2 = s;
	qb->alloc_idx = first;
	qcow2_slice_put(qt->cache, s);
	qb->alloc_entry.entry = h | QCOW2_OFLAG_COPIED;
	qb->alloc_entry.bitmap = qi->extended_l2 ? QCOW2_L2_BITMAP_ALL_ALLOC : 0;
	qb->cow_src = NULL;

	if (bio->bi_iter.bi_size > (i << cb))
		dm_accept_partial_bio(bio, i << (cb - SECTOR_SHIFT));
	bio_trim(w, 0, i << (cb - SECTOR_SHIFT));
	w->bi_iter.bi_sector = h >> SECTOR_SHIFT;
	w->bi_opf &= ~(REQ_PREFLUSH | REQ_FUA);
	w->bi_private = bio;
	w->bi_end_io = qcow2_alloc_end_io;
	submit_bio_noacct(w);
	return true;

put:
	qcow2_slice_put(qt->cache, s);
release:
	qcow2_alloc_abort(qt, qb);
	return false;
}

/*
 * Allocate a cluster for write @bio in map(), which must not wait for I/O:
 * a write within one cluster that has no host cluster (or, with extended
 * L2, into unallocated subclusters of a host cluster of our own, which
 * needs no allocation but the same entry update), when the metadata it
 * needs (of the layers below too) is cached and neither the cluster lock nor
 * meta_lock (not taken for subclusters) is contended.  What is around the
 * write in its (sub)clusters, the fill, is zeros (no backing file, or
 * nothing in the layers below there), or data that one layer below has in
 * one piece (copy-on-write), or nothing (the write covers whole
 * subclusters; whole clusters without extended L2).
 * A bio of our own writes the data, with zeros around it unless the cluster
 * was zeroed ahead, or with the fill that another bio of ours first reads
 * from the layer below (its completion has a worker submit the write); the
 * write's completion stores the L2 entry, so that nothing sees the entry
 * before the data, and completes @bio.  Until then the cluster lock is held
 * and fast_stores counts the update: the L2 slice, dirty from here on, is
 * neither evicted nor written back from the cache before the entry is in
 * it, and stays dirty after a commit wrote a copy of it.  This saves the
 * worker's two wakeups (one, with a copy: the write is submitted from
 * process context).  Returns false, having changed nothing, when the
 * worker must do the write.  Nothing here may
 * wait for I/O, not even to report corruption: a bio submitted from map()
 * is queued until map() returns, so waiting for it would never end.
 */
bool qcow2_alloc_in_map(struct qcow2_target *qt, struct bio *bio)
{
	struct qcow2_bio *qb = dm_per_bio_data(bio, sizeof(*qb));
	struct qcow2_layer *top = qcow2_top(qt);
	const struct qcow2_info *qi = &top->qi;
	u32 cb = qi->cluster_bits, scb = qi->subcluster_bits;
	u32 slice_entries_bits = top->slice_bits - qi->l2_entry_shift;
	u64 guest = (u64)dm_target_offset(qt->ti, bio->bi_iter.bi_sector) << SECTOR_SHIFT;
	u32 off = guest & (qi->cluster_size - 1);
	u32 len = bio->bi_iter.bi_size;
	u32 start = (off >> scb) << scb, end;
	u64 l2_idx = (guest >> cb) & ((1ULL << qi->l2_bits) - 1);
	struct qcow2_l2_entry old;
	struct bio *w = NULL, *fill = NULL, *src = NULL;
	struct qcow2_run run = { .type = QCOW2_RUN_ZERO };
	struct qcow2_slice *s;
	bool zeroed = false;
	const char *err;
	s64 l2, h, own = -1;
	u64 sc;

	/* Larger writes: whole clusters, or the worker allocates them in batches. */
	if (len > qi->cluster_size - off)
		return !off && qcow2_alloc_whole_in_map(qt, bio, guest);
	end = (((off + len - 1) >> scb) + 1) << scb;
	/*
	 * Over a backing file, the fill is zeros where the layers below have
	 * nothing, or is copied from one of them: only data in one piece,
	 * read in one bio.  Whole (sub)clusters need no fill.
	 */
	if (qt->nr_layers != 1 && (start != off || end != off + len) &&
	    (qcow2_resolve(qt, 1, guest - off + start, end - start, true, &run) ||
	     run.len < end - start || (run.type != QCOW2_RUN_ZERO &&
	     (run.type != QCOW2_RUN_DATA || end - start > QCOW2_FILL_INLINE))))
		return false;
	l2 = qcow2_own_l2(qt, guest);
	if (l2 <= 0)
		return false;

	qb->qt = qt;
	qb->alloc_gc = guest >> cb;
	qb->alloc_n = 1;
	if (!qcow2_cluster_trylock(qt, qcow2_cluster_bit(qb->alloc_gc)))
		return false;
	if (!qcow2_alloc_begin(qt))
		goto release;
	s = qcow2_slice_get(qt->cache, top,
			    qcow2_l2_slice_off(top, l2, l2_idx), true);
	if (IS_ERR(s))
		goto release;
	qb->alloc_idx = l2_idx & ((1U << slice_entries_bits) - 1);
	qcow2_l2_entry_load(qi, qcow2_slice_data(s), qb->alloc_idx, &old);
	/*
	 * Nothing in the top layer: allocate.  With extended L2, a host
	 * cluster of our own whose subclusters to write are unallocated
	 * (they read what is below, as an unallocated cluster does) takes
	 * the data where it is, and its entry only gains them.
	 */
	qb->alloc_new = !old.entry && !old.bitmap;
	if (!qb->alloc_new) {
		if (!qi->extended_l2)
			goto put;
		for (sc = start >> scb; sc < end >> scb; sc++)
			if (qcow2_l2_type(qi, &old, sc, &err) != QCOW2_CL_UNALLOCATED_ALLOC)
				goto put;
		own = qcow2_own_host(top, &old);
		if (own < 0)
			goto put;
	}
	/*
	 * The data alone (w), or with zeros around it (fill); with both, the
	 * allocation picks: w if the cluster was zeroed ahead.
	 */
	if (start != off || end != off + len) {
		if (run.type == QCOW2_RUN_DATA) {
			src = qcow2_cow_src_alloc(qt, &run, start, end);
			if (!src)
				goto put;
		}
		if (end - start <= QCOW2_FILL_INLINE)
			fill = qcow2_filled_bio(qt, bio, 0, start, end, off, len, src,
						GFP_NOWAIT);
		if (!fill)
			goto put;
	}
	if (!src && (!fill || (qb->alloc_new &&
				      !test_bit(QCOW2_FLAG_NO_ZERO_AHEAD, &qt->flags)))) {
		w = bio_alloc_clone(top->dev->bdev, bio, GFP_NOWAIT, &qt->write_bs);
		if (!w)
			goto put;
	}
	if (!qcow2_cache_reserve(qt->cache, QCOW2_MAP_ALLOC_SLICES))
		goto put;
	h = -EWOULDBLOCK;
	if (!qb->alloc_new) {
		/* Subclusters of a host cluster of ours: no allocator, no meta_lock. */
		h = own;
		qcow2_slice_mark_store(qt->cache, s, QCOW2_GROUP_MAPPING);
	} else if (mutex_trylock(&qt->meta_lock)) {
		h = __qcow2_alloc_cluster(qt, true, fill && w ? &zeroed : NULL);
		if (h >= 0)
			qcow2_slice_mark_store(qt->cache, s, QCOW2_GROUP_MAPPING);
		mutex_unlock(&qt->meta_lock);
		if (h >= 0 && fill && !zeroed && !src)
			qcow2_zero_ahead_kick(qt);
	}
	qcow2_cache_unreserve(qt->cache, QCOW2_MAP_ALLOC_SLICES);
	if (h < 0)
		goto put;
	qcow2_alloc_started(qt);
	qcow2_count(qt, QCOW2_STAT_MAP_WRITES);
	if (qb->alloc_new)
		qcow2_count(qt, QCOW2_STAT_MAP_ALLOCS);
	if (src)
		qcow2_count(qt, QCOW2_STAT_COPIES);
	else if (fill)
		qcow2_count(qt, zeroed ? QCOW2_STAT_ZEROED_ALLOCS : QCOW2_STAT_ZERO_FILLS);
	/* Dirty now, and written from copies only until the entry is in. */
	qb->alloc_l2 = s;
	qcow2_slice_put(qt->cache, s);
	qb->alloc_entry.entry = h | QCOW2_OFLAG_COPIED;
	qb->alloc_entry.bitmap = old.bitmap;
	if (qi->extended_l2)
		for (sc = start >> scb; sc < end >> scb; sc++)
			qb->alloc_entry.bitmap |= 1ULL << sc;

	if (fill && !zeroed) {
		if (w)
			bio_put(w);
		w = fill;
		w->bi_iter.bi_sector = (h + start) >> SECTOR_SHIFT;
	} else {
		if (fill)
			bio_put(fill);
		w->bi_iter.bi_sector = (h + off) >> SECTOR_SHIFT;
	}
	w->bi_opf &= ~(REQ_PREFLUSH | REQ_FUA);
	w->bi_private = bio;
	w->bi_end_io = qcow2_alloc_end_io;
	qb->cow_src = src;
	if (src) {
		/* First the fill: its completion submits the write. */
		qb->cow_write = w;
		src->bi_private = bio;
		src->bi_end_io = qcow2_cow_read_end_io;
		bio_clone_blkg_association(src, bio);
		src->bi_ioprio = bio->bi_ioprio;
		submit_bio_noacct(src);
	} else {
		submit_bio_noacct(w);
	}
	return true;

put:
	if (src)
		qcow2_cow_src_free(src);
	if (fill)
		bio_put(fill);
	if (w)
		bio_put(w);
	qcow2_slice_put(qt->cache, s);
release:
	qcow2_alloc_abort(qt, qb);
	return false;
}

/*
 * Process a write, discard or write-zeroes bio, one cluster at a time.
 * Returns a block status for the whole bio.
 */
blk_status_t qcow2_process_write(struct qcow2_target *qt, struct bio *bio)
{
	struct qcow2_layer *top = qcow2_top(qt);
	u32 cb = top->qi.cluster_bits;
	u64 cs = 1ULL << cb;
	u64 guest = (u64)dm_target_offset(qt->ti, bio->bi_iter.bi_sector) << SECTOR_SHIFT;
	u64 end = guest + bio->bi_iter.bi_size;
	enum req_op op = bio_op(bio);
	u64 done = 0;
	int r = 0;

	if (READ_ONCE(qt->mode) != QCOW2_MODE_RW)
		return BLK_STS_IOERR;

	while (guest < end && !r) {
		u64 gc = guest & ~(cs - 1);
		u32 off = guest - gc;
		u32 len = min(end - guest, cs - off);
		unsigned int bit = qcow2_cluster_bit(gc >> cb);

		if (op == REQ_OP_WRITE && !off && end - guest >= 2 * cs) {
			r = qcow2_write_batch(qt, bio, done, gc,
					      min_t(u64, (end - guest) >> cb, QCOW2_BATCH_MAX));
			if (r > 0) {
				guest += (u64)r << cb;
				done += (u64)r << cb;
				r = 0;
				continue;
			}
			if (r)
				break;
		}
		qcow2_cluster_lock(qt, bit);
		if (op == REQ_OP_WRITE) {
			struct bio *piece = bio_alloc_clone(bio->bi_bdev, bio, GFP_NOIO, &qt->bs);

			if (!piece) {
				r = -ENOMEM;
			} else {
				bio_trim(piece, done >> SECTOR_SHIFT, len >> SECTOR_SHIFT);
				r = qcow2_write_cluster(qt, gc, off, len, piece);
				bio_put(piece);
			}
		} else if (!off && len == cs) {
			r = qcow2_zero_whole_cluster(qt, gc, op == REQ_OP_DISCARD);
			if (r == -EAGAIN)
				r = qcow2_write_cluster(qt, gc, off, len, NULL);
		} else {
			/* Partial cluster: write zeros into it. */
			r = qcow2_write_cluster(qt, gc, off, len, NULL);
		}
		qcow2_cluster_unlock_waited(qt, bit);
		guest += len;
		done += len;
	}
	if (!r && (bio->bi_opf & REQ_FUA))
		r = qcow2_commit(qt, false);
	if (r == -ENOSPC)
		return BLK_STS_NOSPC;
	return errno_to_blk_status(r);
}
