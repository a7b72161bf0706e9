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
#include <linux/percpu.h>
#include <linux/rwsem.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "dm-qcow2-compat.h"
#include "qcow2-format.h"

#define DM_MSG_PREFIX "qcow2"

#define QCOW2_MAX_LAYERS		1024
/* The default cache bound: what the metadata needs, within these limits */
#define QCOW2_DEFAULT_CACHE_MIN		(8ULL << 20)
#define QCOW2_DEFAULT_CACHE_MAX		(32ULL << 20)
#define QCOW2_MIN_CACHE_SIZE		(16ULL << 10)
#define QCOW2_CLUSTER_LOCK_BITS		10

/* qcow2_target.flags */
enum {
	QCOW2_FLAG_CORRUPT,	/* corrupt bit set: no more writes */
	QCOW2_FLAG_NOSPACE,	/* an allocation found the device full */
	QCOW2_FLAG_ZEROING,	/* zero_work is queued or running */
	QCOW2_FLAG_NO_ZERO_AHEAD, /* the device cannot zero cheaply */
};

/* What a host cluster of the top layer holds (qcow2_target.meta_index) */
#define QCOW2_META_REFBLOCK	BIT(0)	/* a refcount block */
#define QCOW2_META_SNAPSHOT	BIT(1)	/* a snapshot's entry, L1 or L2 table */
#define QCOW2_META_L2		BIT(2)	/* counts active L1 entries using it */

enum qcow2_layer_format {
	QCOW2_FMT_QCOW2,
	QCOW2_FMT_RAW,
};

enum qcow2_mode {
	QCOW2_MODE_RO,
	QCOW2_MODE_RW,
	QCOW2_MODE_FAIL,
};

/*
 * Counters of the "stats" message, per CPU (summed when read).  The names
 * printed are in dm-qcow2-target.c; Documentation/.../qcow2.rst says what
 * each counts.
 */
enum qcow2_stat {
	QCOW2_STAT_MAP_READS,
	QCOW2_STAT_MAP_WRITES,
	QCOW2_STAT_DEFERRED,
	QCOW2_STAT_BACKING_READS,
	QCOW2_STAT_COMPRESSED_READS,
	QCOW2_STAT_MAP_ALLOCS,
	QCOW2_STAT_WORKER_ALLOCS,
	QCOW2_STAT_COPIES,
	QCOW2_STAT_ZERO_FILLS,
	QCOW2_STAT_ZEROED_ALLOCS,
	QCOW2_STAT_ZERO_AHEAD,
	QCOW2_STAT_ZERO_AHEAD_CLUSTERS,
	QCOW2_STAT_ZERO_AHEAD_WAITS,
	QCOW2_STAT_ZEROED_TABLES,
	QCOW2_STAT_ZEROED_CLUSTERS,
	QCOW2_STAT_FREED_CLUSTERS,
	QCOW2_STAT_FLUSHES,
	QCOW2_STAT_CLEAN_FLUSHES,
	QCOW2_STAT_COMMITS,
	QCOW2_STAT_COMMIT_USECS,
	QCOW2_STAT_COMMIT_BLOCKED_USECS,
	QCOW2_STAT_COMMIT_LOCKED,
	QCOW2_STAT_COMMIT_FUA,
	QCOW2_STAT_COMMIT_COPIES,
	QCOW2_STAT_COMMIT_REDIRTIED,
	QCOW2_STAT_CACHE_SHRUNK,
	QCOW2_STAT_NR
};

struct qcow2_stats {
	u64 v[QCOW2_STAT_NR];
};

#define qcow2_count_add(qt, stat, n)	this_cpu_add((qt)->stats->v[stat], n)
#define qcow2_count(qt, stat)		qcow2_count_add(qt, stat, 1)

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

/*
 * Offset on @layer's device of the cache slice of the L2 table at @l2 that
 * holds entry @l2_idx.
 */
static inline u64 qcow2_l2_slice_off(const struct qcow2_layer *layer, u64 l2, u64 l2_idx)
{
	u32 slice_entries_bits = layer->slice_bits - layer->qi.l2_entry_shift;

	return l2 + ((l2_idx >> slice_entries_bits) << layer->slice_bits);
}

struct qcow2_cache;
struct qcow2_dpool;

struct qcow2_target {
	struct dm_target *ti;
	enum qcow2_mode mode;

	unsigned int nr_layers;
	struct qcow2_layer *layers;
	/* first backing layer with something in each region (see map.c) */
	u16 *owner;
	u64 owner_regions;
	unsigned int owner_shift;

	/* table arguments, kept for STATUSTYPE_TABLE */
	char *snapshot_id;
	u64 cache_size;			/* 0: none, the bound is sized to the image */

	struct qcow2_cache *cache;
	struct qcow2_dpool *dpool;
	struct dm_io_client *io_client;
	struct workqueue_struct *wq;	/* deferred bios, zeroing ahead */
	struct workqueue_struct *io_wq;	/* writes of copies made in map() */
	struct bio_set bs;		/* read clones, per-cluster pieces of writes */
	struct bio_set write_bs;	/* writes of a piece's data to the device */

	unsigned long flags;

	/* Write path (dm-qcow2-write.c); only the top layer is written. */
	struct mutex meta_lock;		/* tables, refcounts, allocator */
	struct rw_semaphore update_sem;	/* updates (read) vs commit (write) */
	struct mutex commit_mutex;
	unsigned int commit_seq;	/* odd while a commit runs */
	u64 commits_started;
	u64 full_commits_started;	/* ... that wrote refcounts too */
	int commit_error;
	bool lazy_refcounts;		/* refcounts written on suspend/pressure only */
	bool dirty_bit;			/* we set the image's dirty bit */
	bool suspended;			/* postsuspend ran: resume re-reads the image */
	/* hashed guest-cluster bit locks; released in any context */
	unsigned long cluster_locks[BITS_TO_LONGS(1 << QCOW2_CLUSTER_LOCK_BITS)];
	struct lockdep_map cluster_dep_map;	/* one a worker waited for */
	/* allocations in map() changing metadata; commits wait for them */
	atomic_t fast_updates;
	/* ... whose data is written and entries stored later (qcow2_alloc_end_io) */
	atomic_t fast_stores;
	bool fast_blocked;		/* a commit waits: map() allocates nothing */
	wait_queue_head_t fast_wait;
	bool copies_busy;		/* a commit writes copies (qcow2_commit_copies) */
	wait_queue_head_t copies_wait;
	unsigned long l2_busy;		/* hashed L1 entries: new L2 table being written */
	struct lockdep_map l2_busy_dep_map;
	struct xarray meta_index;	/* host cluster -> QCOW2_META_* */
	u64 *reftable;			/* refcount table, CPU order */
	u64 reftable_entries;
	unsigned long *reftable_dirty;	/* one bit per sector */
	unsigned long *l1_dirty;	/* one bit per sector of the L1 table */
	u32 rb_bits;			/* log2 refcount entries per block */
	u64 free_hint;			/* first host cluster that may be free */
	/* host clusters [zero_lo, zero_hi) are free and read zeros */
	u64 zero_lo, zero_hi;
	struct work_struct zero_work;	/* qcow2_zero_ahead_work() */
	/* [zero_pend_lo, zero_pend_hi): being zeroed while zero_busy */
	u64 zero_pend_lo, zero_pend_hi;
	bool zero_busy;
	wait_queue_head_t zero_wait;
	struct list_head deferred;	/* frees waiting for the next commit */
	unsigned int nr_deferred;
	bool discard_passdown;
	/* bios in flight per generation: freed clusters wait for the old one */
	atomic_t inflight[2];
	unsigned int inflight_gen;
	wait_queue_head_t inflight_wait;

	struct qcow2_stats __percpu *stats;
	atomic64_t meta_reads;	/* synchronous metadata reads issued */
	u64 open_reads;		/* ... of which while opening the image */
	atomic64_t io_errors;	/* bios failed because of bad metadata or I/O */
};

/* Per-bio data */
struct qcow2_bio {
	struct work_struct work;
	struct qcow2_target *qt;
	unsigned int gen;	/* inflight generation, when counted */
	bool counted;
	/*
	 * Clusters allocated in map(): their L2 entries, stored once written.
	 * Guest clusters alloc_gc.. (their locks held), entries alloc_idx..
	 * of one slice, host clusters contiguous from alloc_entry's.  Or
	 * (alloc_new false) subclusters of a host cluster of our own that
	 * were unallocated: the entry gains them, nothing was allocated.
	 */
	u64 alloc_gc;
	unsigned int alloc_n;
	unsigned int alloc_idx;
	bool alloc_new;
	struct qcow2_slice *alloc_l2;	/* the L2 slice (dirty, stores to come) */
	struct qcow2_l2_entry alloc_entry;
	struct bio *cow_src;		/* reads the fill, or NULL */
	struct bio *cow_write;		/* writes it, once read */
};

/* dm-qcow2-target.c */
int qcow2_read_bytes(struct qcow2_target *qt, struct qcow2_layer *layer,
		     u64 offset, void *buf, size_t len);
int qcow2_read_data(struct qcow2_target *qt, struct qcow2_layer *layer,
		    u64 offset, void *buf, size_t len);
int qcow2_write_bytes(struct qcow2_target *qt, struct qcow2_layer *layer,
		      u64 offset, const void *buf, size_t len);

/* dm-qcow2-cache.c: a bounded, slice-granular metadata cache */
struct qcow2_slice;

struct qcow2_cache_stats {
	u64 hits;
	u64 misses;
	u64 reads;
	unsigned int used;
	unsigned int slots;
	unsigned int dirty;
};

u64 qcow2_cache_default_size(const struct qcow2_target *qt);
struct qcow2_cache *qcow2_cache_create(struct qcow2_target *qt, u64 bytes);
void qcow2_cache_destroy(struct qcow2_cache *cache);
struct qcow2_slice *qcow2_slice_get(struct qcow2_cache *cache,
				    struct qcow2_layer *layer, u64 offset,
				    bool nowait);
void qcow2_slice_put(struct qcow2_cache *cache, struct qcow2_slice *s);
void *qcow2_slice_data(const struct qcow2_slice *s);
struct qcow2_slice *qcow2_slice_get_new(struct qcow2_cache *cache,
					struct qcow2_layer *layer, u64 offset);
void qcow2_cache_add_zeroed(struct qcow2_cache *cache, struct qcow2_layer *layer,
			    u64 offset, u64 len);
void qcow2_slice_mark_dirty(struct qcow2_cache *cache, struct qcow2_slice *s,
			    unsigned int group);
void qcow2_slice_mark_store(struct qcow2_cache *cache, struct qcow2_slice *s,
			    unsigned int group);
void qcow2_slice_store_l2(struct qcow2_cache *cache, struct qcow2_slice *s,
			  const struct qcow2_info *qi, unsigned int idx,
			  struct qcow2_l2_entry e, unsigned int n);
bool qcow2_cache_reserve(struct qcow2_cache *cache, unsigned int n);
void qcow2_cache_unreserve(struct qcow2_cache *cache, unsigned int n);
bool qcow2_cache_has_dirty(struct qcow2_cache *cache);
void qcow2_cache_invalidate(struct qcow2_cache *cache, struct qcow2_layer *layer,
			    u64 offset, u64 len);
int qcow2_cache_writeback(struct qcow2_cache *cache, unsigned int group);

/* Slices taken for writeback (qcow2_cache_wb_take()) */
struct qcow2_wb_set {
	struct list_head slices;
	unsigned int nr;
};

int qcow2_cache_wb_take(struct qcow2_cache *cache, unsigned int group,
			bool copy, struct qcow2_wb_set *set);
int qcow2_cache_wb_write(struct qcow2_cache *cache, struct qcow2_wb_set *set,
			 blk_opf_t flags);
void qcow2_cache_wb_cancel(struct qcow2_cache *cache, struct qcow2_wb_set *set);
void qcow2_cache_invalidate_all(struct qcow2_cache *cache);
void qcow2_cache_get_stats(struct qcow2_cache *cache,
			   struct qcow2_cache_stats *st);

/* dm-qcow2-map.c: the I/O path */
enum qcow2_run_type {
	QCOW2_RUN_UNALLOCATED,	/* internal: look in the next layer */
	QCOW2_RUN_ZERO,
	QCOW2_RUN_DATA,
	QCOW2_RUN_COMPRESSED,
	QCOW2_RUN_ERROR,
};

struct qcow2_run {
	enum qcow2_run_type type;
	u64 len;			/* bytes */
	struct qcow2_layer *layer;	/* DATA, COMPRESSED */
	u64 host;			/* DATA: host byte offset */
	u64 entry;			/* COMPRESSED: L2 entry */
	u64 offset_in_cluster;		/* COMPRESSED */
	const char *err;		/* ERROR: why */
};

void qcow2_owner_map_build(struct qcow2_target *qt);
void qcow2_owner_map_free(struct qcow2_target *qt);
int qcow2_resolve(struct qcow2_target *qt, unsigned int first, u64 guest,
		  u64 len, bool nowait, struct qcow2_run *run);
int qcow2_map(struct dm_target *ti, struct bio *bio);
void qcow2_bio_work(struct work_struct *work);

int qcow2_end_io(struct dm_target *ti, struct bio *bio, blk_status_t *error);

/* dm-qcow2-write.c: allocation, refcounts, COW, discard, commit */
void qcow2_set_mode(struct qcow2_target *qt, enum qcow2_mode mode,
		    const char *why);
void qcow2_corrupt(struct qcow2_target *qt, const char *why);
unsigned long qcow2_meta_kinds(struct qcow2_target *qt, u64 c);
int qcow2_meta_add(struct qcow2_target *qt, u64 c, unsigned long kind, gfp_t gfp);
bool qcow2_is_metadata(struct qcow2_target *qt, u64 c);
s64 qcow2_own_host(struct qcow2_layer *top, const struct qcow2_l2_entry *l2e);
bool qcow2_l2_exclusive(struct qcow2_target *qt, u64 c);
s64 qcow2_own_l2(struct qcow2_target *qt, u64 guest);
int qcow2_write_header(struct qcow2_target *qt, unsigned int offset,
		       const void *val, unsigned int len);
int qcow2_commit(struct qcow2_target *qt, bool full);
bool qcow2_flush_clean(struct qcow2_target *qt);
int qcow2_commit_clean(struct qcow2_target *qt);
blk_status_t qcow2_process_write(struct qcow2_target *qt, struct bio *bio);
bool qcow2_alloc_in_map(struct qcow2_target *qt, struct bio *bio);
void qcow2_zero_ahead_work(struct work_struct *work);

/* dm-qcow2-compress.c: compressed clusters */
struct qcow2_dpool *qcow2_dpool_create(struct qcow2_target *qt);
void qcow2_dpool_destroy(struct qcow2_dpool *pool);
void qcow2_dpool_forget(struct qcow2_dpool *pool);
int qcow2_read_compressed(struct qcow2_target *qt, struct qcow2_layer *layer,
			  u64 entry, u64 offset_in_cluster, struct bio *bio);
int qcow2_decompress_to_buf(struct qcow2_target *qt, struct qcow2_layer *layer,
			    u64 entry, u64 offset_in_cluster, void *buf,
			    size_t len);

/* ti->error is not const-qualified; messages from the format code are. */
static inline void qcow2_ti_error(struct dm_target *ti, const char *msg)
{
	ti->error = (char *)msg;
}

#define qcow2_dev_name(qt) dm_table_device_name((qt)->ti->table)

#endif /* _DM_QCOW2_H */
