// SPDX-License-Identifier: GPL-2.0
/* 6.5: fmode_t for block device opens became blk_mode_t / BLK_OPEN_*. */
#include <linux/blkdev.h>
#include <linux/module.h>

blk_mode_t probe(void);
blk_mode_t probe(void)
{
	return BLK_OPEN_READ | BLK_OPEN_WRITE;
}
MODULE_LICENSE("GPL");
