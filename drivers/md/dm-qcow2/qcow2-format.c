// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2 on-disk format: parse, validate and decode helpers.
 *
 * Pure code: no allocation, no I/O, no floating point and no 64-bit
 * division (every size in qcow2 is a power of two, so shifts do).  The same
 * source is built into the dm-qcow2 module and into the userspace tools and
 * unit tests through the shim in qcow2-types.h.
 *
 * Error strings returned through @err are static (they outlive the call and
 * may be stored in ti->error).
 */
#include "qcow2-format.h"

/* Largest byte offset we let a table reach: the loff_t limit. */
#define QCOW2_MAX_FILE_OFFSET	0x7fffffffffffffffULL
/* Host offsets in L1/L2 entries and compressed descriptors are < 2^56. */
#define QCOW2_HOST_OFFSET_BITS	56

#define QCOW2_SNAPSHOT_HEADER_SIZE	((u32)sizeof(struct qcow2_snapshot_header))
#define QCOW2_SNAPSHOT_DISK_SIZE_END	16	/* extra bytes up to disk_size */

static inline u64 qcow2_round_up8(u64 x)
{
	return (x + 7) & ~7ULL;
}

/* Big-endian u32 at @off of a buffer that reads as zeros past @len. */
static u32 qcow2_get_be32(const u8 *p, size_t len, u64 off)
{
	u32 v = 0;
	unsigned int i;

	for (i = 0; i < 4; i++) {
		v <<= 8;
		if (off + i < len)
			v |= p[off + i];
	}
	return v;
}

/* magic, version and cluster_bits: shared by peek and parse. */
static int qcow2_check_basics(u32 magic, u32 version, u32 cluster_bits,
			      const char **err)
{
	if (magic != QCOW2_MAGIC) {
		*err = "bad magic";
		return -EINVAL;
	}
	if (version != 2 && version != 3) {
		*err = "unsupported version (only 2 and 3 exist)";
		return -EINVAL;
	}
	if (cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
	    cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
		*err = "cluster_bits out of range 9..21";
		return -EINVAL;
	}
	return 0;
}

int qcow2_peek_cluster_bits(const void *buf, size_t len, u32 *cluster_bits,
			    const char **err)
{
	const u8 *p = buf;
	u32 cb;
	int ret;

	if (len < 24) {
		*err = "header too short";
		return -EINVAL;
	}
	cb = qcow2_get_be32(p, len, 20);
	ret = qcow2_check_basics(qcow2_get_be32(p, len, 0),
				 qcow2_get_be32(p, len, 4), cb, err);
	if (ret)
		return ret;
	*cluster_bits = cb;
	return 0;
}

struct qcow2_table_msgs {
	const char *unaligned;
	const char *zero;
	const char *overflow;
	const char *beyond;
};

static const struct qcow2_table_msgs qcow2_l1_msgs = {
	.unaligned = "L1 table offset not cluster aligned",
	.zero = "L1 table offset is zero",
	.overflow = "L1 table offset overflow",
	.beyond = "L1 table beyond end of device",
};

static const struct qcow2_table_msgs qcow2_reftable_msgs = {
	.unaligned = "refcount table offset not cluster aligned",
	.zero = "refcount table offset is zero",
	.overflow = "refcount table offset overflow",
	.beyond = "refcount table beyond end of device",
};

static const struct qcow2_table_msgs qcow2_snapshots_msgs = {
	.unaligned = "snapshot table offset not cluster aligned",
	.zero = "snapshot table offset is zero",
	.overflow = "snapshot table offset overflow",
	.beyond = "snapshot table beyond end of device",
};

static const struct qcow2_table_msgs qcow2_snap_l1_msgs = {
	.unaligned = "snapshot L1 table offset not cluster aligned",
	.zero = "snapshot L1 table offset is zero",
	.overflow = "snapshot L1 table offset overflow",
	.beyond = "snapshot L1 table beyond end of device",
};

/*
 * A table of @bytes bytes at @off.  The offset must always be cluster
 * aligned and the end must not overflow; when the table is in use (@used)
 * it must not start at 0 (the header) nor beyond @image_size.  A table that
 * starts at or before the end but runs past it is accepted: a loop device
 * drops a file's partial last sector and those bytes read as zeros.
 */
static int qcow2_check_table(const struct qcow2_info *qi, u64 off, u64 bytes,
			     bool used, u64 image_size,
			     const struct qcow2_table_msgs *m, const char **err)
{
	if (off & (qi->cluster_size - 1)) {
		*err = m->unaligned;
		return -EINVAL;
	}
	if (bytes > QCOW2_MAX_FILE_OFFSET ||
	    off > QCOW2_MAX_FILE_OFFSET - bytes) {
		*err = m->overflow;
		return -EINVAL;
	}
	if (!used)
		return 0;
	if (!off) {
		*err = m->zero;
		return -EINVAL;
	}
	if (off > image_size) {
		*err = m->beyond;
		return -EINVAL;
	}
	return 0;
}

static int qcow2_parse_extensions(const u8 *p, size_t len,
				  struct qcow2_info *qi, const char **err)
{
	u64 off = qi->header_length;
	u64 end = qi->ext_end;

	while (off < end) {
		u32 type, elen, i;

		if (end - off < sizeof(struct qcow2_ext_header)) {
			*err = "header extension too large";
			return -EINVAL;
		}
		type = qcow2_get_be32(p, len, off);
		elen = qcow2_get_be32(p, len, off + 4);
		off += sizeof(struct qcow2_ext_header);
		if (elen > end - off) {
			*err = "header extension too large";
			return -EINVAL;
		}

		switch (type) {
		case QCOW2_EXT_END:
			return 0;
		case QCOW2_EXT_BACKING_FORMAT:
			if (elen > QCOW2_MAX_BACKING_FMT) {
				*err = "backing format name too long";
				return -EINVAL;
			}
			for (i = 0; i < elen; i++)
				qi->backing_fmt[i] = off + i < len ? p[off + i] : 0;
			qi->backing_fmt[elen] = '\0';
			qi->has_backing_fmt = true;
			break;
		case QCOW2_EXT_FEATURE_TABLE:
			/* Only used for messages; contents ignored. */
			break;
		case QCOW2_EXT_BITMAPS:
			qi->has_bitmaps_ext = true;
			if (elen != 24) {
				*err = "bitmaps extension has wrong length";
				return -EINVAL;
			}
			break;
		case QCOW2_EXT_CRYPTO:
			qi->has_crypto_ext = true;
			if (elen != 16) {
				*err = "crypto header extension has wrong length";
				return -EINVAL;
			}
			/* Encrypted images were refused before we got here. */
			*err = "crypto header extension on unencrypted image";
			return -EINVAL;
		case QCOW2_EXT_DATA_FILE:
			qi->has_data_file_ext = true;
			break;
		default:
			qi->nr_unknown_ext++;
			break;
		}
		off += qcow2_round_up8(elen);
	}
	return 0;
}

int qcow2_parse_header(const void *buf, size_t len, u64 image_size,
		       struct qcow2_info *qi, const char **err)
{
	const u8 *p = buf;
	struct qcow2_header h;
	u64 unknown, l1_bytes, rt_bytes, q, rem;
	u32 cb, shift;
	int ret;

	memset(qi, 0, sizeof(*qi));
	memset(&h, 0, sizeof(h));
	memcpy(&h, p, len < sizeof(h) ? len : sizeof(h));

	cb = be32_to_cpu(h.cluster_bits);
	ret = qcow2_check_basics(be32_to_cpu(h.magic), be32_to_cpu(h.version),
				 cb, err);
	if (ret)
		return ret;

	qi->version = be32_to_cpu(h.version);
	qi->cluster_bits = cb;
	qi->cluster_size = 1ULL << cb;
	qi->size = be64_to_cpu(h.size);
	qi->backing_file_offset = be64_to_cpu(h.backing_file_offset);
	qi->backing_file_size = be32_to_cpu(h.backing_file_size);
	qi->crypt_method = be32_to_cpu(h.crypt_method);
	qi->l1_size = be32_to_cpu(h.l1_size);
	qi->l1_table_offset = be64_to_cpu(h.l1_table_offset);
	qi->refcount_table_offset = be64_to_cpu(h.refcount_table_offset);
	qi->refcount_table_clusters = be32_to_cpu(h.refcount_table_clusters);
	qi->nb_snapshots = be32_to_cpu(h.nb_snapshots);
	qi->snapshots_offset = be64_to_cpu(h.snapshots_offset);
	if (qi->version == 2) {
		qi->header_length = QCOW2_V2_HEADER_LENGTH;
		qi->refcount_order = 4;
	} else {
		qi->incompatible_features = be64_to_cpu(h.incompatible_features);
		qi->compatible_features = be64_to_cpu(h.compatible_features);
		qi->autoclear_features = be64_to_cpu(h.autoclear_features);
		qi->refcount_order = be32_to_cpu(h.refcount_order);
		qi->header_length = be32_to_cpu(h.header_length);
		if (qi->header_length > QCOW2_V3_MIN_HEADER_LENGTH)
			qi->compression_type = h.compression_type;
	}
	/* The name size is undefined without a backing file. */
	if (!qi->backing_file_offset)
		qi->backing_file_size = 0;

	qi->extended_l2 = !!(qi->incompatible_features & QCOW2_INCOMPAT_EXTL2);
	qi->l2_entry_shift = qi->extended_l2 ? 4 : 3;
	qi->l2_bits = cb - qi->l2_entry_shift;
	qi->subcluster_bits = qi->extended_l2 ? cb - 5 : cb;
	qi->csize_shift = 62 - (cb - 8);
	qi->csize_mask = (1ULL << (cb - 8)) - 1;
	qi->coffset_mask = (1ULL << qi->csize_shift) - 1;
	qi->ext_end = qi->backing_file_offset ? qi->backing_file_offset :
						qi->cluster_size;

	if (qi->version == 3) {
		if (qi->header_length < QCOW2_V3_MIN_HEADER_LENGTH) {
			*err = "header_length smaller than 104";
			return -EINVAL;
		}
		if (qi->header_length > qi->cluster_size) {
			*err = "header_length larger than cluster size";
			return -EINVAL;
		}
	}

	if (qi->crypt_method != QCOW2_CRYPT_NONE) {
		*err = "encrypted images are not supported";
		return -EOPNOTSUPP;
	}

	unknown = qi->incompatible_features & ~QCOW2_INCOMPAT_KNOWN;
	if (unknown) {
		*err = "unknown incompatible feature bits";
		return -EOPNOTSUPP;
	}

	if (qi->compression_type != QCOW2_COMPRESSION_DEFLATE &&
	    qi->compression_type != QCOW2_COMPRESSION_ZSTD) {
		*err = "unknown compression type";
		return -EOPNOTSUPP;
	}
	if (qi->compression_type != QCOW2_COMPRESSION_DEFLATE &&
	    !(qi->incompatible_features & QCOW2_INCOMPAT_COMPRESSION)) {
		*err = "compression type set without incompatible bit 3";
		return -EINVAL;
	}
	if (qi->compression_type == QCOW2_COMPRESSION_DEFLATE &&
	    (qi->incompatible_features & QCOW2_INCOMPAT_COMPRESSION)) {
		*err = "incompatible bit 3 set with deflate compression type";
		return -EINVAL;
	}

	if (qi->extended_l2 && cb < QCOW2_MIN_EXT_L2_CLUSTER_BITS) {
		*err = "extended L2 entries need cluster_bits >= 14";
		return -EINVAL;
	}

	if (qi->refcount_order > QCOW2_MAX_REFCOUNT_ORDER) {
		*err = "refcount_order out of range 0..6";
		return -EINVAL;
	}

	if ((qi->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) &&
	    !(qi->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)) {
		*err = "raw external data bit without external data file";
		return -EINVAL;
	}

	if (qi->backing_file_offset) {
		u64 room;

		if (qi->backing_file_offset > qi->cluster_size) {
			*err = "backing file offset beyond header cluster";
			return -EINVAL;
		}
		if (qi->backing_file_offset < qi->header_length) {
			*err = "backing file name overlaps header";
			return -EINVAL;
		}
		room = qi->cluster_size - qi->backing_file_offset;
		if (room > QCOW2_MAX_BACKING_NAME)
			room = QCOW2_MAX_BACKING_NAME;
		if (qi->backing_file_size > room) {
			*err = "backing file name too long";
			return -EINVAL;
		}
	}

	if (!qi->refcount_table_clusters) {
		*err = "refcount table is empty";
		return -EINVAL;
	}
	rt_bytes = (u64)qi->refcount_table_clusters << cb;
	if (rt_bytes > QCOW2_MAX_REFTABLE_BYTES) {
		*err = "refcount table too large";
		return -EFBIG;
	}

	l1_bytes = (u64)qi->l1_size << 3;
	if (l1_bytes > QCOW2_MAX_L1_BYTES) {
		*err = "L1 table too large";
		return -EFBIG;
	}

	/* L1 entries needed: ceil(size / bytes mapped by one L2 table). */
	shift = cb + qi->l2_bits;
	q = qi->size >> shift;
	rem = qi->size & ((1ULL << shift) - 1);
	if (q > 0xffffffffULL || (q == 0xffffffffULL && rem)) {
		*err = "virtual size too large";
		return -EFBIG;
	}
	qi->l1_needed = (u32)q + (rem ? 1 : 0);
	if (qi->l1_size < qi->l1_needed) {
		*err = "L1 table is too small";
		return -EINVAL;
	}

	if (qi->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
		*err = "too many snapshots";
		return -EFBIG;
	}

	ret = qcow2_check_table(qi, qi->l1_table_offset, l1_bytes,
				qi->l1_size != 0, image_size, &qcow2_l1_msgs,
				err);
	if (ret)
		return ret;
	ret = qcow2_check_table(qi, qi->refcount_table_offset, rt_bytes, true,
				image_size, &qcow2_reftable_msgs, err);
	if (ret)
		return ret;
	ret = qcow2_check_table(qi, qi->snapshots_offset,
				(u64)qi->nb_snapshots * QCOW2_SNAPSHOT_HEADER_SIZE,
				qi->nb_snapshots != 0, image_size,
				&qcow2_snapshots_msgs, err);
	if (ret)
		return ret;

	return qcow2_parse_extensions(p, len, qi, err);
}

int qcow2_backing_name(const struct qcow2_info *qi, const void *buf,
		       size_t len, char *name, size_t name_size)
{
	const u8 *p = buf;
	u32 i, n = qi->backing_file_size;

	if (!name_size)
		return -ENAMETOOLONG;
	name[0] = '\0';
	if (!qi->backing_file_offset)
		return 0;
	if (n >= name_size)
		return -ENAMETOOLONG;
	for (i = 0; i < n; i++) {
		u64 off = qi->backing_file_offset + i;

		name[i] = off < len ? (char)p[off] : '\0';
	}
	name[n] = '\0';
	return (int)strlen(name);
}

s64 qcow2_l1_entry_l2_offset(const struct qcow2_info *qi, u64 l1e,
			     u64 image_size, const char **err)
{
	u64 off = l1e & QCOW2_L1E_OFFSET_MASK;

	if (l1e & QCOW2_L1E_RESERVED_MASK) {
		*err = "L1 entry has reserved bits set";
		return -EINVAL;
	}
	if (!off)
		return 0;
	if (off & (qi->cluster_size - 1)) {
		*err = "L2 table offset not cluster aligned";
		return -EINVAL;
	}
	if (off >= image_size) {
		*err = "L2 table beyond end of device";
		return -EINVAL;
	}
	return (s64)off;
}

static inline bool qcow2_has_data_file(const struct qcow2_info *qi)
{
	return qi->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
}

enum qcow2_cluster_type qcow2_l2_type(const struct qcow2_info *qi,
				      const struct qcow2_l2_entry *l2e,
				      unsigned int sc, const char **err)
{
	u64 e = l2e->entry;
	u64 off = e & QCOW2_L2E_OFFSET_MASK;
	bool copied = e & QCOW2_OFLAG_COPIED;
	/* Offset 0 is a valid data-file offset; COPIED disambiguates. */
	bool has_host = off || (copied && qcow2_has_data_file(qi));
	const char *why;
	u32 alloc, zero;

	if (e & QCOW2_OFLAG_COMPRESSED) {
		if (copied)
			why = "compressed cluster with COPIED flag";
		else if (qcow2_has_data_file(qi))
			why = "compressed cluster with external data file";
		else if (qi->extended_l2 && l2e->bitmap)
			why = "compressed cluster with non-zero subcluster bitmap";
		else
			return QCOW2_CL_COMPRESSED;
		goto invalid;
	}

	if (!qi->extended_l2) {
		if (e & QCOW2_L2E_STD_RESERVED_MASK) {
			why = "L2 entry has reserved bits set";
			goto invalid;
		}
		if (e & QCOW2_OFLAG_ZERO) {
			if (qi->version < 3) {
				why = "zero flag in a version 2 image";
				goto invalid;
			}
			return off ? QCOW2_CL_ZERO_ALLOC : QCOW2_CL_ZERO_PLAIN;
		}
		if (has_host)
			return QCOW2_CL_NORMAL;
		if (copied) {
			why = "COPIED flag on unallocated cluster";
			goto invalid;
		}
		return QCOW2_CL_UNALLOCATED;
	}

	/* Extended L2: bit 0 is reserved, the bitmap decides per subcluster. */
	if (sc >= QCOW2_SUBCLUSTERS) {
		why = "subcluster index out of range";
		goto invalid;
	}
	if (e & (QCOW2_L2E_STD_RESERVED_MASK | QCOW2_OFLAG_ZERO)) {
		why = "L2 entry has reserved bits set";
		goto invalid;
	}
	alloc = (u32)l2e->bitmap;
	zero = (u32)(l2e->bitmap >> 32);
	if (alloc & zero) {
		why = "subcluster both allocated and zero";
		goto invalid;
	}
	if (has_host) {
		if (zero & (1U << sc))
			return QCOW2_CL_ZERO_ALLOC;
		if (alloc & (1U << sc))
			return QCOW2_CL_NORMAL;
		return QCOW2_CL_UNALLOCATED_ALLOC;
	}
	if (copied) {
		why = "COPIED flag on unallocated cluster";
		goto invalid;
	}
	if (alloc) {
		why = "allocated subclusters without host offset";
		goto invalid;
	}
	if (zero & (1U << sc))
		return QCOW2_CL_ZERO_PLAIN;
	return QCOW2_CL_UNALLOCATED;

invalid:
	*err = why;
	return QCOW2_CL_INVALID;
}

s64 qcow2_l2_host_offset(const struct qcow2_info *qi,
			 const struct qcow2_l2_entry *l2e, u64 image_size,
			 const char **err)
{
	u64 e = l2e->entry;
	u64 off = e & QCOW2_L2E_OFFSET_MASK;
	u64 reserved = QCOW2_L2E_STD_RESERVED_MASK;

	if (e & QCOW2_OFLAG_COMPRESSED) {
		*err = "host offset of a compressed cluster";
		return -EINVAL;
	}
	if (qi->extended_l2)
		reserved |= QCOW2_OFLAG_ZERO;
	if (e & reserved) {
		*err = "data cluster entry has reserved bits set";
		return -EINVAL;
	}
	if (off & (qi->cluster_size - 1)) {
		*err = "data cluster offset not cluster aligned";
		return -EINVAL;
	}
	if (!off && !qcow2_has_data_file(qi)) {
		*err = "data cluster offset inside header cluster";
		return -EINVAL;
	}
	if (off >= image_size) {
		*err = "data cluster beyond end of device";
		return -EINVAL;
	}
	return (s64)off;
}

int qcow2_decode_compressed(const struct qcow2_info *qi, u64 entry,
			    u64 image_size, struct qcow2_compressed *c,
			    const char **err)
{
	u64 desc = entry & ~(QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED);
	u64 off = desc & qi->coffset_mask;

	c->offset = off;
	c->nb_sectors = ((desc >> qi->csize_shift) & qi->csize_mask) + 1;

	if (off >> QCOW2_HOST_OFFSET_BITS) {
		*err = "compressed cluster offset too large";
		return -EINVAL;
	}
	if (qcow2_has_data_file(qi)) {
		*err = "compressed cluster with external data file";
		return -EINVAL;
	}
	if (off < qi->cluster_size) {
		*err = "compressed cluster inside header cluster";
		return -EINVAL;
	}
	if (off >= image_size) {
		*err = "compressed cluster beyond end of device";
		return -EINVAL;
	}
	return 0;
}

unsigned int qcow2_subcluster_run(const struct qcow2_info *qi,
				  const struct qcow2_l2_entry *l2e,
				  unsigned int sc)
{
	const char *err;
	enum qcow2_cluster_type t;
	u32 alloc, zero, same;
	unsigned int n, max;

	if (!qi->extended_l2)
		return 1;
	if (sc >= QCOW2_SUBCLUSTERS)
		return 0;
	max = QCOW2_SUBCLUSTERS - sc;
	t = qcow2_l2_type(qi, l2e, sc, &err);
	if (t == QCOW2_CL_COMPRESSED || t == QCOW2_CL_INVALID)
		return max;	/* whole cluster */

	/* Subclusters whose alloc and zero bits both equal those of @sc. */
	alloc = (u32)l2e->bitmap;
	zero = (u32)(l2e->bitmap >> 32);
	same = ~((alloc & (1U << sc) ? ~alloc : alloc) |
		 (zero & (1U << sc) ? ~zero : zero));
	same >>= sc;
	for (n = 0; n < max && (same & 1); n++)
		same >>= 1;
	return n;
}

int qcow2_parse_snapshot(const struct qcow2_info *qi, const void *buf,
			 size_t len, u64 image_size,
			 struct qcow2_snapshot_info *si, const char **err)
{
	const u8 *p = buf;
	struct qcow2_snapshot_header sh;
	struct qcow2_snapshot_extra ex;
	u32 extra, need;
	int ret;

	memset(si, 0, sizeof(*si));
	if (len < QCOW2_SNAPSHOT_HEADER_SIZE)
		return -ENODATA;
	memcpy(&sh, p, sizeof(sh));

	extra = be32_to_cpu(sh.extra_data_size);
	if (extra > QCOW2_MAX_SNAPSHOT_EXTRA) {
		*err = "snapshot extra data too large";
		return -EINVAL;
	}
	if (qi->version >= 3 && extra < QCOW2_SNAPSHOT_DISK_SIZE_END) {
		*err = "snapshot extra data too small";
		return -EINVAL;
	}

	si->l1_table_offset = be64_to_cpu(sh.l1_table_offset);
	si->l1_size = be32_to_cpu(sh.l1_size);
	si->id_len = be16_to_cpu(sh.id_str_size);
	si->name_len = be16_to_cpu(sh.name_size);
	/* At most 40 + 1024 + 2 * 65535: no overflow. */
	need = QCOW2_SNAPSHOT_HEADER_SIZE + extra + si->id_len + si->name_len;
	si->entry_len = (u32)qcow2_round_up8(need);
	/* The padding after the last entry need not be present. */
	if (len < need)
		return -ENODATA;

	if (((u64)si->l1_size << 3) > QCOW2_MAX_L1_BYTES) {
		*err = "snapshot L1 table too large";
		return -EINVAL;
	}
	ret = qcow2_check_table(qi, si->l1_table_offset, (u64)si->l1_size << 3,
				si->l1_size != 0, image_size,
				&qcow2_snap_l1_msgs, err);
	if (ret)
		return ret;

	if (extra >= QCOW2_SNAPSHOT_DISK_SIZE_END) {
		memcpy(&ex, p + QCOW2_SNAPSHOT_HEADER_SIZE,
		       QCOW2_SNAPSHOT_DISK_SIZE_END);
		si->disk_size = be64_to_cpu(ex.disk_size);
	}
	si->id = (const char *)p + QCOW2_SNAPSHOT_HEADER_SIZE + extra;
	si->name = si->id + si->id_len;
	return (int)si->entry_len;
}

u64 qcow2_refcount_get(const void *block, u32 refcount_order, u64 index)
{
	const u8 *b = block;
	u32 per_byte_shift, shift, mask;

	switch (refcount_order) {
	case 0:
	case 1:
	case 2:
		/* Sub-byte widths are packed LSB first. */
		per_byte_shift = 3 - refcount_order;
		shift = (u32)(index & ((1U << per_byte_shift) - 1)) << refcount_order;
		mask = (1U << (1U << refcount_order)) - 1;
		return (b[index >> per_byte_shift] >> shift) & mask;
	case 3:
		return b[index];
	case 4:
		return be16_to_cpu(((const __be16 *)block)[index]);
	case 5:
		return be32_to_cpu(((const __be32 *)block)[index]);
	case 6:
		return be64_to_cpu(((const __be64 *)block)[index]);
	default:
		return 0;
	}
}

void qcow2_refcount_set(void *block, u32 refcount_order, u64 index, u64 value)
{
	u8 *b = block;
	u32 per_byte_shift, shift, mask;

	switch (refcount_order) {
	case 0:
	case 1:
	case 2:
		per_byte_shift = 3 - refcount_order;
		shift = (u32)(index & ((1U << per_byte_shift) - 1)) << refcount_order;
		mask = (1U << (1U << refcount_order)) - 1;
		b[index >> per_byte_shift] &= (u8)~(mask << shift);
		b[index >> per_byte_shift] |= (u8)((value & mask) << shift);
		break;
	case 3:
		b[index] = (u8)value;
		break;
	case 4:
		((__be16 *)block)[index] = cpu_to_be16((u16)value);
		break;
	case 5:
		((__be32 *)block)[index] = cpu_to_be32((u32)value);
		break;
	case 6:
		((__be64 *)block)[index] = cpu_to_be64(value);
		break;
	default:
		break;
	}
}
