// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2setup: loop devices for image files.
 *
 * A file is attached with LOOP_CONFIGURE (LOOP_SET_FD and friends on
 * kernels without it) using the very file descriptor that holds the image
 * locks, with direct I/O when the file system allows it, read-only for
 * read-only layers, and LO_FLAGS_AUTOCLEAR: once the device-mapper device
 * has the loop open, the loop detaches itself when the mapping releases it
 * (or when qcow2setup dies before the mapping exists).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "qcow2setup.h"

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static int open_loop_node(int nr)
{
	char path[64];
	int fd, i;

	snprintf(path, sizeof(path), "/dev/loop%d", nr);
	for (i = 0; i < 50; i++) {
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0 && (errno == EACCES || errno == EROFS))
			fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0 || errno != ENOENT)
			return fd;
		nap_ms(20);	/* the node is being created */
	}
	return -1;
}

/* LOOP_SET_FD, LOOP_SET_STATUS64, LOOP_SET_DIRECT_IO: kernels before 5.8. */
static int legacy_configure(int lfd, const struct loop_config *cfg)
{
	struct loop_info64 info = cfg->info;

	if (ioctl(lfd, LOOP_SET_FD, cfg->fd) < 0)
		return -errno;
	info.lo_flags &= LO_FLAGS_AUTOCLEAR;
	if (ioctl(lfd, LOOP_SET_STATUS64, &info) < 0) {
		int e = errno;

		ioctl(lfd, LOOP_CLR_FD, 0);
		return -e;
	}
	if (cfg->block_size)
		ioctl(lfd, LOOP_SET_BLOCK_SIZE, (unsigned long)cfg->block_size);
	if (cfg->info.lo_flags & LO_FLAGS_DIRECT_IO)
		ioctl(lfd, LOOP_SET_DIRECT_IO, 1UL);
	return 0;
}

int loop_attach(struct layer *l, bool read_only, unsigned int block_size)
{
	struct loop_config cfg;
	struct loop_info64 info;
	struct stat st;
	int ctl, tries, lfd = -1, nr = -1, r = -EBUSY;

	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0)
		return fail(EXIT_DM, "cannot open /dev/loop-control: %s (is the loop driver available?)",
			    strerror(errno));
	for (tries = 0; tries < 32; tries++) {
		nr = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (nr < 0) {
			r = -errno;
			break;
		}
		lfd = open_loop_node(nr);
		if (lfd < 0) {
			r = -errno;
			break;
		}
		memset(&cfg, 0, sizeof(cfg));
		cfg.fd = (__u32)l->fd;
		cfg.block_size = block_size;
		cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO |
				    (read_only ? LO_FLAGS_READ_ONLY : 0);
		strncpy((char *)cfg.info.lo_file_name, l->path, LO_NAME_SIZE - 1);

		r = ioctl(lfd, LOOP_CONFIGURE, &cfg) < 0 ? -errno : 0;
		if (r == -EINVAL) {
			/* Some kernels refuse direct I/O instead of ignoring it. */
			cfg.info.lo_flags &= ~LO_FLAGS_DIRECT_IO;
			r = ioctl(lfd, LOOP_CONFIGURE, &cfg) < 0 ? -errno : 0;
			cfg.info.lo_flags |= LO_FLAGS_DIRECT_IO;
		}
		if (r == -ENOTTY || r == -EINVAL)
			r = legacy_configure(lfd, &cfg);
		if (r != -EBUSY)
			break;
		/* Someone else took this loop device: try the next free one. */
		close(lfd);
		lfd = -1;
	}
	close(ctl);
	if (r) {
		if (lfd >= 0)
			close(lfd);
		return fail(EXIT_DM, "cannot attach %s to a loop device: %s",
			    l->path, strerror(-r));
	}
	l->loop_nr = nr;
	l->loop_fd = lfd;
	if (fstat(lfd, &st) == 0)
		l->dev = st.st_rdev;
	else
		l->dev = makedev(7, (unsigned int)nr);
	if (ioctl(lfd, LOOP_GET_STATUS64, &info) == 0)
		l->dio = !!(info.lo_flags & LO_FLAGS_DIRECT_IO);
	msg_info("attached %s to /dev/loop%d (%s, %s I/O)", l->path, nr,
		 read_only ? "read-only" : "read-write", l->dio ? "direct" : "buffered");
	return 0;
}

/* Undo loop_attach (open failed before the mapping took the loop). */
void loop_detach(struct layer *l)
{
	if (l->loop_fd < 0)
		return;
	if (ioctl(l->loop_fd, LOOP_CLR_FD, 0) < 0 && errno != ENXIO)
		msg_warn("cannot detach /dev/loop%d: %s (it detaches itself when closed)",
			 l->loop_nr, strerror(errno));
	close(l->loop_fd);
	l->loop_fd = -1;
	l->loop_nr = -1;
}

/* The mapping holds the loop now: autoclear takes over. */
void loop_release_fd(struct layer *l)
{
	if (l->loop_fd >= 0)
		close(l->loop_fd);
	l->loop_fd = -1;
}

bool loop_is_bound(unsigned int major, unsigned int minor)
{
	char *bf = read_sysfs("/sys/dev/block/%u:%u/loop/backing_file", major, minor);

	free(bf);
	return bf != NULL;
}

/* The file (device, inode) behind a loop device; -ENXIO when unbound. */
int loop_file_id(unsigned int major, unsigned int minor, dev_t *dev, ino_t *ino)
{
	struct loop_info64 info;
	char *node;
	int fd, r = 0;

	if (!loop_is_bound(major, minor))
		return -ENXIO;
	node = devnode_of(major, minor);
	if (!node)
		return -ENODEV;
	fd = open(node, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	free(node);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, LOOP_GET_STATUS64, &info) < 0) {
		r = -errno;
	} else {
		*dev = (dev_t)info.lo_device;
		*ino = (ino_t)info.lo_inode;
	}
	close(fd);
	return r;
}
