// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2: device-mapper target mapping a qcow2 image (and its backing
 * chain) as a block device.
 *
 * This file holds the target glue: table parsing, opening the images,
 * status and the target_type.  See
 * Documentation/admin-guide/device-mapper/qcow2.rst.
 */
#include <linux/ioprio.h>
#include <linux/module.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "dm-qcow2.h"

/*
 * Synchronous read of @len bytes at byte @offset of @layer's device into @buf
 * (kmalloc'ed, vmalloc'ed or a page).  Bytes beyond the end of the device
 * read as zeros: an image file attached through a loop device loses its last
 * partial sector, and qcow2 images need not end on a cluster boundary.
 */
static int __qcow2_read(struct qcow2_target *qt, struct qcow2_layer *layer,
			u64 offset, void *buf, size_t len, bool meta)
{
	u64 end = min(offset + len, layer->dev_size);
	size_t avail = offset < end ? end - offset : 0;
	struct dm_io_region where;
	struct dm_io_request req = {
		.bi_opf = REQ_OP_READ | REQ_SYNC | (meta ? REQ_META : 0),
		.client = qt->io_client,
	};
	size_t rd;
	void *bounce = NULL;
	int r;

	if (avail < len)
		memset(buf + avail, 0, len - avail);
	if (!avail)
		return 0;

	if (meta)
		atomic64_inc(&qt->meta_reads);
	/* dm-io works in whole sectors: bounce unaligned requests. */
	rd = round_up(avail + (offset & (SECTOR_SIZE - 1)), SECTOR_SIZE);
	if ((offset & (SECTOR_SIZE - 1)) || rd != avail) {
		bounce = kvmalloc(rd, GFP_NOIO);
		if (!bounce)
			return -ENOMEM;
	}
	req.mem.type = is_vmalloc_addr(bounce ?: buf) ? DM_IO_VMA : DM_IO_KMEM;
	if (req.mem.type == DM_IO_VMA)
		req.mem.ptr.vma = bounce ?: buf;
	else
		req.mem.ptr.addr = bounce ?: buf;
	where.bdev = layer->dev->bdev;
	where.sector = offset >> SECTOR_SHIFT;
	where.count = rd >> SECTOR_SHIFT;
	r = qcow2_dm_io(&req, &where);
	if (!r && bounce)
		memcpy(buf, bounce + (offset & (SECTOR_SIZE - 1)), avail);
	kvfree(bounce);
	if (r)
		DMERR_LIMIT("%s: layer %u: read of %zu bytes at %llu failed: %d",
			    qcow2_dev_name(qt), layer->idx, len, offset, r);
	return r;
}

/* Metadata read (counted in the status line). */
int qcow2_read_bytes(struct qcow2_target *qt, struct qcow2_layer *layer,
		     u64 offset, void *buf, size_t len)
{
	return __qcow2_read(qt, layer, offset, buf, len, true);
}

/* Guest data read into a buffer: copy-on-write sources, compressed streams. */
int qcow2_read_data(struct qcow2_target *qt, struct qcow2_layer *layer,
		    u64 offset, void *buf, size_t len)
{
	return __qcow2_read(qt, layer, offset, buf, len, false);
}

/*
 * Synchronous write of @len bytes (sector multiple) at byte @offset (sector
 * aligned) of @layer's device from @buf (kmalloc'ed, vmalloc'ed or a page).
 */
int qcow2_write_bytes(struct qcow2_target *qt, struct qcow2_layer *layer,
		      u64 offset, const void *buf, size_t len)
{
	struct dm_io_region where = {
		.bdev = layer->dev->bdev,
		.sector = offset >> SECTOR_SHIFT,
		.count = len >> SECTOR_SHIFT,
	};
	struct dm_io_request req = {
		.bi_opf = REQ_OP_WRITE | REQ_SYNC | REQ_META,
		.client = qt->io_client,
	};
	int r;

	if ((offset | len) & (SECTOR_SIZE - 1))
		return -EINVAL;
	if (is_vmalloc_addr(buf)) {
		req.mem.type = DM_IO_VMA;
		req.mem.ptr.vma = (void *)buf;
	} else {
		req.mem.type = DM_IO_KMEM;
		req.mem.ptr.addr = (void *)buf;
	}
	r = qcow2_dm_io(&req, &where);
	if (r)
		DMERR_LIMIT("%s: write of %zu bytes at %llu failed: %d",
			    qcow2_dev_name(qt), len, offset, r);
	return r;
}

struct qcow2_args {
	unsigned int nr_backing;
	const char *backing_fmt[QCOW2_MAX_LAYERS];
	const char *backing_dev[QCOW2_MAX_LAYERS];
	const char *snapshot;
	u64 cache_size;
	bool lazy_refcounts;
};

static int qcow2_parse_args(struct dm_target *ti, struct dm_arg_set *as,
			    struct qcow2_args *a)
{
	static const struct dm_arg _args[] = {
		{0, 3 * QCOW2_MAX_LAYERS + 4, "Invalid number of optional arguments"},
	};
	unsigned int argc;
	const char *name;
	int r;

	if (!as->argc)
		return 0;
	r = dm_read_arg_group(_args, as, &argc, &ti->error);
	if (r)
		return r;
	if (argc != as->argc) {
		ti->error = "Optional argument count does not match the arguments given";
		return -EINVAL;
	}
	while (argc) {
		name = dm_shift_arg(as);
		argc--;
		if (!strcasecmp(name, "backing")) {
			if (argc < 2) {
				ti->error = "backing needs a format and a device";
				return -EINVAL;
			}
			if (a->nr_backing == QCOW2_MAX_LAYERS - 1) {
				ti->error = "Backing chain too long";
				return -EINVAL;
			}
			a->backing_fmt[a->nr_backing] = dm_shift_arg(as);
			a->backing_dev[a->nr_backing] = dm_shift_arg(as);
			argc -= 2;
			if (strcmp(a->backing_fmt[a->nr_backing], "qcow2") &&
			    strcmp(a->backing_fmt[a->nr_backing], "raw")) {
				ti->error = "Backing format must be qcow2 or raw";
				return -EINVAL;
			}
			a->nr_backing++;
		} else if (!strcasecmp(name, "snapshot")) {
			if (!argc) {
				ti->error = "snapshot needs an ID";
				return -EINVAL;
			}
			a->snapshot = dm_shift_arg(as);
			argc--;
		} else if (!strcasecmp(name, "lazy_refcounts")) {
			a->lazy_refcounts = true;
		} else if (!strcasecmp(name, "cache_size")) {
			if (!argc || kstrtoull(dm_shift_arg(as), 10, &a->cache_size)) {
				ti->error = "cache_size needs a number of bytes";
				return -EINVAL;
			}
			argc--;
			if (a->cache_size < QCOW2_MIN_CACHE_SIZE) {
				ti->error = "cache_size below the minimum of 16384 bytes";
				return -EINVAL;
			}
		} else {
			ti->error = "Unknown optional argument";
			return -EINVAL;
		}
	}
	return 0;
}

/* Read and validate a qcow2 layer's header; @buf receives the header cluster. */
static int qcow2_open_header(struct qcow2_target *qt, struct qcow2_layer *layer,
			     void **header, size_t *header_len)
{
	struct dm_target *ti = qt->ti;
	unsigned int lbs = bdev_logical_block_size(layer->dev->bdev);
	const char *err = NULL;
	size_t len;
	u32 cb;
	void *buf;
	int r;

	/* Learn the cluster size first: the header cluster is read whole. */
	buf = kmalloc(SECTOR_SIZE, GFP_KERNEL);
	if (!buf) {
		ti->error = "Cannot allocate memory for the header";
		return -ENOMEM;
	}
	r = qcow2_read_bytes(qt, layer, 0, buf, SECTOR_SIZE);
	if (r)
		ti->error = "Cannot read the image header";
	else if (qcow2_peek_cluster_bits(buf, SECTOR_SIZE, &cb, &err))
		r = -EINVAL;
	kfree(buf);
	if (r) {
		if (err)
			qcow2_ti_error(ti, err);
		return r;
	}
	len = min_t(u64, 1ULL << cb, layer->dev_size);
	buf = kvmalloc(1ULL << cb, GFP_KERNEL);
	if (!buf) {
		ti->error = "Cannot allocate memory for the header";
		return -ENOMEM;
	}
	r = qcow2_read_bytes(qt, layer, 0, buf, len);
	if (r) {
		ti->error = "Cannot read the image header";
		goto fail;
	}
	r = qcow2_parse_header(buf, len, layer->dev_size, &layer->qi, &err);
	if (r) {
		/* The parser leaves what it decoded: log the values with the reason. */
		DMERR("layer %u: %s (version %u, cluster_bits %u, incompatible features 0x%llx, refcount_order %u)",
		      layer->idx, err, layer->qi.version, layer->qi.cluster_bits,
		      layer->qi.incompatible_features, layer->qi.refcount_order);
		qcow2_ti_error(ti, err);
		goto fail;
	}
	if (layer->qi.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
		ti->error = "Images with an external data file are not supported";
		r = -EOPNOTSUPP;
		goto fail;
	}
	if (layer->qi.cluster_size < lbs) {
		ti->error = "Cluster size is smaller than the image device's logical block size";
		r = -EINVAL;
		goto fail;
	}
	*header = buf;
	*header_len = len;
	return 0;
fail:
	kvfree(buf);
	return r;
}

static int qcow2_load_l1(struct qcow2_target *qt, struct qcow2_layer *layer,
			 u64 offset, u32 entries)
{
	u32 i;
	int r;

	layer->l1_size = entries;
	if (!entries)
		return 0;
	layer->l1 = kvmalloc_array(entries, sizeof(u64), GFP_KERNEL);
	if (!layer->l1) {
		qt->ti->error = "Cannot allocate memory for the L1 table";
		return -ENOMEM;
	}
	r = qcow2_read_bytes(qt, layer, offset, layer->l1, (size_t)entries * sizeof(u64));
	if (r) {
		qt->ti->error = "Cannot read the L1 table";
		return r;
	}
	for (i = 0; i < entries; i++)
		layer->l1[i] = be64_to_cpu((__force __be64)layer->l1[i]);
	return 0;
}

typedef int (*qcow2_snapshot_fn)(struct qcow2_target *qt, struct qcow2_layer *layer,
				 const struct qcow2_snapshot_info *si, u64 off, void *arg);

/*
 * Call @fn for each entry of @layer's snapshot table (@off: where the entry
 * is) until it returns non-zero.  Returns that, or 0 after the last entry.
 */
static int qcow2_walk_snapshots(struct qcow2_target *qt, struct qcow2_layer *layer,
				qcow2_snapshot_fn fn, void *arg)
{
	const struct qcow2_info *qi = &layer->qi;
	struct qcow2_snapshot_info si;
	const size_t window = 128 << 10;	/* one entry is at most ~132 KiB */
	u64 off = qi->snapshots_offset;
	size_t max_entry = sizeof(struct qcow2_snapshot_header) +
			   QCOW2_MAX_SNAPSHOT_EXTRA + 2 * 65535 + 8;
	const char *err = NULL;
	void *buf;
	u32 n;
	int r = 0;

	if (!qi->nb_snapshots)
		return 0;
	buf = kvmalloc(max_entry, GFP_KERNEL);
	if (!buf) {
		qt->ti->error = "Cannot allocate memory for the snapshot table";
		return -ENOMEM;
	}
	for (n = 0; n < qi->nb_snapshots && !r; n++) {
		size_t len = window;

		if (off - qi->snapshots_offset >= QCOW2_MAX_SNAPSHOT_TABLE) {
			qt->ti->error = "Snapshot table too large";
			r = -EINVAL;
			break;
		}
		for (;;) {
			r = qcow2_read_bytes(qt, layer, off, buf, len);
			if (r) {
				qt->ti->error = "Cannot read the snapshot table";
				goto out;
			}
			r = qcow2_parse_snapshot(qi, buf, len, layer->dev_size, &si, &err);
			if (r != -ENODATA || len == max_entry)
				break;
			len = max_entry;
		}
		if (r < 0) {
			qcow2_ti_error(qt->ti, err ? err : "Invalid snapshot table entry");
			break;
		}
		r = fn(qt, layer, &si, off, arg);
		off += si.entry_len;
	}
out:
	kvfree(buf);
	return r;
}

static int qcow2_match_snapshot(struct qcow2_target *qt, struct qcow2_layer *layer,
				const struct qcow2_snapshot_info *si, u64 off, void *arg)
{
	const char *id = arg;
	int r;

	if (si->id_len != strlen(id) || memcmp(si->id, id, si->id_len))
		return 0;
	if (si->disk_size)
		layer->size = si->disk_size & ~(u64)(SECTOR_SIZE - 1);
	r = qcow2_load_l1(qt, layer, si->l1_table_offset, si->l1_size);
	return r ? r : 1;
}

/* Find snapshot @id in the snapshot table and switch @layer to its L1 table. */
static int qcow2_open_snapshot(struct qcow2_target *qt, struct qcow2_layer *layer,
			       const char *id)
{
	int r = qcow2_walk_snapshots(qt, layer, qcow2_match_snapshot, (void *)id);

	if (r)
		return r < 0 ? r : 0;
	qt->ti->error = "Snapshot not found";
	return -ENOENT;
}

/* Check that the table's chain matches what the image header says. */
static int qcow2_check_backing(struct qcow2_target *qt, struct qcow2_layer *layer,
			       const void *header, size_t header_len)
{
	const struct qcow2_info *qi = &layer->qi;
	bool has_backing = qi->backing_file_offset != 0;
	struct qcow2_layer *below;

	if (layer->idx + 1 == qt->nr_layers) {
		if (has_backing) {
			qt->ti->error = "Image has a backing file but the table gives no backing layer";
			return -EINVAL;
		}
		return 0;
	}
	below = layer + 1;
	if (!has_backing) {
		qt->ti->error = "Table gives a backing layer for an image without a backing file";
		return -EINVAL;
	}
	if (qi->has_backing_fmt &&
	    strcmp(qi->backing_fmt, below->fmt == QCOW2_FMT_RAW ? "raw" : "qcow2")) {
		qt->ti->error = "Backing format in the table does not match the image's backing format";
		return -EINVAL;
	}
	return 0;
}

static int qcow2_open_layer(struct qcow2_target *qt, struct qcow2_layer *layer,
			    const char *snapshot)
{
	void *header = NULL;
	size_t header_len;
	int r;

	layer->dev_size = bdev_nr_bytes(layer->dev->bdev);
	if (layer->fmt == QCOW2_FMT_RAW) {
		layer->size = layer->dev_size;
		return 0;
	}
	r = qcow2_open_header(qt, layer, &header, &header_len);
	if (r)
		return r;
	r = qcow2_check_backing(qt, layer, header, header_len);
	if (r)
		goto out;
	layer->size = layer->qi.size & ~(u64)(SECTOR_SIZE - 1);
	layer->slice_bits = min_t(u32, layer->qi.cluster_bits, PAGE_SHIFT);
	if (snapshot)
		r = qcow2_open_snapshot(qt, layer, snapshot);
	else
		r = qcow2_load_l1(qt, layer, layer->qi.l1_table_offset,
				  layer->qi.l1_size);
out:
	kvfree(header);
	return r;
}

/* Record clusters [@off, @off + @len) in the metadata index as @kind. */
static int qcow2_index_range(struct qcow2_target *qt, u64 off, u64 len,
			     unsigned long kind)
{
	u32 cb = qt->layers[0].qi.cluster_bits;
	u64 c;
	int r;

	for (c = off >> cb; len && c <= (off + len - 1) >> cb; c++) {
		r = qcow2_meta_add(qt, c, kind, GFP_KERNEL);
		if (r)
			return r;
	}
	return 0;
}

/* Index a snapshot's table entry, its L1 table and the L2 tables it uses. */
static int qcow2_index_snapshot(struct qcow2_target *qt, struct qcow2_layer *layer,
				const struct qcow2_snapshot_info *si, u64 off, void *arg)
{
	const struct qcow2_info *qi = &layer->qi;
	size_t bytes = (size_t)si->l1_size * sizeof(u64);
	const char *err;
	__be64 *l1;
	s64 l2;
	u32 i;
	int r;

	r = qcow2_index_range(qt, off, si->entry_len, QCOW2_META_SNAPSHOT);
	if (!r)
		r = qcow2_index_range(qt, si->l1_table_offset, bytes, QCOW2_META_SNAPSHOT);
	if (r || !bytes)
		return r;
	l1 = kvmalloc(bytes, GFP_KERNEL);
	if (!l1)
		return -ENOMEM;
	r = qcow2_read_bytes(qt, layer, si->l1_table_offset, l1, bytes);
	if (r)
		qt->ti->error = "Cannot read a snapshot's L1 table";
	for (i = 0; !r && i < si->l1_size; i++) {
		l2 = qcow2_l1_entry_l2_offset(qi, be64_to_cpu(l1[i]), layer->dev_size, &err);
		if (l2 > 0)
			r = qcow2_meta_add(qt, l2 >> qi->cluster_bits, QCOW2_META_SNAPSHOT,
					   GFP_KERNEL);
	}
	kvfree(l1);
	return r;
}

/*
 * Build the index of the top layer's metadata clusters (dm-qcow2-write.c)
 * from the L1 and refcount tables in memory, the snapshot table and the
 * snapshots' L1 tables: one read per snapshot, none per L2 table.
 */
static int qcow2_build_meta_index(struct qcow2_target *qt)
{
	struct qcow2_layer *top = &qt->layers[0];
	const struct qcow2_info *qi = &top->qi;
	const char *err;
	u64 i, rb;
	s64 l2;
	int r;

	qt->ti->error = "Cannot allocate memory for the metadata index";
	for (i = 0; i < top->l1_size; i++) {
		l2 = qcow2_l1_entry_l2_offset(qi, top->l1[i], top->dev_size, &err);
		if (l2 > 0) {
			r = qcow2_meta_add(qt, l2 >> qi->cluster_bits, QCOW2_META_L2,
					   GFP_KERNEL);
			if (r)
				return r;
		}
		if (!(i & 4095))
			cond_resched();
	}
	for (i = 0; i < qt->reftable_entries; i++) {
		rb = qt->reftable[i] & QCOW2_REFT_OFFSET_MASK;
		if (rb) {
			r = qcow2_meta_add(qt, rb >> qi->cluster_bits, QCOW2_META_REFBLOCK,
					   GFP_KERNEL);
			if (r)
				return r;
		}
	}
	return qcow2_walk_snapshots(qt, top, qcow2_index_snapshot, NULL);
}

/* Prepare the top layer for writing: refcount table, dirty tracking, header. */
static int qcow2_open_writable(struct qcow2_target *qt)
{
	struct dm_target *ti = qt->ti;
	struct qcow2_layer *top = &qt->layers[0];
	struct qcow2_info *qi = &top->qi;
	u64 i, bytes;
	int r;

	if (qi->incompatible_features & QCOW2_INCOMPAT_CORRUPT) {
		ti->error = "Image is marked corrupt: repair it with qemu-img check -r all, or map it read-only";
		return -EUCLEAN;
	}
	if (qi->incompatible_features & QCOW2_INCOMPAT_DIRTY) {
		ti->error = "Image is dirty (lazy refcounts not written back): repair it with qemu-img check -r all, or map it read-only";
		return -EUCLEAN;
	}
	if (bdev_read_only(top->dev->bdev)) {
		ti->error = "Image device is read-only";
		return -EROFS;
	}
	if (qt->lazy_refcounts && qi->version < 3) {
		ti->error = "lazy_refcounts needs a version 3 image";
		return -EINVAL;
	}

	bytes = (u64)qi->refcount_table_clusters << qi->cluster_bits;
	qt->reftable_entries = bytes / sizeof(u64);
	qt->reftable = kvmalloc(bytes, GFP_KERNEL);
	qt->reftable_dirty = bitmap_zalloc(bytes >> SECTOR_SHIFT, GFP_KERNEL);
	qt->l1_dirty = bitmap_zalloc(DIV_ROUND_UP((u64)top->l1_size * sizeof(u64),
						  SECTOR_SIZE) ?: 1, GFP_KERNEL);
	if (!qt->reftable || !qt->reftable_dirty || !qt->l1_dirty) {
		ti->error = "Cannot allocate memory for the refcount table";
		return -ENOMEM;
	}
	r = qcow2_read_bytes(qt, top, qi->refcount_table_offset, qt->reftable, bytes);
	if (r) {
		ti->error = "Cannot read the refcount table";
		return r;
	}
	for (i = 0; i < qt->reftable_entries; i++)
		qt->reftable[i] = be64_to_cpu((__force __be64)qt->reftable[i]);
	qt->rb_bits = qi->cluster_bits + 3 - qi->refcount_order;
	r = qcow2_build_meta_index(qt);
	if (r)
		return r;
	qt->discard_passdown = bdev_max_discard_sectors(top->dev->bdev) > 0;

	/* We keep none of the autoclear features consistent: clear them first. */
	if (qi->version >= 3 && qi->autoclear_features) {
		__be64 zero = 0;

		r = qcow2_write_header(qt, offsetof(struct qcow2_header, autoclear_features),
				       &zero, sizeof(zero));
		if (r) {
			ti->error = "Cannot clear the autoclear feature bits";
			return r;
		}
		qi->autoclear_features = 0;
	}
	qt->mode = QCOW2_MODE_RW;
	return 0;
}

static void qcow2_dtr(struct dm_target *ti)
{
	struct qcow2_target *qt = ti->private;
	unsigned int k;

	if (qt->wq)
		destroy_workqueue(qt->wq);
	if (qt->io_wq)
		destroy_workqueue(qt->io_wq);
	/* Normally postsuspend committed already; this is cheap then. */
	if (qt->reftable && qt->cache && qt->mode == QCOW2_MODE_RW)
		qcow2_commit_clean(qt);
	while (!list_empty(&qt->deferred)) {
		struct list_head *d = qt->deferred.next;

		list_del(d);
		kfree(d);
	}
	kvfree(qt->reftable);
	bitmap_free(qt->reftable_dirty);
	bitmap_free(qt->l1_dirty);
	xa_destroy(&qt->meta_index);
	qcow2_dpool_destroy(qt->dpool);
	qcow2_cache_destroy(qt->cache);
	bioset_exit(&qt->write_bs);
	bioset_exit(&qt->bs);
	if (qt->io_client)
		dm_io_client_destroy(qt->io_client);
	for (k = 0; k < qt->nr_layers; k++) {
		kvfree(qt->layers[k].l1);
		if (qt->layers[k].dev)
			dm_put_device(ti, qt->layers[k].dev);
	}
	kvfree(qt->layers);
	kfree(qt->snapshot_id);
	qcow2_owner_map_free(qt);
	free_percpu(qt->stats);
	kfree(qt);
}

/*
 * Construct a qcow2 mapping:
 *   <image_dev> [<#opt_args> [backing qcow2|raw <dev>]... [snapshot <id>]
 *                             [cache_size <bytes>]]
 */
/* Lockdep classes of the bit locks (see dm-qcow2-write.c): one per kind. */
static struct lock_class_key qcow2_cluster_key;
static struct lock_class_key qcow2_l2_busy_key;

static int qcow2_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct qcow2_target *qt;
	struct qcow2_args *a;
	const char *image;
	unsigned int k;
	int r;

	if (argc < 1) {
		ti->error = "Invalid argument count: need at least <image_dev>";
		return -EINVAL;
	}
	a = kzalloc(sizeof(*a), GFP_KERNEL);
	qt = kzalloc(sizeof(*qt), GFP_KERNEL);
	if (qt)
		qt->stats = alloc_percpu(struct qcow2_stats);
	if (!a || !qt || !qt->stats) {
		kfree(a);
		if (qt)
			free_percpu(qt->stats);
		kfree(qt);
		ti->error = "Cannot allocate memory";
		return -ENOMEM;
	}
	qt->ti = ti;
	ti->private = qt;
	mutex_init(&qt->meta_lock);
	init_rwsem(&qt->update_sem);
	mutex_init(&qt->commit_mutex);
	init_waitqueue_head(&qt->fast_wait);
	init_waitqueue_head(&qt->copies_wait);
	lockdep_init_map(&qt->cluster_dep_map, "dm-qcow2 cluster lock", &qcow2_cluster_key, 0);
	lockdep_init_map(&qt->l2_busy_dep_map, "dm-qcow2 l2_busy", &qcow2_l2_busy_key, 0);
	INIT_LIST_HEAD(&qt->deferred);
	INIT_WORK(&qt->zero_work, qcow2_zero_ahead_work);
	init_waitqueue_head(&qt->zero_wait);
	xa_init(&qt->meta_index);
	init_waitqueue_head(&qt->inflight_wait);
	atomic_set(&qt->inflight[0], 0);
	atomic_set(&qt->inflight[1], 0);
	atomic64_set(&qt->meta_reads, 0);
	atomic64_set(&qt->io_errors, 0);

	image = dm_shift_arg(&as);
	r = qcow2_parse_args(ti, &as, a);
	if (r)
		goto bad;
	qt->cache_size = a->cache_size;
	qt->lazy_refcounts = a->lazy_refcounts;
	if (a->snapshot) {
		qt->snapshot_id = kstrdup(a->snapshot, GFP_KERNEL);
		if (!qt->snapshot_id) {
			ti->error = "Cannot allocate memory";
			r = -ENOMEM;
			goto bad;
		}
	}

	qt->layers = kvcalloc(a->nr_backing + 1, sizeof(*qt->layers), GFP_KERNEL);
	if (!qt->layers) {
		ti->error = "Cannot allocate memory";
		r = -ENOMEM;
		goto bad;
	}
	qt->nr_layers = a->nr_backing + 1;
	for (k = 0; k < qt->nr_layers; k++) {
		struct qcow2_layer *layer = &qt->layers[k];
		const char *path = k ? a->backing_dev[k - 1] : image;

		layer->qt = qt;
		layer->idx = k;
		layer->fmt = k && !strcmp(a->backing_fmt[k - 1], "raw") ?
			     QCOW2_FMT_RAW : QCOW2_FMT_QCOW2;
		if (layer->fmt == QCOW2_FMT_RAW && k + 1 != qt->nr_layers) {
			ti->error = "A raw backing layer must be the last one";
			r = -EINVAL;
			goto bad;
		}
		/* Backing layers are only ever read. */
		r = dm_get_device(ti, path, k ? QCOW2_MODE_READ :
				  dm_table_get_mode(ti->table), &layer->dev);
		if (r) {
			ti->error = k ? "Backing device lookup failed" :
					"Image device lookup failed";
			goto bad;
		}
	}

	qt->mode = QCOW2_MODE_RO;
	if ((dm_table_get_mode(ti->table) & QCOW2_MODE_WRITE) && a->snapshot) {
		ti->error = "A snapshot is mapped read-only: load the table read-only";
		r = -EROFS;
		goto bad;
	}

	qt->io_client = dm_io_client_create();
	if (IS_ERR(qt->io_client)) {
		r = PTR_ERR(qt->io_client);
		qt->io_client = NULL;
		ti->error = "Cannot create dm-io client";
		goto bad;
	}
	for (k = 0; k < qt->nr_layers; k++) {
		r = qcow2_open_layer(qt, &qt->layers[k], k ? NULL : a->snapshot);
		if (r)
			goto bad;
	}
	qcow2_owner_map_build(qt);
	if (dm_table_get_mode(ti->table) & QCOW2_MODE_WRITE) {
		r = qcow2_open_writable(qt);
		if (r)
			goto bad;
	}
	qt->open_reads = atomic64_read(&qt->meta_reads);

	if (ti->len > qt->layers[0].size >> SECTOR_SHIFT) {
		ti->error = "Target length exceeds the virtual disk size";
		r = -EINVAL;
		goto bad;
	}

	/*
	 * Two sets: a write piece is held while its data is written through a
	 * second clone (or a zero-filled copy of its pages), which must not
	 * wait for the pool the piece came from.
	 */
	r = bioset_init(&qt->bs, BIO_POOL_SIZE, 0, 0);
	if (!r)
		r = bioset_init(&qt->write_bs, BIO_POOL_SIZE, 0, BIOSET_NEED_BVECS);
	if (r) {
		ti->error = "Cannot allocate bio set";
		goto bad;
	}
	qt->cache = qcow2_cache_create(qt, qt->cache_size ?: qcow2_cache_default_size(qt));
	qt->dpool = qcow2_dpool_create(qt);
	qt->wq = alloc_workqueue("dm-" DM_MSG_PREFIX, WQ_MEM_RECLAIM | WQ_UNBOUND, 0);
	/*
	 * Its own queue: workers of qt->wq wait for the cluster locks that
	 * these items release, so they must never queue behind such workers.
	 */
	qt->io_wq = alloc_workqueue("dm-" DM_MSG_PREFIX "-io", WQ_MEM_RECLAIM | WQ_UNBOUND, 0);
	if (!qt->cache || !qt->dpool || !qt->wq || !qt->io_wq) {
		ti->error = "Cannot allocate memory";
		r = -ENOMEM;
		goto bad;
	}

	ti->per_io_data_size = sizeof(struct qcow2_bio);
	ti->num_flush_bios = 1;
	if (qt->reftable) {
		ti->flush_supported = true;
		ti->num_discard_bios = 1;
		ti->discards_supported = true;
		ti->num_write_zeroes_bios = 1;
	}
	kfree(a);
	return 0;
bad:
	kfree(a);
	qcow2_dtr(ti);
	return r;
}

static void qcow2_status(struct dm_target *ti, status_type_t type,
			 unsigned int status_flags, char *result,
			 unsigned int maxlen)
{
	struct qcow2_target *qt = ti->private;
	static const char * const modes[] = {
		[QCOW2_MODE_RO] = "ro",
		[QCOW2_MODE_RW] = "rw",
		[QCOW2_MODE_FAIL] = "fail",
	};
	struct qcow2_cache_stats st;
	unsigned int sz = 0, k, nr_opt;

	switch (type) {
	case STATUSTYPE_INFO:
		qcow2_cache_get_stats(qt->cache, &st);
		DMEMIT("%s %llu %llu %u %u/%u %llu %llu %llu %llu %llu %u",
		       modes[qt->mode], qt->layers[0].size,
		       qt->layers[0].qi.cluster_size, qt->nr_layers,
		       st.used, st.slots, st.hits, st.misses,
		       (u64)atomic64_read(&qt->meta_reads), qt->open_reads,
		       (u64)atomic64_read(&qt->io_errors), st.dirty);
		if (test_bit(QCOW2_FLAG_CORRUPT, &qt->flags))
			DMEMIT(" corrupt");
		if (test_bit(QCOW2_FLAG_NOSPACE, &qt->flags))
			DMEMIT(" no_space");
		break;
	case STATUSTYPE_TABLE:
		nr_opt = 3 * (qt->nr_layers - 1) + (qt->snapshot_id ? 2 : 0) +
			 (qt->cache_size ? 2 : 0) +
			 qt->lazy_refcounts;
		DMEMIT("%s", qt->layers[0].dev->name);
		if (nr_opt)
			DMEMIT(" %u", nr_opt);
		for (k = 1; k < qt->nr_layers; k++)
			DMEMIT(" backing %s %s",
			       qt->layers[k].fmt == QCOW2_FMT_RAW ? "raw" : "qcow2",
			       qt->layers[k].dev->name);
		if (qt->snapshot_id)
			DMEMIT(" snapshot %s", qt->snapshot_id);
		if (qt->cache_size)
			DMEMIT(" cache_size %llu", qt->cache_size);
		if (qt->lazy_refcounts)
			DMEMIT(" lazy_refcounts");
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",image_device=%s,layers=%u,mode=%s;",
		       qt->layers[0].dev->name, qt->nr_layers, modes[qt->mode]);
		break;
	}
}

static const char * const qcow2_stat_names[] = {
	[QCOW2_STAT_MAP_READS] = "map_reads",
	[QCOW2_STAT_MAP_WRITES] = "map_writes",
	[QCOW2_STAT_DEFERRED] = "deferred",
	[QCOW2_STAT_BACKING_READS] = "backing_reads",
	[QCOW2_STAT_COMPRESSED_READS] = "compressed_reads",
	[QCOW2_STAT_MAP_ALLOCS] = "map_allocs",
	[QCOW2_STAT_WORKER_ALLOCS] = "worker_allocs",
	[QCOW2_STAT_COPIES] = "copies",
	[QCOW2_STAT_ZERO_FILLS] = "zero_fills",
	[QCOW2_STAT_ZEROED_ALLOCS] = "zeroed_allocs",
	[QCOW2_STAT_ZERO_AHEAD] = "zero_ahead",
	[QCOW2_STAT_ZERO_AHEAD_CLUSTERS] = "zero_ahead_clusters",
	[QCOW2_STAT_ZERO_AHEAD_WAITS] = "zero_ahead_waits",
	[QCOW2_STAT_ZEROED_TABLES] = "zeroed_tables",
	[QCOW2_STAT_ZEROED_CLUSTERS] = "zeroed_clusters",
	[QCOW2_STAT_FREED_CLUSTERS] = "freed_clusters",
	[QCOW2_STAT_FLUSHES] = "flushes",
	[QCOW2_STAT_CLEAN_FLUSHES] = "clean_flushes",
	[QCOW2_STAT_COMMITS] = "commits",
	[QCOW2_STAT_COMMIT_USECS] = "commit_usecs",
	[QCOW2_STAT_COMMIT_BLOCKED_USECS] = "commit_blocked_usecs",
	[QCOW2_STAT_COMMIT_LOCKED] = "commit_locked",
	[QCOW2_STAT_COMMIT_FUA] = "commit_fua",
	[QCOW2_STAT_COMMIT_COPIES] = "commit_copies",
	[QCOW2_STAT_COMMIT_REDIRTIED] = "commit_redirtied",
	[QCOW2_STAT_CACHE_SHRUNK] = "cache_shrunk",
};

/* "stats": one "<name> <value>" line per counter, summed over CPUs. */
static void qcow2_emit_stats(struct qcow2_target *qt, char *result,
			     unsigned int maxlen)
{
	unsigned int sz = 0, i;
	int cpu;

	BUILD_BUG_ON(ARRAY_SIZE(qcow2_stat_names) != QCOW2_STAT_NR);
	for (i = 0; i < QCOW2_STAT_NR; i++) {
		u64 sum = 0;

		for_each_possible_cpu(cpu)
			sum += per_cpu_ptr(qt->stats, cpu)->v[i];
		DMEMIT("%s %llu\n", qcow2_stat_names[i], sum);
	}
}

/*
 * "commit": write all metadata back now (and, with lazy refcounts, clear
 * the dirty bit), so that the image on the device is consistent, for a
 * backup or a snapshot of the device below, while the target stays mapped.
 */
static int qcow2_message_commit(struct qcow2_target *qt)
{
	unsigned int noio;
	int r;

	if (READ_ONCE(qt->mode) == QCOW2_MODE_FAIL)
		return -EIO;
	/* Read-only, or suspended: nothing is left to write. */
	if (READ_ONCE(qt->mode) != QCOW2_MODE_RW || READ_ONCE(qt->suspended))
		return 0;
	/* Its allocations must not recurse into writes through this target. */
	noio = memalloc_noio_save();
	r = qcow2_commit_clean(qt);
	memalloc_noio_restore(noio);
	return r;
}

static int qcow2_message(struct dm_target *ti, unsigned int argc, char **argv,
			 char *result, unsigned int maxlen)
{
	struct qcow2_target *qt = ti->private;

	if (argc == 1 && !strcasecmp(argv[0], "stats")) {
		qcow2_emit_stats(qt, result, maxlen);
		return 1;	/* result holds output */
	}
	if (argc == 1 && !strcasecmp(argv[0], "commit"))
		return qcow2_message_commit(qt);
	DMWARN("%s: unrecognised message '%s'%s", qcow2_dev_name(qt),
	       argc ? argv[0] : "", argc > 1 ? " (too many arguments)" : "");
	return -EINVAL;
}

static int qcow2_iterate_devices(struct dm_target *ti,
				 iterate_devices_callout_fn fn, void *data)
{
	struct qcow2_target *qt = ti->private;
	unsigned int k;
	int r = 0;

	for (k = 0; k < qt->nr_layers && !r; k++)
		r = fn(ti, qt->layers[k].dev, 0,
		       qt->layers[k].dev_size >> SECTOR_SHIFT, data);
	return r;
}

static void qcow2_postsuspend(struct dm_target *ti)
{
	struct qcow2_target *qt = ti->private;

	/* Nothing may write the free space once userspace may use it. */
	if (qt->wq)
		flush_work(&qt->zero_work);
	/* Everything in flight has completed: write all metadata back. */
	if (qt->reftable && qt->mode == QCOW2_MODE_RW)
		qcow2_commit_clean(qt);
	qt->suspended = true;
}

/*
 * Re-read every layer after a suspend: while suspended, userspace may have
 * changed the image (qemu-img snapshot, resize, commit...).
 */
static int qcow2_reload(struct qcow2_target *qt)
{
	struct dm_target *ti = qt->ti;
	unsigned int k;
	int r;

	qcow2_cache_invalidate_all(qt->cache);
	qcow2_dpool_forget(qt->dpool);
	qcow2_owner_map_free(qt);
	for (k = 0; k < qt->nr_layers; k++) {
		struct qcow2_layer *layer = &qt->layers[k];

		kvfree(layer->l1);
		layer->l1 = NULL;
		memset(&layer->qi, 0, sizeof(layer->qi));
		r = qcow2_open_layer(qt, layer, k ? NULL : qt->snapshot_id);
		if (r)
			return r;
	}
	if (ti->len > qt->layers[0].size >> SECTOR_SHIFT) {
		ti->error = "The image is now smaller than the target";
		return -EINVAL;
	}
	qcow2_owner_map_build(qt);
	if (qt->reftable) {
		kvfree(qt->reftable);
		bitmap_free(qt->reftable_dirty);
		bitmap_free(qt->l1_dirty);
		qt->reftable = NULL;
		qt->reftable_dirty = NULL;
		qt->l1_dirty = NULL;
		xa_destroy(&qt->meta_index);
		qt->free_hint = 0;
		/* Free space may hold anything now. */
		qt->zero_lo = 0;
		qt->zero_hi = 0;
		clear_bit(QCOW2_FLAG_NOSPACE, &qt->flags);
		r = qcow2_open_writable(qt);
		if (r)
			return r;
	}
	return 0;
}

static int qcow2_preresume(struct dm_target *ti)
{
	struct qcow2_target *qt = ti->private;
	int r;

	if (!qt->suspended || qt->mode == QCOW2_MODE_FAIL)
		return 0;
	qt->suspended = false;
	r = qcow2_reload(qt);
	if (r) {
		DMERR("%s: cannot re-read the image on resume: %s",
		      qcow2_dev_name(qt), ti->error);
		qcow2_set_mode(qt, QCOW2_MODE_FAIL, "image changed while suspended");
	}
	return 0;
}

static void qcow2_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct qcow2_target *qt = ti->private;

	if (!qt->reftable)
		return;
	limits->discard_granularity = qt->layers[0].qi.cluster_size;
	qcow2_set_max_discard(limits, UINT_MAX >> SECTOR_SHIFT);
}

static struct target_type qcow2_target = {
	.name = "qcow2",
	.version = {1, 15, 0},
	.module = THIS_MODULE,
	.ctr = qcow2_ctr,
	.dtr = qcow2_dtr,
	.map = qcow2_map,
	.end_io = qcow2_end_io,
	.postsuspend = qcow2_postsuspend,
	.preresume = qcow2_preresume,
	.io_hints = qcow2_io_hints,
	.status = qcow2_status,
	.message = qcow2_message,
	.iterate_devices = qcow2_iterate_devices,
};

static int __init dm_qcow2_init(void)
{
	return dm_register_target(&qcow2_target);
}

static void __exit dm_qcow2_exit(void)
{
	dm_unregister_target(&qcow2_target);
}

module_init(dm_qcow2_init);
module_exit(dm_qcow2_exit);

MODULE_DESCRIPTION(DM_NAME " target mapping qcow2 images");
MODULE_AUTHOR("dm-qcow2 developers");
MODULE_LICENSE("GPL");
