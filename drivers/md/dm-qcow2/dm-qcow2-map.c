// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2 I/O path.
 *
 * A bio is resolved into runs: maximal guest ranges with one mapping (host
 * data on one layer's device, zeros, a compressed cluster, or an error).
 * Adjacent clusters that are contiguous on the host form one run, so a large
 * bio is split only where the mapping is discontiguous.
 *
 * map() resolves the first run from cached metadata without sleeping: data
 * is remapped in place (dm_accept_partial_bio() hands the rest of the bio
 * back to dm core), zeros are filled in, and a write into a cluster that has
 * no data yet may allocate it there (qcow2_alloc_in_map(); with extended L2
 * also a write into unallocated subclusters of a cluster of our own).  Anything that
 * needs metadata I/O or decompression goes to a worker, which resolves every
 * run of the bio, chaining one clone per run to the original.
 */
#include <linux/bio.h>
#include <linux/highmem.h>

#include "dm-qcow2.h"

static void qcow2_run_error(struct qcow2_layer *layer, u64 guest,
			    const char *what, struct qcow2_run *run)
{
	DMERR_LIMIT("%s: layer %u: guest offset %llu: %s",
		    qcow2_dev_name(layer->qt), layer->idx, guest, what);
	run->type = QCOW2_RUN_ERROR;
}

/* Classify one L2 entry (one subcluster run) into @run, at most @len bytes. */
static void qcow2_decode_run(struct qcow2_layer *layer,
			     const struct qcow2_l2_entry *l2e, u64 guest,
			     u64 len, struct qcow2_run *run)
{
	const struct qcow2_info *qi = &layer->qi;
	u64 in_cluster = guest & (qi->cluster_size - 1);
	unsigned int sc = in_cluster >> qi->subcluster_bits;
	const char *err = NULL;
	s64 host;

	run->layer = layer;
	switch (qcow2_l2_type(qi, l2e, sc, &err)) {
	case QCOW2_CL_UNALLOCATED:
	case QCOW2_CL_UNALLOCATED_ALLOC:
		run->type = QCOW2_RUN_UNALLOCATED;
		break;
	case QCOW2_CL_ZERO_PLAIN:
	case QCOW2_CL_ZERO_ALLOC:
		run->type = QCOW2_RUN_ZERO;
		break;
	case QCOW2_CL_COMPRESSED:
		run->type = QCOW2_RUN_COMPRESSED;
		run->entry = l2e->entry;
		run->offset_in_cluster = in_cluster;
		run->len = min(len, qi->cluster_size - in_cluster);
		return;
	case QCOW2_CL_NORMAL:
		host = qcow2_l2_host_offset(qi, l2e, layer->dev_size, &err);
		if (host < 0) {
			run->type = QCOW2_RUN_ERROR;
			run->err = err;
			break;
		}
		run->type = QCOW2_RUN_DATA;
		run->host = host + in_cluster;
		break;
	default:
		run->type = QCOW2_RUN_ERROR;
		run->err = err ? err : "invalid L2 entry";
		break;
	}
	run->len = min(len, ((u64)(sc + qcow2_subcluster_run(qi, l2e, sc)) <<
			     qi->subcluster_bits) - in_cluster);
}

/* Can the run be extended by the next L2 entry? */
static bool qcow2_run_continues(const struct qcow2_run *run,
				const struct qcow2_run *next)
{
	if (next->type != run->type)
		return false;
	if (run->type == QCOW2_RUN_DATA)
		return next->host == run->host + run->len;
	return run->type == QCOW2_RUN_ZERO ||
	       run->type == QCOW2_RUN_UNALLOCATED;
}

/*
 * Resolve the mapping of guest bytes [@guest, @guest + @len) in one qcow2
 * layer.  Returns 0 with @run filled (possibly UNALLOCATED: ask the next
 * layer for run->len bytes) or -EWOULDBLOCK with @nowait on a cache miss.
 */
static int qcow2_layer_resolve(struct qcow2_layer *layer, u64 guest, u64 len,
			       bool nowait, struct qcow2_run *run)
{
	const struct qcow2_info *qi = &layer->qi;
	struct qcow2_target *qt = layer->qt;
	u32 cb = qi->cluster_bits;
	u64 l2_span = 1ULL << (cb + qi->l2_bits);
	u64 l1_idx = guest >> (cb + qi->l2_bits);
	u32 slice_entries_bits = layer->slice_bits - qi->l2_entry_shift;
	u64 l2_idx, slice_off, pos, end;
	struct qcow2_l2_entry l2e;
	struct qcow2_slice *s;
	const void *data;
	unsigned int i, n;
	const char *err;
	s64 l2_off;

	/* Runs never cross an L2 table: the next one is a separate lookup. */
	len = min(len, l2_span - (guest & (l2_span - 1)));

	run->layer = layer;
	if (l1_idx >= layer->l1_size) {
		run->type = QCOW2_RUN_UNALLOCATED;
		run->len = len;
		return 0;
	}
	l2_off = qcow2_l1_entry_l2_offset(qi, layer->l1[l1_idx],
					  layer->dev_size, &err);
	if (l2_off < 0) {
		qcow2_run_error(layer, guest, err, run);
		run->len = len;
		return 0;
	}
	if (!l2_off) {
		run->type = QCOW2_RUN_UNALLOCATED;
		run->len = len;
		return 0;
	}

	l2_idx = (guest >> cb) & ((1ULL << qi->l2_bits) - 1);
	slice_off = qcow2_l2_slice_off(layer, l2_off, l2_idx);
	s = qcow2_slice_get(qt->cache, layer, slice_off, nowait);
	if (IS_ERR(s)) {
		if (PTR_ERR(s) == -EWOULDBLOCK)
			return -EWOULDBLOCK;
		qcow2_run_error(layer, guest, "L2 table read failed", run);
		run->len = len;
		return 0;
	}
	data = qcow2_slice_data(s);
	i = l2_idx & ((1U << slice_entries_bits) - 1);
	n = 1U << slice_entries_bits;

	qcow2_l2_entry_load(qi, data, i, &l2e);
	qcow2_decode_run(layer, &l2e, guest, len, run);
	if (run->type == QCOW2_RUN_ERROR)
		qcow2_run_error(layer, guest, run->err, run);

	/* Extend over following clusters of the same slice with the same mapping. */
	pos = guest + run->len;
	end = guest + len;
	while (pos < end && ++i < n && run->type != QCOW2_RUN_ERROR &&
	       run->type != QCOW2_RUN_COMPRESSED &&
	       !(pos & (qi->cluster_size - 1))) {
		struct qcow2_run next;

		/* A bad entry ends the run; it is reported when reached. */
		qcow2_l2_entry_load(qi, data, i, &l2e);
		qcow2_decode_run(layer, &l2e, pos, end - pos, &next);
		if (!qcow2_run_continues(run, &next))
			break;
		run->len += next.len;
		pos += next.len;
		if (next.len < qi->cluster_size)
			break;
	}
	qcow2_slice_put(qt->cache, s);

	/* Data beyond the end of the device reads as zeros (short image file). */
	if (run->type == QCOW2_RUN_DATA) {
		if (run->host >= layer->dev_size)
			run->type = QCOW2_RUN_ZERO;
		else
			run->len = min(run->len, layer->dev_size - run->host);
	}
	return 0;
}

/*
 * The owner map: for each region of the guest address space, the first
 * backing layer (index 1 and up) that may have something for it: one with an
 * L1 entry in use there, one whose virtual size ends there, or a raw layer
 * (nr_layers: none, zeros).  A read that falls through the top layer goes
 * straight to that layer, so a chain of hundreds of layers that hold nothing
 * for a region costs one lookup, not one per layer.  Backing layers do not
 * change while mapped; resume rebuilds the map.  Regions are the smallest L2
 * table span of the backing layers, made coarser (which only makes the map
 * less precise) to keep it at most QCOW2_OWNER_MAX_REGIONS entries.  Without
 * memory for it, every layer is asked as before.
 */
#define QCOW2_OWNER_MAX_REGIONS	(1U << 16)

void qcow2_owner_map_free(struct qcow2_target *qt)
{
	kvfree(qt->owner);
	qt->owner = NULL;
	qt->owner_regions = 0;
}

static void qcow2_owner_set(u16 *owner, u64 first, u64 last, unsigned int k)
{
	for (; first <= last; first++)
		owner[first] = k;
}

void qcow2_owner_map_build(struct qcow2_target *qt)
{
	u64 size = qt->layers[0].size, nr, i;
	unsigned int shift = 63, k;
	u16 *owner;

	qcow2_owner_map_free(qt);
	if (qt->nr_layers < 2 || !size)
		return;
	for (k = 1; k < qt->nr_layers; k++) {
		const struct qcow2_info *qi = &qt->layers[k].qi;

		if (qt->layers[k].fmt == QCOW2_FMT_QCOW2)
			shift = min(shift, qi->cluster_bits + qi->l2_bits);
	}
	while (shift < 63 && (size - 1) >> shift >= QCOW2_OWNER_MAX_REGIONS)
		shift++;
	nr = ((size - 1) >> shift) + 1;
	owner = kvmalloc_array(nr, sizeof(*owner), GFP_KERNEL);
	if (!owner)
		return;
	qcow2_owner_set(owner, 0, nr - 1, qt->nr_layers);

	/* From the bottom up, so that the first layer of each region wins. */
	for (k = qt->nr_layers - 1; k >= 1; k--) {
		const struct qcow2_layer *layer = &qt->layers[k];
		u32 span_shift = layer->qi.cluster_bits + layer->qi.l2_bits;

		if (layer->fmt == QCOW2_FMT_RAW) {
			qcow2_owner_set(owner, 0, nr - 1, k);
			continue;
		}
		if (layer->size < size)
			qcow2_owner_set(owner, layer->size >> shift, nr - 1, k);
		for (i = 0; i < layer->l1_size; i++) {
			u64 first = i << span_shift;

			if (first >= size || first >> span_shift != i)
				break;
			if (layer->l1[i])
				qcow2_owner_set(owner, first >> shift,
						(min(size - first, 1ULL << span_shift) - 1 +
						 first) >> shift, k);
		}
	}
	qt->owner = owner;
	qt->owner_regions = nr;
	qt->owner_shift = shift;
}

/*
 * Resolve the first run of guest range [@guest, @guest + @len) through the
 * chain, starting at layer @first.
 */
int qcow2_resolve(struct qcow2_target *qt, unsigned int first, u64 guest,
		  u64 len, bool nowait, struct qcow2_run *run)
{
	unsigned int k;
	int r;

	for (k = first; k < qt->nr_layers; k++) {
		struct qcow2_layer *layer;

		/* Skip backing layers that hold nothing for this region. */
		if (k && (guest >> qt->owner_shift) < qt->owner_regions) {
			u64 region = guest >> qt->owner_shift;

			if (qt->owner[region] > k) {
				len = min(len, ((region + 1) << qt->owner_shift) - guest);
				k = qt->owner[region];
				if (k >= qt->nr_layers)
					break;
			}
		}
		layer = &qt->layers[k];

		/* Beyond a layer's size, it and everything below read as zeros. */
		if (guest >= layer->size)
			break;
		len = min(len, layer->size - guest);

		if (layer->fmt == QCOW2_FMT_RAW) {
			if (guest >= layer->dev_size)
				break;
			run->type = QCOW2_RUN_DATA;
			run->layer = layer;
			run->host = guest;
			run->len = min(len, layer->dev_size - guest);
			return 0;
		}
		r = qcow2_layer_resolve(layer, guest, len, nowait, run);
		if (r)
			return r;
		if (run->type != QCOW2_RUN_UNALLOCATED)
			return 0;
		len = run->len;
	}
	run->type = QCOW2_RUN_ZERO;
	run->len = len;
	return 0;
}

static void qcow2_bio_zero(struct bio *bio)
{
	zero_fill_bio(bio);
	bio_endio(bio);
}

/* Complete or submit @bio (the original or a clone) for one resolved run. */
static void qcow2_dispatch(struct qcow2_target *qt, struct bio *bio,
			   const struct qcow2_run *run, bool original)
{
	int r;

	switch (run->type) {
	case QCOW2_RUN_DATA:
		if (run->layer->idx)
			qcow2_count(qt, QCOW2_STAT_BACKING_READS);
		bio_set_dev(bio, run->layer->dev->bdev);
		bio->bi_iter.bi_sector = run->host >> SECTOR_SHIFT;
		if (original)
			dm_submit_bio_remap(bio, NULL);
		else
			submit_bio_noacct(bio);
		return;
	case QCOW2_RUN_ZERO:
		qcow2_bio_zero(bio);
		return;
	case QCOW2_RUN_COMPRESSED:
		qcow2_count(qt, QCOW2_STAT_COMPRESSED_READS);
		r = qcow2_read_compressed(qt, run->layer, run->entry,
					  run->offset_in_cluster, bio);
		if (r) {
			atomic64_inc(&qt->io_errors);
			bio->bi_status = errno_to_blk_status(r);
		}
		bio_endio(bio);
		return;
	default:
		atomic64_inc(&qt->io_errors);
		bio->bi_status = BLK_STS_IOERR;
		bio_endio(bio);
		return;
	}
}

static void qcow2_process_read(struct qcow2_target *qt, struct bio *bio)
{
	u64 guest = (u64)dm_target_offset(qt->ti, bio->bi_iter.bi_sector) << SECTOR_SHIFT;
	u64 len = bio->bi_iter.bi_size;
	u64 done = 0;
	struct qcow2_run run;

	while (done < len) {
		struct bio *clone;

		/* Blocking resolution cannot return -EWOULDBLOCK. */
		qcow2_resolve(qt, 0, guest + done, len - done, false, &run);
		if (run.type == QCOW2_RUN_ERROR && qt->reftable) {
			/* Confirm against concurrent entry updates before failing. */
			mutex_lock(&qt->meta_lock);
			qcow2_resolve(qt, 0, guest + done, len - done, false, &run);
			mutex_unlock(&qt->meta_lock);
			if (run.type == QCOW2_RUN_ERROR)
				qcow2_corrupt(qt, run.err ?: "invalid mapping");
		}
		if (!done && run.len == len) {
			qcow2_dispatch(qt, bio, &run, true);
			return;
		}
		clone = bio_alloc_clone(bio->bi_bdev, bio, GFP_NOIO, &qt->bs);
		if (!clone) {
			bio->bi_status = BLK_STS_RESOURCE;
			break;
		}
		bio_trim(clone, done >> SECTOR_SHIFT, run.len >> SECTOR_SHIFT);
		bio_chain(clone, bio);
		qcow2_dispatch(qt, clone, &run, false);
		done += run.len;
	}
	/* Drop our reference: the bio completes with its last clone. */
	bio_endio(bio);
}

/*
 * Count a bio of a writable target in the current generation: a freed host
 * cluster is reused only after every bio that might have been mapped to it
 * has completed (qcow2_drain_inflight()).
 */
static void qcow2_inflight_get(struct qcow2_target *qt, struct qcow2_bio *qb)
{
	unsigned int g;

	for (;;) {
		g = READ_ONCE(qt->inflight_gen);
		atomic_inc(&qt->inflight[g]);
		/* Count before re-reading: pairs with qcow2_drain_inflight(). */
		smp_mb__after_atomic();
		if (READ_ONCE(qt->inflight_gen) == g)
			break;
		if (atomic_dec_and_test(&qt->inflight[g]))
			wake_up(&qt->inflight_wait);
	}
	qb->gen = g;
	qb->counted = true;
}

static void qcow2_inflight_put(struct qcow2_target *qt, struct qcow2_bio *qb)
{
	if (qb->counted && atomic_dec_and_test(&qt->inflight[qb->gen]))
		wake_up(&qt->inflight_wait);
	qb->counted = false;
}

void qcow2_bio_work(struct work_struct *work)
{
	struct qcow2_bio *qb = container_of(work, struct qcow2_bio, work);
	struct bio *bio = dm_bio_from_per_bio_data(qb, sizeof(*qb));
	struct qcow2_target *qt = qb->qt;
	unsigned int noio = memalloc_noio_save();

	/*
	 * A read is counted again from before it resolves its mapping until it
	 * completes.  Flushes and writes may wait for a commit, which waits for
	 * counted bios: they are not counted.  They need no count: the clusters
	 * a write touches are held by its cluster lock.
	 */
	if (bio_op(bio) == REQ_OP_READ && qt->reftable)
		qcow2_inflight_get(qt, qb);

	if (op_is_flush(bio->bi_opf) && !bio_sectors(bio)) {
		qcow2_count(qt, QCOW2_STAT_FLUSHES);
		bio->bi_status = errno_to_blk_status(qcow2_commit(qt, false));
		bio_endio(bio);
	} else if (bio_op(bio) == REQ_OP_READ) {
		qcow2_process_read(qt, bio);
	} else {
		bio->bi_status = qcow2_process_write(qt, bio);
		bio_endio(bio);
	}
	memalloc_noio_restore(noio);
}

int qcow2_end_io(struct dm_target *ti, struct bio *bio, blk_status_t *error)
{
	qcow2_inflight_put(ti->private, dm_per_bio_data(bio, sizeof(struct qcow2_bio)));
	return DM_ENDIO_DONE;
}

/*
 * Host offset of in-cluster bytes [@from, @from + @len) of an L2 entry that a
 * write may overwrite in place: allocated subclusters of a cluster of our own
 * (qcow2_own_host()).  -1 if the write needs the worker.
 */
static s64 qcow2_in_place_host(struct qcow2_layer *top,
			       const struct qcow2_l2_entry *l2e, u64 from, u64 len)
{
	const struct qcow2_info *qi = &top->qi;
	unsigned int sc, sc_last = (from + len - 1) >> qi->subcluster_bits;
	const char *err;
	s64 h;

	for (sc = from >> qi->subcluster_bits; sc <= sc_last; sc++)
		if (qcow2_l2_type(qi, l2e, sc, &err) != QCOW2_CL_NORMAL)
			return -1;
	h = qcow2_own_host(top, l2e);
	return h < 0 ? -1 : h + from;
}

/*
 * A write that needs no metadata change: into allocated subclusters of
 * clusters of our own, extended over following clusters of the same L2 slice
 * while they are contiguous on the host.  Returns true with *@host and *@run
 * (bytes) set.
 */
static bool qcow2_write_in_place(struct qcow2_target *qt, u64 guest, u64 len,
				 u64 *host, u64 *run)
{
	struct qcow2_layer *top = &qt->layers[0];
	const struct qcow2_info *qi = &top->qi;
	u32 cb = qi->cluster_bits;
	u32 slice_entries_bits = top->slice_bits - qi->l2_entry_shift;
	u64 in_cluster = guest & (qi->cluster_size - 1);
	struct qcow2_l2_entry l2e;
	struct qcow2_slice *s;
	unsigned int i, n;
	const void *data;
	u64 l2_idx;
	s64 l2, h;

	l2 = qcow2_own_l2(qt, guest);
	if (l2 <= 0)
		return false;
	l2_idx = (guest >> cb) & ((1ULL << qi->l2_bits) - 1);
	s = qcow2_slice_get(qt->cache, top,
			    qcow2_l2_slice_off(top, l2, l2_idx), true);
	if (IS_ERR(s))
		return false;
	data = qcow2_slice_data(s);
	n = 1U << slice_entries_bits;
	*run = 0;
	for (i = l2_idx & (n - 1); i < n && *run < len; i++) {
		u64 chunk = min(len - *run, qi->cluster_size - in_cluster);

		qcow2_l2_entry_load(qi, data, i, &l2e);
		h = qcow2_in_place_host(top, &l2e, in_cluster, chunk);
		if (h < 0 || (*run && h != *host + *run))
			break;
		if (!*run)
			*host = h;
		*run += chunk;
		in_cluster = 0;
	}
	qcow2_slice_put(qt->cache, s);
	return *run > 0;
}

/*
 * Hand @bio to a worker.  It is uncounted while queued: it uses no mapping
 * yet, and a commit draining counted bios must not wait for work items that
 * cannot start while every worker waits for that commit.
 */
static void qcow2_defer(struct qcow2_target *qt, struct bio *bio)
{
	struct qcow2_bio *qb = dm_per_bio_data(bio, sizeof(*qb));

	qcow2_inflight_put(qt, qb);
	qcow2_count(qt, QCOW2_STAT_DEFERRED);
	qb->qt = qt;
	INIT_WORK(&qb->work, qcow2_bio_work);
	queue_work(qt->wq, &qb->work);
}

/* dm core frees a killed bio without calling end_io: uncount it here. */
static int qcow2_kill(struct qcow2_target *qt, struct bio *bio)
{
	qcow2_inflight_put(qt, dm_per_bio_data(bio, sizeof(struct qcow2_bio)));
	return DM_MAPIO_KILL;
}

static int qcow2_map_write(struct qcow2_target *qt, struct bio *bio)
{
	u64 guest = (u64)dm_target_offset(qt->ti, bio->bi_iter.bi_sector) << SECTOR_SHIFT;
	u64 len = bio->bi_iter.bi_size;
	u64 host, run;

	if (READ_ONCE(qt->mode) != QCOW2_MODE_RW)
		return qcow2_kill(qt, bio);
	/* FUA needs the mapping durable too: the worker commits after it. */
	if (bio_op(bio) != REQ_OP_WRITE || (bio->bi_opf & REQ_FUA)) {
		qcow2_defer(qt, bio);
		return DM_MAPIO_SUBMITTED;
	}
	if (!qcow2_write_in_place(qt, guest, len, &host, &run)) {
		if (!qcow2_alloc_in_map(qt, bio))
			qcow2_defer(qt, bio);
		return DM_MAPIO_SUBMITTED;
	}
	if (run < len)
		dm_accept_partial_bio(bio, run >> SECTOR_SHIFT);
	qcow2_count(qt, QCOW2_STAT_MAP_WRITES);
	bio_set_dev(bio, qt->layers[0].dev->bdev);
	bio->bi_iter.bi_sector = host >> SECTOR_SHIFT;
	return DM_MAPIO_REMAPPED;
}

int qcow2_map(struct dm_target *ti, struct bio *bio)
{
	struct qcow2_target *qt = ti->private;
	struct qcow2_bio *qb = dm_per_bio_data(bio, sizeof(*qb));
	struct qcow2_run run;
	u64 guest, len;

	qb->counted = false;
	if (qt->reftable)
		qcow2_inflight_get(qt, qb);

	if (unlikely(op_is_flush(bio->bi_opf) && !bio_sectors(bio))) {
		if (qt->reftable) {
			if (!qcow2_flush_clean(qt)) {
				/* Commit metadata, then the device's cache. */
				qcow2_defer(qt, bio);
				return DM_MAPIO_SUBMITTED;
			}
			qcow2_count(qt, QCOW2_STAT_FLUSHES);
			qcow2_count(qt, QCOW2_STAT_CLEAN_FLUSHES);
		}
		/*
		 * Nothing of ours is volatile (read-only, or no metadata to
		 * commit): pass the flush down.
		 */
		bio_set_dev(bio, qt->layers[0].dev->bdev);
		return DM_MAPIO_REMAPPED;
	}
	if (unlikely(READ_ONCE(qt->mode) == QCOW2_MODE_FAIL))
		return qcow2_kill(qt, bio);
	if (bio_op(bio) != REQ_OP_READ) {
		if (!qt->reftable)
			return DM_MAPIO_KILL;
		return qcow2_map_write(qt, bio);
	}

	guest = (u64)dm_target_offset(ti, bio->bi_iter.bi_sector) << SECTOR_SHIFT;
	len = bio->bi_iter.bi_size;
	if (qcow2_resolve(qt, 0, guest, len, true, &run) ||
	    run.type == QCOW2_RUN_COMPRESSED ||
	    (run.type == QCOW2_RUN_ERROR && qt->reftable)) {
		qcow2_defer(qt, bio);
		return DM_MAPIO_SUBMITTED;
	}
	if (run.len < len)
		dm_accept_partial_bio(bio, run.len >> SECTOR_SHIFT);

	switch (run.type) {
	case QCOW2_RUN_DATA:
		qcow2_count(qt, QCOW2_STAT_MAP_READS);
		if (run.layer->idx)
			qcow2_count(qt, QCOW2_STAT_BACKING_READS);
		bio_set_dev(bio, run.layer->dev->bdev);
		bio->bi_iter.bi_sector = run.host >> SECTOR_SHIFT;
		return DM_MAPIO_REMAPPED;
	case QCOW2_RUN_ZERO:
		qcow2_count(qt, QCOW2_STAT_MAP_READS);
		qcow2_bio_zero(bio);
		return DM_MAPIO_SUBMITTED;
	default:
		atomic64_inc(&qt->io_errors);
		return qcow2_kill(qt, bio);
	}
}
