// SPDX-License-Identifier: GPL-2.0
/* 6.10: queue_limits.max_discard_sectors became max_hw_discard_sectors for stacking drivers. */
#include <linux/blkdev.h>
#include <linux/module.h>

void probe(struct queue_limits *l);
void probe(struct queue_limits *l)
{
	l->max_hw_discard_sectors = 0;
}
MODULE_LICENSE("GPL");
