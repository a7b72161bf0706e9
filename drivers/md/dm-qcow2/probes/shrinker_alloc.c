// SPDX-License-Identifier: GPL-2.0
/* 6.7: shrinkers are allocated by shrinker_alloc(), not embedded. */
#include <linux/module.h>
#include <linux/shrinker.h>

struct shrinker *probe(void);
struct shrinker *probe(void)
{
	return shrinker_alloc(0, "probe");
}
MODULE_LICENSE("GPL");
