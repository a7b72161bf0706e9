// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2 compressed clusters: raw deflate (compression_type 0) through the
 * kernel's zlib, zstd (compression_type 1) through the kernel's zstd.
 *
 * Decompression needs a cluster-sized output buffer, an input buffer for up
 * to two clusters of compressed stream, and decoder workspaces.  A small pool
 * of such contexts is allocated on first use and kept; each context remembers
 * the cluster it decompressed last, so reading a compressed cluster in small
 * pieces decompresses it once.
 */
#include <linux/highmem.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/zlib.h>
#include <linux/zstd.h>

#include "dm-qcow2.h"

struct qcow2_dctx {
	struct list_head list;
	void *in;
	void *out;
	size_t out_size;		/* largest cluster of the chain */
	void *zlib_ws;
	void *zstd_ws;
	size_t zstd_ws_size;
	zstd_dstream *zstd;
	/* what @out holds: valid when layer != NULL */
	struct qcow2_layer *layer;
	u64 entry;
};

struct qcow2_dpool {
	struct mutex lock;
	wait_queue_head_t wait;
	struct list_head idle;
	unsigned int nr;		/* contexts allocated */
	unsigned int max;
	size_t cluster_max;
};

struct qcow2_dpool *qcow2_dpool_create(struct qcow2_target *qt)
{
	struct qcow2_dpool *pool;
	unsigned int k;

	pool = kzalloc(sizeof(*pool), GFP_KERNEL);
	if (!pool)
		return NULL;
	mutex_init(&pool->lock);
	init_waitqueue_head(&pool->wait);
	INIT_LIST_HEAD(&pool->idle);
	pool->max = clamp_t(unsigned int, num_online_cpus(), 1, 4);
	for (k = 0; k < qt->nr_layers; k++)
		if (qt->layers[k].fmt == QCOW2_FMT_QCOW2)
			pool->cluster_max = max_t(size_t, pool->cluster_max,
						  qt->layers[k].qi.cluster_size);
	return pool;
}

static void qcow2_dctx_free(struct qcow2_dctx *ctx)
{
	kvfree(ctx->in);
	kvfree(ctx->out);
	kvfree(ctx->zlib_ws);
	kvfree(ctx->zstd_ws);
	kfree(ctx);
}

void qcow2_dpool_destroy(struct qcow2_dpool *pool)
{
	struct qcow2_dctx *ctx, *tmp;

	if (!pool)
		return;
	list_for_each_entry_safe(ctx, tmp, &pool->idle, list)
		qcow2_dctx_free(ctx);
	kfree(pool);
}

/* Forget what the contexts hold: the image may have changed (resume). */
void qcow2_dpool_forget(struct qcow2_dpool *pool)
{
	struct qcow2_dctx *ctx;

	mutex_lock(&pool->lock);
	list_for_each_entry(ctx, &pool->idle, list)
		ctx->layer = NULL;
	mutex_unlock(&pool->lock);
}

/* zstd frames written by QEMU have a window no larger than the cluster. */
static size_t qcow2_zstd_window(struct qcow2_dpool *pool)
{
	return max_t(size_t, pool->cluster_max, 1U << 17);
}

static struct qcow2_dctx *qcow2_dctx_alloc(struct qcow2_dpool *pool)
{
	struct qcow2_dctx *ctx;

	ctx = kzalloc(sizeof(*ctx), GFP_NOIO);
	if (!ctx)
		return NULL;
	ctx->out_size = pool->cluster_max;
	/* The sector count field allows up to two clusters of stream. */
	ctx->in = kvmalloc(2 * pool->cluster_max, GFP_NOIO);
	ctx->out = kvmalloc(pool->cluster_max, GFP_NOIO);
	ctx->zlib_ws = kvmalloc(zlib_inflate_workspacesize(), GFP_NOIO);
	ctx->zstd_ws_size = zstd_dstream_workspace_bound(qcow2_zstd_window(pool));
	ctx->zstd_ws = kvmalloc(ctx->zstd_ws_size, GFP_NOIO);
	if (!ctx->in || !ctx->out || !ctx->zlib_ws || !ctx->zstd_ws) {
		qcow2_dctx_free(ctx);
		return NULL;
	}
	return ctx;
}

/*
 * Take a context, preferring one that already holds the decompressed
 * cluster (@layer, @entry).  Sleeps until one is free.
 */
static struct qcow2_dctx *qcow2_dctx_get(struct qcow2_dpool *pool,
					 struct qcow2_layer *layer, u64 entry)
{
	struct qcow2_dctx *ctx;

	for (;;) {
		mutex_lock(&pool->lock);
		list_for_each_entry(ctx, &pool->idle, list) {
			if (ctx->layer == layer && ctx->entry == entry)
				goto found;
		}
		if (!list_empty(&pool->idle)) {
			/* Least recently used: the tail. */
			ctx = list_last_entry(&pool->idle, struct qcow2_dctx, list);
			goto found;
		}
		if (pool->nr < pool->max) {
			pool->nr++;
			mutex_unlock(&pool->lock);
			ctx = qcow2_dctx_alloc(pool);
			if (ctx)
				return ctx;
			mutex_lock(&pool->lock);
			pool->nr--;
			if (!pool->nr) {
				mutex_unlock(&pool->lock);
				return NULL;
			}
		}
		mutex_unlock(&pool->lock);
		wait_event(pool->wait, !list_empty_careful(&pool->idle));
	}
found:
	list_del(&ctx->list);
	mutex_unlock(&pool->lock);
	return ctx;
}

static void qcow2_dctx_put(struct qcow2_dpool *pool, struct qcow2_dctx *ctx)
{
	mutex_lock(&pool->lock);
	list_add(&ctx->list, &pool->idle);
	mutex_unlock(&pool->lock);
	wake_up(&pool->wait);
}

static int qcow2_inflate(struct qcow2_dctx *ctx, const void *in, size_t in_len,
			 size_t out_len)
{
	struct z_stream_s strm = {};
	int r;

	strm.workspace = ctx->zlib_ws;
	if (zlib_inflateInit2(&strm, -MAX_WBITS) != Z_OK)
		return -EIO;
	strm.next_in = in;
	strm.avail_in = in_len;
	strm.next_out = ctx->out;
	strm.avail_out = out_len;
	r = zlib_inflate(&strm, Z_FINISH);
	zlib_inflateEnd(&strm);
	/*
	 * The stream length is only known to sector precision: success means
	 * the cluster is complete, whether or not the stream end was seen.
	 */
	if (strm.avail_out == 0 &&
	    (r == Z_STREAM_END || r == Z_OK || r == Z_BUF_ERROR))
		return 0;
	return -EIO;
}

static int qcow2_unzstd(struct qcow2_dctx *ctx, size_t window, const void *in,
			size_t in_len, size_t out_len)
{
	zstd_in_buffer ib = { .src = in, .size = in_len, .pos = 0 };
	zstd_out_buffer ob = { .dst = ctx->out, .size = out_len, .pos = 0 };

	if (!ctx->zstd) {
		ctx->zstd = zstd_init_dstream(window, ctx->zstd_ws, ctx->zstd_ws_size);
		if (!ctx->zstd)
			return -ENOMEM;
	} else if (zstd_is_error(zstd_reset_dstream(ctx->zstd))) {
		return -EIO;
	}
	/* Several frames may follow each other; stop when the cluster is full. */
	while (ob.pos < ob.size) {
		size_t in_pos = ib.pos, out_pos = ob.pos;
		size_t ret = zstd_decompress_stream(ctx->zstd, &ob, &ib);

		if (zstd_is_error(ret))
			return -EIO;
		if (ib.pos == in_pos && ob.pos == out_pos)
			return -EIO;	/* truncated stream */
	}
	return 0;
}

static void qcow2_copy_to_bio(struct bio *bio, const u8 *src)
{
	struct bvec_iter iter;
	struct bio_vec bv;

	bio_for_each_segment(bv, bio, iter) {
		memcpy_to_bvec(&bv, src);
		src += bv.bv_len;
	}
}

/*
 * Get a context holding the decompressed cluster described by L2 entry
 * @entry of @layer.  Release it with qcow2_dctx_put().
 */
static struct qcow2_dctx *qcow2_dctx_cluster(struct qcow2_target *qt,
					     struct qcow2_layer *layer,
					     u64 entry, int *err)
{
	const struct qcow2_info *qi = &layer->qi;
	struct qcow2_compressed c;
	struct qcow2_dctx *ctx;
	const char *why;
	u64 start;
	size_t len;
	int r;

	r = qcow2_decode_compressed(qi, entry, layer->dev_size, &c, &why);
	if (r) {
		DMERR_LIMIT("%s: layer %u: compressed cluster: %s",
			    qcow2_dev_name(qt), layer->idx, why);
		*err = r;
		return NULL;
	}
	ctx = qcow2_dctx_get(qt->dpool, layer, entry);
	if (!ctx) {
		*err = -ENOMEM;
		return NULL;
	}
	if (ctx->layer == layer && ctx->entry == entry)
		return ctx;

	ctx->layer = NULL;
	start = c.offset & ~(u64)(SECTOR_SIZE - 1);
	len = c.nb_sectors << SECTOR_SHIFT;
	r = len > 2 * ctx->out_size ? -EIO : qcow2_read_data(qt, layer, start, ctx->in, len);
	if (!r) {
		len -= c.offset - start;
		if (qi->compression_type == QCOW2_COMPRESSION_ZSTD)
			r = qcow2_unzstd(ctx, qcow2_zstd_window(qt->dpool),
					 ctx->in + (c.offset - start), len,
					 qi->cluster_size);
		else
			r = qcow2_inflate(ctx, ctx->in + (c.offset - start), len,
					  qi->cluster_size);
		if (r)
			DMERR_LIMIT("%s: layer %u: compressed cluster at %llu does not decompress",
				    qcow2_dev_name(qt), layer->idx, c.offset);
	}
	if (r) {
		qcow2_dctx_put(qt->dpool, ctx);
		*err = r;
		return NULL;
	}
	ctx->layer = layer;
	ctx->entry = entry;
	return ctx;
}

/*
 * Fill @bio with the bytes at @offset_in_cluster of the compressed cluster
 * described by L2 entry @entry of @layer.
 */
int qcow2_read_compressed(struct qcow2_target *qt, struct qcow2_layer *layer,
			  u64 entry, u64 offset_in_cluster, struct bio *bio)
{
	struct qcow2_dctx *ctx;
	int r = 0;

	if (offset_in_cluster + bio->bi_iter.bi_size > layer->qi.cluster_size)
		return -EIO;
	ctx = qcow2_dctx_cluster(qt, layer, entry, &r);
	if (!ctx)
		return r;
	qcow2_copy_to_bio(bio, ctx->out + offset_in_cluster);
	qcow2_dctx_put(qt->dpool, ctx);
	return 0;
}

/* The same into a buffer (copy-on-write of a compressed cluster). */
int qcow2_decompress_to_buf(struct qcow2_target *qt, struct qcow2_layer *layer,
			    u64 entry, u64 offset_in_cluster, void *buf,
			    size_t len)
{
	struct qcow2_dctx *ctx;
	int r = 0;

	if (offset_in_cluster + len > layer->qi.cluster_size)
		return -EIO;
	ctx = qcow2_dctx_cluster(qt, layer, entry, &r);
	if (!ctx)
		return r;
	memcpy(buf, ctx->out + offset_in_cluster, len);
	qcow2_dctx_put(qt->dpool, ctx);
	return 0;
}
