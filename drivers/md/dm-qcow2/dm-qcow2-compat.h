/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one place where kernel API differences are handled.  Each HAVE_* comes
 * from a compile probe (see the probes directory and scripts/compat-probe.sh), never from a
 * version number, so distribution backports are picked up correctly.
 *
 * Supported: Linux 6.1 and later.
 */
#ifndef _DM_QCOW2_COMPAT_H
#define _DM_QCOW2_COMPAT_H

#include <linux/blkdev.h>
#include <linux/device-mapper.h>
#include <linux/dm-io.h>
#include <linux/shrinker.h>
#include <linux/slab.h>

#include "compat-probes.h"

/* Device open modes for dm_get_device() and dm_table_get_mode(). */
#ifdef HAVE_BLK_MODE_T
#define QCOW2_MODE_READ		BLK_OPEN_READ
#define QCOW2_MODE_WRITE	BLK_OPEN_WRITE
#else
#define QCOW2_MODE_READ		FMODE_READ
#define QCOW2_MODE_WRITE	FMODE_WRITE
#endif

static inline int qcow2_dm_io(struct dm_io_request *req,
			      struct dm_io_region *where)
{
#ifdef HAVE_DM_IO_IOPRIO
	return dm_io(req, 1, where, NULL, IOPRIO_DEFAULT);
#else
	return dm_io(req, 1, where, NULL);
#endif
}

static inline void qcow2_set_max_discard(struct queue_limits *limits,
					 unsigned int sectors)
{
#ifdef HAVE_MAX_HW_DISCARD_SECTORS
	limits->max_hw_discard_sectors = sectors;
#else
	limits->max_discard_sectors = sectors;
#endif
}

/*
 * Shrinkers: allocated and registered by the kernel since 6.7, embedded in
 * the caller's structure before.  qcow2_shrinker_create() registers one named
 * "dm-qcow2:<name>", or returns NULL when there is no memory or registration
 * fails (the caller goes on without one).
 */
#ifdef HAVE_SHRINKER_ALLOC
static inline struct shrinker *
qcow2_shrinker_create(unsigned long (*count)(struct shrinker *, struct shrink_control *),
		      unsigned long (*scan)(struct shrinker *, struct shrink_control *),
		      void *priv, const char *name)
{
	struct shrinker *sh = shrinker_alloc(0, "dm-qcow2:%s", name);

	if (!sh)
		return NULL;
	sh->count_objects = count;
	sh->scan_objects = scan;
	sh->seeks = DEFAULT_SEEKS;
	sh->private_data = priv;
	shrinker_register(sh);
	return sh;
}

static inline void *qcow2_shrinker_priv(struct shrinker *sh)
{
	return sh->private_data;
}

static inline void qcow2_shrinker_destroy(struct shrinker *sh)
{
	if (sh)
		shrinker_free(sh);
}
#else
struct qcow2_compat_shrinker {
	struct shrinker sh;
	void *priv;
};

static inline struct shrinker *
qcow2_shrinker_create(unsigned long (*count)(struct shrinker *, struct shrink_control *),
		      unsigned long (*scan)(struct shrinker *, struct shrink_control *),
		      void *priv, const char *name)
{
	struct qcow2_compat_shrinker *cs = kzalloc(sizeof(*cs), GFP_KERNEL);

	if (!cs)
		return NULL;
	cs->sh.count_objects = count;
	cs->sh.scan_objects = scan;
	cs->sh.seeks = DEFAULT_SEEKS;
	cs->priv = priv;
	if (register_shrinker(&cs->sh, "dm-qcow2:%s", name)) {
		kfree(cs);
		return NULL;
	}
	return &cs->sh;
}

static inline void *qcow2_shrinker_priv(struct shrinker *sh)
{
	return container_of(sh, struct qcow2_compat_shrinker, sh)->priv;
}

static inline void qcow2_shrinker_destroy(struct shrinker *sh)
{
	if (!sh)
		return;
	unregister_shrinker(sh);
	kfree(container_of(sh, struct qcow2_compat_shrinker, sh));
}
#endif

#endif /* _DM_QCOW2_COMPAT_H */
