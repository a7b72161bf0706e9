// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2 metadata cache.
 *
 * L2 tables are cached in slices of min(cluster size, PAGE_SIZE) bytes, so a
 * lookup costs one page of I/O whatever the cluster size, and the cache holds
 * the working set at slice granularity rather than whole (up to 2 MiB) tables.
 * The cache is shared by all layers of a target and bounded by the table's
 * cache_size: pages are allocated on demand up to that many slots, then the
 * least recently used unpinned slice is recycled.  A slice is pinned while a
 * lookup reads it.
 *
 * The lookup path takes one spinlock; a miss is filled synchronously by the
 * caller (a worker), others asking for the same slice wait for it.
 *
 * The bound is an upper limit, not a reservation: under memory pressure a
 * shrinker gives back clean unpinned slices, least recently used first (they
 * are read again when next needed).  Dirty slices stay until written back.
 */
#include <linux/blkdev.h>
#include <linux/completion.h>
#include <linux/hash.h>
#include <linux/hashtable.h>
#include <linux/list_sort.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "dm-qcow2.h"

enum {
	QCOW2_SLICE_LOADING,	/* read in progress */
	QCOW2_SLICE_ERROR,	/* read failed: unhashed, freed on last put */
	QCOW2_SLICE_DIRTY,	/* modified: on cache->dirty, not evictable */
};

struct qcow2_slice {
	struct hlist_node hash;
	struct list_head lru;	/* on ->lru if clean and unpinned, ->dirty if dirty */
	struct qcow2_layer *layer;
	u64 offset;		/* byte offset of the slice on the layer's device */
	unsigned int pins;
	unsigned int group;	/* writeback group while dirty */
	unsigned int gen;	/* bumped each time it is marked dirty */
	unsigned int wb_gen;	/* gen when taken for writeback */
	atomic_t stores;	/* entry stores to come (qcow2_slice_mark_store()) */
	bool wb_stores;		/* some were to come when taken for writeback */
	unsigned long flags;
	blk_status_t wb_status;	/* result of the last writeback */
	struct page *page;
	struct page *copy;	/* what writeback writes, if not @page */
};

struct qcow2_cache {
	struct qcow2_target *qt;
	spinlock_t lock;
	spinlock_t store_lock;	/* entry stores of completions against copies */
	wait_queue_head_t wait;
	struct list_head lru;	/* clean unpinned slices, most recently used first */
	struct list_head dirty;	/* dirty slices, pinned or not */
	struct hlist_head *buckets;
	unsigned int hash_bits;
	unsigned int slots;	/* bound */
	unsigned int used;	/* slices allocated */
	unsigned int nr_dirty;
	unsigned int reserved;	/* dirty slices promised to metadata updates */
	u64 hits;
	u64 misses;
	u64 reads;
	struct shrinker *shrinker;	/* NULL if it could not be registered */
};

static struct hlist_head *qcow2_bucket(struct qcow2_cache *c,
				       struct qcow2_layer *layer, u64 offset)
{
	u64 key = offset ^ ((u64)layer->idx << 48);

	return &c->buckets[hash_64(key, c->hash_bits)];
}

static struct qcow2_slice *qcow2_lookup(struct qcow2_cache *c,
					struct qcow2_layer *layer, u64 offset)
{
	struct qcow2_slice *s;

	hlist_for_each_entry(s, qcow2_bucket(c, layer, offset), hash)
		if (s->layer == layer && s->offset == offset)
			return s;
	return NULL;
}

/*
 * The bound when the table gives none: a page for each slice of every L2
 * table of every qcow2 layer, and for each slice of the refcount blocks that
 * count the top layer's data clusters, so that random I/O over the whole
 * disk finds its metadata cached; but at least QCOW2_DEFAULT_CACHE_MIN (room
 * for the rest of the metadata) and at most QCOW2_DEFAULT_CACHE_MAX.  Pages
 * are allocated as slices are read, so a bound never reached costs nothing.
 */
u64 qcow2_cache_default_size(const struct qcow2_target *qt)
{
	const u64 max_pages = QCOW2_DEFAULT_CACHE_MAX >> PAGE_SHIFT;
	u64 pages = 0;
	unsigned int k;

	for (k = 0; k < qt->nr_layers && pages < max_pages; k++) {
		const struct qcow2_layer *layer = &qt->layers[k];
		const struct qcow2_info *qi = &layer->qi;
		u64 clusters, bytes;

		if (layer->fmt != QCOW2_FMT_QCOW2)
			continue;
		clusters = (layer->size + qi->cluster_size - 1) >> qi->cluster_bits;
		bytes = clusters << qi->l2_entry_shift;
		pages += (bytes + (1ULL << layer->slice_bits) - 1) >> layer->slice_bits;
		if (k)
			continue;
		/* refcount bits, in slices of 8 << slice_bits bits */
		bytes = clusters << qi->refcount_order;
		pages += (bytes + (8ULL << layer->slice_bits) - 1) >> (layer->slice_bits + 3);
	}
	return clamp_t(u64, pages, QCOW2_DEFAULT_CACHE_MIN >> PAGE_SHIFT, max_pages) << PAGE_SHIFT;
}

static void qcow2_slice_free(struct qcow2_slice *s)
{
	__free_page(s->page);
	kfree(s);
}

/* Slices the shrinker may free: an estimate (pinned ones are counted too). */
static unsigned long qcow2_cache_count(struct shrinker *sh,
				       struct shrink_control *sc)
{
	struct qcow2_cache *c = qcow2_shrinker_priv(sh);
	unsigned int used = READ_ONCE(c->used), dirty = READ_ONCE(c->nr_dirty);

	return used > dirty ? used - dirty : SHRINK_EMPTY;
}

/* Free up to @nr clean unpinned slices, oldest first; returns how many. */
static unsigned long qcow2_cache_free_clean(struct qcow2_cache *c,
					    unsigned long nr)
{
	struct qcow2_slice *s, *tmp;
	unsigned long freed = 0;
	LIST_HEAD(victims);

	spin_lock(&c->lock);
	while (freed < nr && !list_empty(&c->lru)) {
		s = list_last_entry(&c->lru, struct qcow2_slice, lru);
		list_move(&s->lru, &victims);
		hash_del(&s->hash);
		c->used--;
		freed++;
	}
	spin_unlock(&c->lock);
	list_for_each_entry_safe(s, tmp, &victims, lru)
		qcow2_slice_free(s);
	return freed;
}

static unsigned long qcow2_cache_scan(struct shrinker *sh,
				      struct shrink_control *sc)
{
	struct qcow2_cache *c = qcow2_shrinker_priv(sh);
	unsigned long freed = qcow2_cache_free_clean(c, sc->nr_to_scan);

	if (!freed)
		return SHRINK_STOP;
	qcow2_count_add(c->qt, QCOW2_STAT_CACHE_SHRUNK, freed);
	/* Room under the bound for anyone waiting for a slice. */
	if (wq_has_sleeper(&c->wait))
		wake_up_all(&c->wait);
	return freed;
}

struct qcow2_cache *qcow2_cache_create(struct qcow2_target *qt, u64 bytes)
{
	struct qcow2_cache *c;
	u64 slots = bytes >> PAGE_SHIFT;
	unsigned int i;

	c = kzalloc(sizeof(*c), GFP_KERNEL);
	if (!c)
		return NULL;
	c->qt = qt;
	c->slots = min_t(u64, slots, INT_MAX);
	c->hash_bits = clamp_t(unsigned int, ilog2(c->slots), 4, 20);
	c->buckets = kvcalloc(1U << c->hash_bits, sizeof(*c->buckets), GFP_KERNEL);
	if (!c->buckets) {
		kfree(c);
		return NULL;
	}
	for (i = 0; i < (1U << c->hash_bits); i++)
		INIT_HLIST_HEAD(&c->buckets[i]);
	spin_lock_init(&c->lock);
	spin_lock_init(&c->store_lock);
	init_waitqueue_head(&c->wait);
	INIT_LIST_HEAD(&c->lru);
	INIT_LIST_HEAD(&c->dirty);
	c->shrinker = qcow2_shrinker_create(qcow2_cache_count, qcow2_cache_scan, c,
					    qcow2_dev_name(qt));
	return c;
}

void qcow2_cache_destroy(struct qcow2_cache *c)
{
	struct qcow2_slice *s, *tmp;

	if (!c)
		return;
	qcow2_shrinker_destroy(c->shrinker);
	/* No I/O is in flight at destruction: every slice is unpinned. */
	list_for_each_entry_safe(s, tmp, &c->lru, lru)
		qcow2_slice_free(s);
	list_for_each_entry_safe(s, tmp, &c->dirty, lru)
		qcow2_slice_free(s);
	kvfree(c->buckets);
	kfree(c);
}

void *qcow2_slice_data(const struct qcow2_slice *s)
{
	return page_address(s->page);
}

void qcow2_cache_get_stats(struct qcow2_cache *c, struct qcow2_cache_stats *st)
{
	spin_lock(&c->lock);
	st->hits = c->hits;
	st->misses = c->misses;
	st->reads = c->reads;
	st->used = c->used;
	st->slots = c->slots;
	st->dirty = c->nr_dirty;
	spin_unlock(&c->lock);
}

/*
 * Find a slice to fill: a new one while under the bound, else the least
 * recently used unpinned one.  Called with the lock held; may drop it to
 * allocate.  Returns NULL when every slice is pinned (caller waits).
 */
static struct qcow2_slice *qcow2_slice_take(struct qcow2_cache *c)
	__must_hold(&c->lock)
{
	struct qcow2_slice *s;

	/*
	 * The bound applies to clean slices: when every slice is dirty or
	 * pinned, go over it rather than wait (the commit that would clean
	 * them may be the caller); the excess is freed when slices get clean.
	 */
	if (c->used < c->slots || list_empty(&c->lru)) {
		c->used++;
		spin_unlock(&c->lock);
		s = kzalloc(sizeof(*s), GFP_NOIO);
		if (s) {
			s->page = alloc_page(GFP_NOIO);
			if (!s->page) {
				kfree(s);
				s = NULL;
			}
		}
		spin_lock(&c->lock);
		if (s) {
			INIT_LIST_HEAD(&s->lru);
			return s;
		}
		c->used--;
		/* Out of memory: fall back to recycling. */
	}
	if (list_empty(&c->lru))
		return NULL;
	s = list_last_entry(&c->lru, struct qcow2_slice, lru);
	list_del_init(&s->lru);
	hash_del(&s->hash);
	return s;
}

static int qcow2_slice_read(struct qcow2_cache *c, struct qcow2_slice *s)
{
	struct qcow2_layer *layer = s->layer;

	return qcow2_read_bytes(c->qt, layer, s->offset, page_address(s->page),
				1U << layer->slice_bits);
}

enum qcow2_get_mode {
	QCOW2_GET_READ,		/* read it on a miss */
	QCOW2_GET_NOWAIT,	/* -EWOULDBLOCK instead of reading or waiting */
	QCOW2_GET_NEW,		/* zero-filled, never read: new metadata */
};

static struct qcow2_slice *__qcow2_slice_get(struct qcow2_cache *c,
					     struct qcow2_layer *layer,
					     u64 offset,
					     enum qcow2_get_mode mode)
{
	struct qcow2_slice *s;
	int r;

	spin_lock(&c->lock);
again:
	s = qcow2_lookup(c, layer, offset);
	if (s && test_bit(QCOW2_SLICE_LOADING, &s->flags)) {
		if (mode == QCOW2_GET_NOWAIT)
			goto would_block;
		s->pins++;
		spin_unlock(&c->lock);
		wait_event(c->wait, !test_bit(QCOW2_SLICE_LOADING, &s->flags));
		if (test_bit(QCOW2_SLICE_ERROR, &s->flags)) {
			qcow2_slice_put(c, s);
			return ERR_PTR(-EIO);
		}
		goto found;
	}
	if (s) {
		if (!s->pins++ && !test_bit(QCOW2_SLICE_DIRTY, &s->flags))
			list_del_init(&s->lru);
		c->hits++;
		spin_unlock(&c->lock);
		goto found;
	}
	if (mode == QCOW2_GET_NOWAIT)
		goto would_block;

	s = qcow2_slice_take(c);
	if (!s) {
		spin_unlock(&c->lock);
		wait_event(c->wait, !list_empty(&c->lru) || c->used < c->slots);
		spin_lock(&c->lock);
		goto again;
	}
	/* The lock may have been dropped to allocate: look again. */
	if (qcow2_lookup(c, layer, offset)) {
		list_add_tail(&s->lru, &c->lru);
		goto again;
	}
	s->layer = layer;
	s->offset = offset;
	s->pins = 1;
	s->flags = mode == QCOW2_GET_READ ? BIT(QCOW2_SLICE_LOADING) : 0;
	hlist_add_head(&s->hash, qcow2_bucket(c, layer, offset));
	if (mode == QCOW2_GET_NEW) {
		spin_unlock(&c->lock);
		goto found;
	}
	c->misses++;
	c->reads++;
	spin_unlock(&c->lock);

	r = qcow2_slice_read(c, s);

	spin_lock(&c->lock);
	if (r) {
		set_bit(QCOW2_SLICE_ERROR, &s->flags);
		hash_del(&s->hash);
	}
	clear_bit(QCOW2_SLICE_LOADING, &s->flags);
	spin_unlock(&c->lock);
	wake_up_all(&c->wait);
	if (r) {
		qcow2_slice_put(c, s);
		return ERR_PTR(r);
	}
	return s;

found:
	/* New metadata: whatever was cached or on disk there is garbage. */
	if (mode == QCOW2_GET_NEW)
		memset(page_address(s->page), 0, PAGE_SIZE);
	return s;

would_block:
	spin_unlock(&c->lock);
	return ERR_PTR(-EWOULDBLOCK);
}

/*
 * Return the slice at byte @offset (slice aligned) of @layer's device, pinned.
 * With @nowait, return ERR_PTR(-EWOULDBLOCK) instead of reading or waiting.
 */
struct qcow2_slice *qcow2_slice_get(struct qcow2_cache *c,
				    struct qcow2_layer *layer, u64 offset,
				    bool nowait)
{
	return __qcow2_slice_get(c, layer, offset,
				 nowait ? QCOW2_GET_NOWAIT : QCOW2_GET_READ);
}

/*
 * Return the slice at @offset pinned and zero-filled, without reading it:
 * for metadata clusters just allocated (their on-disk content is garbage).
 */
struct qcow2_slice *qcow2_slice_get_new(struct qcow2_cache *c,
					struct qcow2_layer *layer, u64 offset)
{
	return __qcow2_slice_get(c, layer, offset, QCOW2_GET_NEW);
}

/*
 * [@offset, @offset + @len) of @layer's device was just zeroed on disk (a new
 * L2 table): enter its slices as clean zero-filled slices, so that the first
 * lookups in the new table do not read back the zeros.
 */
void qcow2_cache_add_zeroed(struct qcow2_cache *c, struct qcow2_layer *layer,
			    u64 offset, u64 len)
{
	u64 step = 1ULL << layer->slice_bits;
	struct qcow2_slice *s;
	u64 off;

	for (off = offset; off < offset + len; off += step) {
		s = __qcow2_slice_get(c, layer, off, QCOW2_GET_NEW);
		qcow2_slice_put(c, s);
	}
}

void qcow2_slice_put(struct qcow2_cache *c, struct qcow2_slice *s)
{
	bool wake = false;
	bool free = false;

	spin_lock(&c->lock);
	if (!--s->pins) {
		if (test_bit(QCOW2_SLICE_ERROR, &s->flags)) {
			c->used--;
			free = true;
		} else if (!test_bit(QCOW2_SLICE_DIRTY, &s->flags)) {
			if (c->used > c->slots) {
				/* Over the bound: give the page back. */
				hash_del(&s->hash);
				c->used--;
				free = true;
			} else {
				list_add(&s->lru, &c->lru);
			}
		}
		wake = wq_has_sleeper(&c->wait);
	}
	spin_unlock(&c->lock);
	if (free)
		qcow2_slice_free(s);
	if (wake)
		wake_up_all(&c->wait);
}

/*
 * Mark a pinned slice dirty for writeback group @group (lower groups are
 * written first at commit).  Dirty slices are not evicted.  A slice changed
 * while a copy of it is written stays dirty (see qcow2_cache_wb_take()):
 * call this for every change, in the update that makes it.
 */
static void __qcow2_slice_mark_dirty(struct qcow2_cache *c, struct qcow2_slice *s,
				     unsigned int group, bool store)
{
	spin_lock(&c->lock);
	s->gen++;
	if (store)
		atomic_inc(&s->stores);
	if (!test_and_set_bit(QCOW2_SLICE_DIRTY, &s->flags)) {
		s->group = group;
		list_add_tail(&s->lru, &c->dirty);
		c->nr_dirty++;
	} else {
		s->group = min(s->group, group);
	}
	spin_unlock(&c->lock);
}

void qcow2_slice_mark_dirty(struct qcow2_cache *c, struct qcow2_slice *s,
			    unsigned int group)
{
	__qcow2_slice_mark_dirty(c, s, group, false);
}

/*
 * Mark L2 slice @s dirty for an allocation whose entries are stored later,
 * when its data is written, by qcow2_slice_store_l2(), in any context and
 * without excluding commits.  Until then a copy taken for writeback may
 * lack them: the slice stays dirty after such a copy is written.
 */
void qcow2_slice_mark_store(struct qcow2_cache *c, struct qcow2_slice *s,
			    unsigned int group)
{
	__qcow2_slice_mark_dirty(c, s, group, true);
}

/*
 * The stores that qcow2_slice_mark_store() announced: @n entries from @idx,
 * @e for the first, the host offset one cluster further for each next one
 * (@n 0: the write failed, nothing to store).  Any context.  A copy of the
 * slice never sees an entry half stored (extended L2 entries are two
 * words).
 */
void qcow2_slice_store_l2(struct qcow2_cache *c, struct qcow2_slice *s,
			  const struct qcow2_info *qi, unsigned int idx,
			  struct qcow2_l2_entry e, unsigned int n)
{
	unsigned long flags;
	unsigned int i;

	spin_lock_irqsave(&c->store_lock, flags);
	for (i = 0; i < n; i++) {
		qcow2_l2_entry_store(qi, page_address(s->page), idx + i, &e);
		e.entry += qi->cluster_size;
	}
	atomic_dec(&s->stores);
	spin_unlock_irqrestore(&c->store_lock, flags);
}

/*
 * Reserve room for @n more dirty slices before a metadata update, so that the
 * cache never fills with dirty slices in the middle of one.  Returns false
 * (reserving nothing) when a commit is needed first.
 */
bool qcow2_cache_reserve(struct qcow2_cache *c, unsigned int n)
{
	bool ok;

	spin_lock(&c->lock);
	ok = c->nr_dirty + c->reserved + n <= c->slots / 2;
	if (ok)
		c->reserved += n;
	spin_unlock(&c->lock);
	return ok;
}

void qcow2_cache_unreserve(struct qcow2_cache *c, unsigned int n)
{
	spin_lock(&c->lock);
	c->reserved -= n;
	spin_unlock(&c->lock);
}

bool qcow2_cache_has_dirty(struct qcow2_cache *c)
{
	return READ_ONCE(c->nr_dirty) != 0;
}

/*
 * Drop every cached slice of @layer in [@offset, @offset + @len): the
 * metadata there was freed.  Dirty copies are discarded.
 */
void qcow2_cache_invalidate(struct qcow2_cache *c, struct qcow2_layer *layer,
			    u64 offset, u64 len)
{
	u64 step = 1ULL << layer->slice_bits;
	struct qcow2_slice *s;
	u64 off;

	spin_lock(&c->lock);
	for (off = offset; off < offset + len; off += step) {
		s = qcow2_lookup(c, layer, off);
		if (!s || s->pins)
			continue;
		/* An entry store to come: the table is in use, never free. */
		if (WARN_ON_ONCE(atomic_read(&s->stores)))
			continue;
		hash_del(&s->hash);
		list_del_init(&s->lru);
		if (test_and_clear_bit(QCOW2_SLICE_DIRTY, &s->flags))
			c->nr_dirty--;
		c->used--;
		qcow2_slice_free(s);
	}
	spin_unlock(&c->lock);
}

/* Drop every clean unpinned slice (resume: the image may have changed). */
void qcow2_cache_invalidate_all(struct qcow2_cache *c)
{
	qcow2_cache_free_clean(c, ULONG_MAX);
}

struct qcow2_wb {
	atomic_t pending;
	struct completion done;
};

struct qcow2_wb_bio {
	struct qcow2_slice *s;
	struct qcow2_wb *wb;
	struct bio_vec bvec;
	struct bio bio;		/* last: ends in a flexible array */
};

static void qcow2_wb_endio(struct bio *bio)
{
	struct qcow2_wb_bio *wbb = container_of(bio, struct qcow2_wb_bio, bio);

	wbb->s->wb_status = bio->bi_status;
	if (atomic_dec_and_test(&wbb->wb->pending))
		complete(&wbb->wb->done);
}

/* Device offset order, so that the plug merges adjacent slices. */
static int qcow2_wb_cmp(void *priv, const struct list_head *a,
			const struct list_head *b)
{
	const struct qcow2_slice *x = list_entry(a, struct qcow2_slice, lru);
	const struct qcow2_slice *y = list_entry(b, struct qcow2_slice, lru);

	if (x->layer != y->layer)
		return x->layer < y->layer ? -1 : 1;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/*
 * Give taken slices back: dirty unless @written without error and not marked
 * dirty since they were taken.  Returns the number written or the first
 * error.
 */
static int qcow2_wb_give_back(struct qcow2_cache *c, struct qcow2_wb_set *set,
			      bool written)
{
	struct qcow2_slice *s, *tmp;
	int err = 0, n = 0;

	list_for_each_entry_safe(s, tmp, &set->slices, lru) {
		int r = written ? blk_status_to_errno(s->wb_status) : -EAGAIN;
		bool changed;

		if (written && r)
			DMERR_LIMIT("%s: metadata write at %llu failed: %d",
				    qcow2_dev_name(c->qt), s->offset, r);
		if (s->copy) {
			__free_page(s->copy);
			s->copy = NULL;
		}
		spin_lock(&c->lock);
		changed = s->gen != s->wb_gen || s->wb_stores;
		if (!r && changed)
			qcow2_count(c->qt, QCOW2_STAT_COMMIT_REDIRTIED);
		if (r || changed) {
			list_move_tail(&s->lru, &c->dirty);
		} else {
			clear_bit(QCOW2_SLICE_DIRTY, &s->flags);
			c->nr_dirty--;
			list_del_init(&s->lru);
		}
		spin_unlock(&c->lock);
		if (r)
			err = err ?: r;
		else
			n++;
		qcow2_slice_put(c, s);
	}
	INIT_LIST_HEAD(&set->slices);
	set->nr = 0;
	return err ?: n;
}

/* Give back taken slices unwritten: they stay dirty. */
void qcow2_cache_wb_cancel(struct qcow2_cache *c, struct qcow2_wb_set *set)
{
	qcow2_wb_give_back(c, set, false);
}

/*
 * Take every dirty slice of group @group for writeback into @set, pinned and
 * off the dirty list.  With @copy, each gets a copy of its page as it is
 * now, and the caller may let updates change the slices while the copies are
 * written: a slice marked dirty after this, or with entry stores still to
 * come (qcow2_slice_mark_store()), stays dirty when its copy is written.
 * Without @copy none may have stores to come.  The caller excludes updates
 * during this call.  Returns -ENOMEM, taking nothing, if a copy cannot be
 * made.
 */
int qcow2_cache_wb_take(struct qcow2_cache *c, unsigned int group, bool copy,
			struct qcow2_wb_set *set)
{
	struct qcow2_slice *s, *tmp;

	INIT_LIST_HEAD(&set->slices);
	set->nr = 0;
	spin_lock(&c->lock);
	list_for_each_entry_safe(s, tmp, &c->dirty, lru) {
		if (s->group != group)
			continue;
		s->pins++;
		s->wb_gen = s->gen;
		s->wb_stores = false;
		s->wb_status = BLK_STS_OK;
		/* Written from the page itself: nothing may store meanwhile. */
		WARN_ON_ONCE(!copy && atomic_read(&s->stores));
		list_move_tail(&s->lru, &set->slices);
		set->nr++;
	}
	spin_unlock(&c->lock);
	if (!copy)
		return 0;
	list_for_each_entry(s, &set->slices, lru) {
		unsigned long flags;

		s->copy = alloc_page(GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN);
		if (!s->copy) {
			qcow2_cache_wb_cancel(c, set);
			return -ENOMEM;
		}
		spin_lock_irqsave(&c->store_lock, flags);
		s->wb_stores = atomic_read(&s->stores);
		memcpy(page_address(s->copy), page_address(s->page),
		       1U << s->layer->slice_bits);
		spin_unlock_irqrestore(&c->store_lock, flags);
	}
	return 0;
}

/*
 * Write the slices of @set (their copies, if taken with them), submitted
 * together, in offset order, and waited for at once, so that a commit costs
 * one device round trip per group rather than one per slice, and the slices
 * of one L2 or refcount table that are dirty together go as one request.
 * @flags (REQ_PREFLUSH, REQ_FUA) go on every write (requests with them are
 * not merged).  Then give them back.  Returns the number of slices written
 * or the first error; failed slices stay dirty.
 */
int qcow2_cache_wb_write(struct qcow2_cache *c, struct qcow2_wb_set *set,
			 blk_opf_t flags)
{
	struct qcow2_slice *s;
	struct qcow2_wb_bio *wbbs;
	struct qcow2_wb wb;
	struct blk_plug plug;
	unsigned int i = 0;

	if (!set->nr)
		return 0;
	list_sort(NULL, &set->slices, qcow2_wb_cmp);

	wbbs = kvcalloc(set->nr, sizeof(*wbbs), GFP_NOIO);
	/* Without them, one synchronous write each, bracketed by flushes. */
	if (!wbbs && (flags & REQ_PREFLUSH)) {
		int r;

		s = list_first_entry(&set->slices, struct qcow2_slice, lru);
		r = blkdev_issue_flush(s->layer->dev->bdev);
		if (r) {
			qcow2_wb_give_back(c, set, false);
			return r;
		}
	}
	atomic_set(&wb.pending, 1);
	init_completion(&wb.done);
	blk_start_plug(&plug);
	list_for_each_entry(s, &set->slices, lru) {
		unsigned int len = 1U << s->layer->slice_bits;
		struct page *page = s->copy ?: s->page;
		struct qcow2_wb_bio *wbb;
		int r;

		if (!wbbs) {
			r = qcow2_write_bytes(c->qt, s->layer, s->offset,
					      page_address(page), len);
			if (!r && (flags & REQ_FUA))
				r = blkdev_issue_flush(s->layer->dev->bdev);
			s->wb_status = errno_to_blk_status(r);
			continue;
		}
		wbb = &wbbs[i++];
		wbb->s = s;
		wbb->wb = &wb;
		bio_init(&wbb->bio, s->layer->dev->bdev, &wbb->bvec, 1,
			 REQ_OP_WRITE | REQ_SYNC | REQ_META | flags);
		wbb->bio.bi_iter.bi_sector = s->offset >> SECTOR_SHIFT;
		wbb->bio.bi_end_io = qcow2_wb_endio;
		__bio_add_page(&wbb->bio, page, len, 0);
		atomic_inc(&wb.pending);
		submit_bio(&wbb->bio);
	}
	blk_finish_plug(&plug);
	if (!atomic_dec_and_test(&wb.pending))
		wait_for_completion_io(&wb.done);
	for (i = 0; wbbs && i < set->nr; i++)
		bio_uninit(&wbbs[i].bio);
	kvfree(wbbs);
	return qcow2_wb_give_back(c, set, true);
}

/*
 * Write back every dirty slice of group @group, from the slices themselves:
 * the caller excludes their modification until this returns.
 */
int qcow2_cache_writeback(struct qcow2_cache *c, unsigned int group)
{
	struct qcow2_wb_set set;

	qcow2_cache_wb_take(c, group, false, &set);
	return qcow2_cache_wb_write(c, &set, 0);
}
