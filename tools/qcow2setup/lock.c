// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2setup: the image locks QEMU takes on image files, so that QEMU and
 * qcow2setup see each other's use of an image.
 *
 * QEMU's file driver expresses a user's block permissions as open file
 * description (OFD) read locks on single bytes of the image file:
 *
 *   byte 100 + p   held by a user that HAS permission p
 *   byte 200 + p   held by a user that does NOT SHARE permission p
 *
 * with p = 0 consistent read, 1 write, 2 write unchanged, 3 resize.  All of
 * them are shared (F_RDLCK) locks; a conflict is found with F_OFD_GETLK,
 * asking whether an exclusive lock could be placed on the byte: a user that
 * wants permission p must find byte 200 + p free, and a user that does not
 * share p must find byte 100 + p free.  Observed with QEMU 7.2 (qemu-io):
 *
 *   read-only qcow2 image or backing file: 100, 201, 203
 *   read-write qcow2 image:                100, 101, 103, 201, 203
 *
 * qcow2setup takes the same sets.  The locks live in the open file
 * description, not in the process: the description handed to the loop
 * driver stays referenced by the loop device, so the locks stay in force
 * after qcow2setup exits, for as long as the mapping exists, and go away
 * when the loop device is detached (see qcow2setup(8), LOCKING).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "qcow2setup.h"

#define LOCK_PERM_BASE		100
#define LOCK_SHARED_BASE	200

enum {
	PERM_CONSISTENT_READ,
	PERM_WRITE,
	PERM_WRITE_UNCHANGED,
	PERM_RESIZE,
	PERM_COUNT
};

static const char *const perm_names[PERM_COUNT] = {
	"consistent read", "write", "write unchanged", "resize"
};

#define BIT(p)	(1U << (p))

static int ofd_lock(int fd, int cmd, short type, off_t byte, struct flock *out)
{
	struct flock fl = {
		.l_type = type,
		.l_whence = SEEK_SET,
		.l_start = byte,
		.l_len = 1,
	};
	int r;

	r = fcntl(fd, cmd, &fl);
	if (out)
		*out = fl;
	return r < 0 ? -errno : 0;
}

/* Is @byte locked by another open file description? <0 on error. */
static int byte_taken(int fd, off_t byte)
{
	struct flock fl;
	int r = ofd_lock(fd, F_OFD_GETLK, F_WRLCK, byte, &fl);

	if (r)
		return r;
	return fl.l_type != F_UNLCK;
}

/* Is the image open for writing by a QEMU-style user? (info) */
int qemu_write_locked(int fd)
{
	return byte_taken(fd, LOCK_PERM_BASE + PERM_WRITE);
}

int qemu_lock_image(struct layer *l, bool writable)
{
	unsigned int perm = BIT(PERM_CONSISTENT_READ);
	unsigned int unshared = BIT(PERM_WRITE) | BIT(PERM_RESIZE);
	unsigned int p;
	int r;

	if (writable)
		perm |= BIT(PERM_WRITE) | BIT(PERM_RESIZE);

	for (p = 0; p < PERM_COUNT; p++) {
		if (perm & BIT(p)) {
			r = ofd_lock(l->fd, F_OFD_SETLK, F_RDLCK, LOCK_PERM_BASE + p, NULL);
			if (r)
				goto lock_err;
		}
		if (unshared & BIT(p)) {
			r = ofd_lock(l->fd, F_OFD_SETLK, F_RDLCK, LOCK_SHARED_BASE + p, NULL);
			if (r)
				goto lock_err;
		}
	}
	l->locked = true;

	/* Check after locking, as QEMU does: two racing users both fail. */
	for (p = 0; p < PERM_COUNT; p++) {
		if (perm & BIT(p)) {
			r = byte_taken(l->fd, LOCK_SHARED_BASE + p);
			if (r < 0)
				goto lock_err;
			if (r)
				return fail(EXIT_BUSY,
					    "%s is in use: another process (a VM, qemu-io, qemu-nbd, "
					    "or another mapping) does not allow \"%s\" access to it",
					    l->path, perm_names[p]);
		}
		if (unshared & BIT(p)) {
			r = byte_taken(l->fd, LOCK_PERM_BASE + p);
			if (r < 0)
				goto lock_err;
			if (r)
				return fail(EXIT_BUSY,
					    "%s is in use: another process (a VM, qemu-io, qemu-nbd, "
					    "or another mapping) has it open with \"%s\" access",
					    l->path, perm_names[p]);
		}
	}
	return 0;

lock_err:
	if (r == -EINVAL || r == -ENOLCK || r == -EOPNOTSUPP) {
		/* QEMU's locking=auto also goes on without locks there. */
		msg_warn("%s: file locks are not supported here (%s); QEMU and qcow2setup cannot see each other's use of it",
			 l->path, strerror(-r));
		return 0;
	}
	return fail(EXIT_BUSY, "%s: cannot take the image locks: %s", l->path, strerror(-r));
}
