/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-qcow2: device-mapper target mapping a qcow2 image.
 *
 * Internal interfaces between the target glue (dm-qcow2-target.c), the
 * metadata cache (dm-qcow2-cache.c), the I/O path (dm-qcow2-map.c) and
 * compressed-cluster support (dm-qcow2-compress.c).
 */
#ifndef _DM_QCOW2_H
#define _DM_QCOW2_H

#include <linux/bio.h>
#include <linux/device-mapper.h>
#include <linux/dm-io.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "dm-qcow2-compat.h"
#include "qcow2-format.h"

#define DM_MSG_PREFIX "qcow2"

#define QCOW2_MAX_LAYERS		1024
#define QCOW2_DEFAULT_CACHE_SIZE	(8ULL << 20)
#define QCOW2_MIN_CACHE_SIZE		(16ULL << 10)

enum qcow2_layer_format {
	QCOW2_FMT_QCOW2,
	QCOW2_FMT_RAW,
};

enum qcow2_mode {
	QCOW2_MODE_RO,
	QCOW2_MODE_RW,
	QCOW2_MODE_FAIL,
};

struct qcow2_target;

/* One image of the chain: layers[0] is the mapped image, then its backing. */
struct qcow2_layer {
	struct qcow2_target *qt;
	unsigned int idx;
	enum qcow2_layer_format fmt;
	struct dm_dev *dev;
	u64 dev_size;		/* bytes readable on the device */
	u64 size;		/* virtual size in bytes (sector multiple) */

	/* qcow2 layers only */
	struct qcow2_info qi;
	u64 *l1;		/* active (or snapshot) L1 table, CPU order */
	u32 l1_size;
	u32 slice_bits;		/* log2 of the metadata cache slice size */
};

struct qcow2_cache;
struct qcow2_dpool;

struct qcow2_target {
	struct dm_target *ti;
	enum qcow2_mode mode;

	unsigned int nr_layers;
	struct qcow2_layer *layers;

	/* table arguments, kept for STATUSTYPE_TABLE */
	char *snapshot_id;
	u64 cache_size;

	struct qcow2_cache *cache;
	struct qcow2_dpool *dpool;
	struct dm_io_client *io_client;
	struct workqueue_struct *wq;
	struct bio_set bs;

	atomic64_t meta_reads;	/* synchronous metadata reads issued */
	u64 open_reads;		/* ... of which while opening the image */
	atomic64_t io_errors;	/* bios failed because of bad metadata or I/O */
};

/* Per-bio data */
struct qcow2_bio {
	struct work_struct work;
	struct qcow2_target *qt;
};

/* dm-qcow2-target.c */
int qcow2_read_bytes(struct qcow2_target *qt, struct qcow2_layer *layer,
		     u64 offset, void *buf, size_t len);

/* dm-qcow2-cache.c: a bounded, slice-granular metadata cache */
struct qcow2_slice;

struct qcow2_cache_stats {
	u64 hits;
	u64 misses;
	u64 reads;
	unsigned int used;
	unsigned int slots;
};

struct qcow2_cache *qcow2_cache_create(struct qcow2_target *qt, u64 bytes);
void qcow2_cache_destroy(struct qcow2_cache *cache);
struct qcow2_slice *qcow2_slice_get(struct qcow2_cache *cache,
				    struct qcow2_layer *layer, u64 offset,
				    bool nowait);
void qcow2_slice_put(struct qcow2_cache *cache, struct qcow2_slice *s);
const void *qcow2_slice_data(const struct qcow2_slice *s);
void qcow2_cache_get_stats(struct qcow2_cache *cache,
			   struct qcow2_cache_stats *st);

/* dm-qcow2-map.c: the I/O path */
int qcow2_map(struct dm_target *ti, struct bio *bio);
void qcow2_bio_work(struct work_struct *work);

/* dm-qcow2-compress.c: compressed clusters */
struct qcow2_dpool *qcow2_dpool_create(struct qcow2_target *qt);
void qcow2_dpool_destroy(struct qcow2_dpool *pool);
int qcow2_read_compressed(struct qcow2_target *qt, struct qcow2_layer *layer,
			  u64 entry, u64 offset_in_cluster, struct bio *bio);

/* ti->error is not const-qualified; messages from the format code are. */
static inline void qcow2_ti_error(struct dm_target *ti, const char *msg)
{
	ti->error = (char *)msg;
}

#define qcow2_dev_name(qt) dm_table_device_name((qt)->ti->table)

#endif /* _DM_QCOW2_H */
