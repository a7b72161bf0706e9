// SPDX-License-Identifier: GPL-2.0
/*
 * dmq_planted: plants one kernel bug on demand, so that `make check-debug`
 * can show that its VM runner fails a run whose debug kernel reported one.
 *
 *   echo leak    > /sys/module/dmq_planted/parameters/plant   (kmemleak)
 *   echo lockdep > /sys/module/dmq_planted/parameters/plant   (lock inversion)
 *   echo kasan   > /sys/module/dmq_planted/parameters/plant   (out of bounds)
 *
 * Test code only: never load it on a machine that matters.
 */
#include <linux/compiler.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/string.h>

static DEFINE_MUTEX(planted_a);
static DEFINE_MUTEX(planted_b);
static void *planted_ptr;

static void planted_leak(void)
{
	int i;

	/*
	 * Reachable from nowhere once the pointer is overwritten.  Many of
	 * them: kmemleak counts any stale copy of an address (in a task stack,
	 * even a cached one) as a reference, so one object may go unseen.
	 */
	for (i = 0; i < 64; i++) {
		planted_ptr = kmalloc(128 + 8 * i, GFP_KERNEL);
		planted_ptr = NULL;
	}
}

static void planted_lockdep(void)
{
	/* A then B, later B then A: no deadlock now, a cycle for lockdep. */
	mutex_lock(&planted_a);
	mutex_lock(&planted_b);
	mutex_unlock(&planted_b);
	mutex_unlock(&planted_a);
	mutex_lock(&planted_b);
	mutex_lock(&planted_a);
	mutex_unlock(&planted_a);
	mutex_unlock(&planted_b);
}

static void planted_kasan(void)
{
	/* One byte past 13: inside the slab object, outside what was asked. */
	size_t n = 13;
	char *p = kmalloc(n, GFP_KERNEL);

	if (!p)
		return;
	OPTIMIZER_HIDE_VAR(n);
	pr_info("dmq_planted: read past the end: %d\n", READ_ONCE(p[n]));
	kfree(p);
}

static int planted_set(const char *val, const struct kernel_param *kp)
{
	if (sysfs_streq(val, "leak"))
		planted_leak();
	else if (sysfs_streq(val, "lockdep"))
		planted_lockdep();
	else if (sysfs_streq(val, "kasan"))
		planted_kasan();
	else
		return -EINVAL;
	pr_info("dmq_planted: planted %s\n", val);
	return 0;
}

static const struct kernel_param_ops planted_ops = {
	.set = planted_set,
};
module_param_cb(plant, &planted_ops, NULL, 0200);
MODULE_PARM_DESC(plant, "leak, lockdep or kasan: plant that bug now");

MODULE_DESCRIPTION("Plants a bug for the debug-kernel report detector's self-test");
MODULE_LICENSE("GPL");
