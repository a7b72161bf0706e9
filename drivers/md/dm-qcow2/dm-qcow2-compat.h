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

#endif /* _DM_QCOW2_COMPAT_H */
