// SPDX-License-Identifier: GPL-2.0
/* 6.9 (and some stable backports): dm_io() gained an ioprio argument. */
#include <linux/module.h>
#include <linux/dm-io.h>

int probe(struct dm_io_request *r, struct dm_io_region *w);
int probe(struct dm_io_request *r, struct dm_io_region *w)
{
	return dm_io(r, 1, w, NULL, 0);
}
MODULE_LICENSE("GPL");
