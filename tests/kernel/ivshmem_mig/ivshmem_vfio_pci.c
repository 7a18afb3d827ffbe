// SPDX-License-Identifier: GPL-2.0-only
/*
 * ivshmem_vfio_pci: a test variant driver over vfio-pci-core for QEMU's
 * ivshmem-plain PCI function (1af4:1110), with VFIO migration uAPI v2
 * (STOP_COPY, P2P, PRE_COPY with VFIO_MIG_GET_PRECOPY_INFO, MIG_DATA_SIZE).
 * For vfio-mig's kernel lab (tests/kernel/ivshmem_mig/README.md): it lets a
 * real vfio-pci-core function, its config virtualisation, resets and busy
 * rules judge the tool. It registers as the in-tree variant drivers do
 * (drivers/vfio/pci/qat/main.c, mlx5/main.c, hisilicon/, pds/): one
 * vfio_pci_core_device embedded in its own struct, .open_device =
 * vfio_pci_core_enable + vfio_pci_core_finish_enable, reset_done through
 * pci_error_handlers, migration files dropped in close_device.
 *
 * The device state: BAR0's INTRMASK register and the first mem_bytes of
 * BAR2 (the shared memory a workload writes through the BAR region; a
 * stopped device refuses those writes with EBUSY).
 *
 * It also binds (driver_override only) an SR-IOV virtual function: QEMU's
 * igb VF (82576 VF, 8086:10ca), which resets by FLR and whose memory enable,
 * BARs and INTx vfio-pci virtualises as for every VF. A VF has no memory
 * area: its device state is the six registers of its queue 0 that a driver
 * programs through BAR0 before it enables the queue, RDBAL, RDBAH, RDLEN,
 * TDBAL, TDBAH, TDLEN (VF offsets 0x2800.. and 0x3800..; QEMU's igbvf.c maps
 * them to the PF's queue registers of that VF, hw/net/igb_core.c stores them
 * with no side effect while the queue is disabled). They are the "area" of
 * the stream: one 24-byte chunk. QEMU's FLR (igb_core_vf_reset) only
 * disables the VF's queues and keeps them; a real VF's FLR resets them, so
 * reset_done and close_device clear them, as for ivshmem's memory.
 *
 * It also binds (driver_override only) QEMU's e1000e (8086:10d3), which has
 * MSI and MSI-X capabilities that ivshmem-plain lacks, with no device state
 * of its own (a header, an empty register record and the end): the function
 * is there for what vfio-pci-core does with config space, MSI and MSI-X
 * around a migration, not for e1000e's registers.
 *
 * Where the state is lost, as on a real function: at a reset through
 * pci_try_reset_function (first open, VFIO_DEVICE_RESET), whose reset_done
 * clears the memory area (QEMU's ivshmem resets its registers but not its
 * memory backend, which a real function's memory would not survive), and
 * at last close (vfio_pci_core_disable resets without reset_done: the
 * driver clears the area in close_device, as mlx5 and hisi_acc drop their
 * migration state there).
 *
 * The data stream (little endian): a 16-byte header {magic "IVMG",
 * version 1, mem_bytes, chunk_bytes}, then records of a 16-byte head
 * {type, offset, length, 0} and length bytes: type 1 a chunk of the memory
 * area, type 2 the registers (INTRMASK, 4 bytes), type 3 the end. PRE_COPY
 * streams the header and every chunk (initial bytes), then the chunks that
 * changed since they were read (dirty bytes); STOP_COPY adds the chunks
 * still changed, the registers and the end.
 *
 * Planted defects for tests, off by default (module parameters):
 *   trust_resume_len  a chunk record's offset and length from the resume
 *                     data are not checked against the memory area: a
 *                     hostile stream writes past the kernel's staging buffer
 *   keep_on_reset     reset_done and close_device do not clear the memory
 *                     area (state survives a reset, as no real function's does)
 */

#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/uaccess.h>
#include <linux/unaligned.h>
#include <linux/vfio_pci_core.h>
#include <linux/vmalloc.h>

#define IVMG_MAGIC 0x474d5649 /* "IVMG" */
#define IVMG_VERSION 1
#define IVMG_HEAD 16
#define IVMG_REC_CHUNK 1
#define IVMG_REC_REGS 2
#define IVMG_REC_END 3
#define IVSHMEM_INTRMASK 0x00
#define IGBVF_DEVICE 0x10ca
#define IGBVF_NREGS 6
/* The VF's queue 0 registers (82576 VF register map; hw/net/igbvf.c vf_to_pf_addr). */
static const u32 igbvf_regs[IGBVF_NREGS] = {
	0x2800, 0x2804, 0x2808,	/* RDBAL0, RDBAH0, RDLEN0 */
	0x3800, 0x3804, 0x3808,	/* TDBAL0, TDBAH0, TDLEN0 */
};

static unsigned int mem_bytes = 65536;
module_param(mem_bytes, uint, 0444);
MODULE_PARM_DESC(mem_bytes, "bytes of BAR2 that are device state (multiple of chunk_bytes, default 65536)");
static unsigned int chunk_bytes = 4096;
module_param(chunk_bytes, uint, 0444);
MODULE_PARM_DESC(chunk_bytes, "granule of the dirty tracking and of a chunk record (default 4096)");
static bool trust_resume_len;
module_param(trust_resume_len, bool, 0644);
MODULE_PARM_DESC(trust_resume_len, "DEFECT for tests: trust a chunk record's offset and length from resume data");
static bool keep_on_reset;
module_param(keep_on_reset, bool, 0644);
MODULE_PARM_DESC(keep_on_reset, "DEFECT for tests: keep the memory area across resets and the last close");

struct ivmg_file {
	struct file *filp;
	struct mutex lock;		/* the fields below */
	bool disabled;
	struct ivmg_device *ivdev;
	u8 *buf;			/* save: records not read yet are buf[rd, filled) */
	size_t cap, rd, filled;
	bool final;			/* save: the end record is in buf (STOP_COPY) */
	u64 initial_left;		/* save: PRE_COPY initial bytes not read yet */
	/* resume: the parser */
	u8 head[IVMG_HEAD];
	size_t head_got;
	bool have_header, have_end;
	u32 rec_type, rec_off, rec_len, rec_got;
	u8 regbuf[4];
	u32 intrmask;
	bool have_regs;
};

struct ivmg_device {
	struct vfio_pci_core_device core_device;
	struct mutex state_mutex;	/* mig_state and the files */
	spinlock_t reset_lock;		/* deferred_reset */
	bool deferred_reset;		/* reset_done came while state_mutex was held */
	enum vfio_device_mig_state mig_state;
	struct ivmg_file *saving_migf;
	struct ivmg_file *resuming_migf;
	void __iomem *regs;		/* ivshmem: BAR0 (INTRMASK) */
	void __iomem *mem;		/* ivshmem: BAR2, mem_len bytes */
	void __iomem *vfregs;		/* igb VF: BAR0; the area is igbvf_regs[] */
	unsigned int state_bar;		/* the BAR whose writes a stopped device refuses */
	u32 mem_len, chunk, nchunks;
	u8 *shadow;			/* what the reader of the save file has (PRE_COPY) */
	bool shadow_valid;
	u8 *scratch;			/* one copy of the area, read from the BAR */
	u8 *staging;			/* resume: the area to load */
};

static struct ivmg_device *ivmg_of(struct vfio_device *vdev)
{
	return container_of(vdev, struct ivmg_device, core_device.vdev);
}

static void ivmg_state_mutex_unlock(struct ivmg_device *ivdev);

/*
 * Runs fn with memory decoding on: the user may have turned it off. A real VF has no
 * memory enable of its own (the PF's VF MSE decodes its BARs; the bit is read-only
 * zero and the write below does nothing), but QEMU's igb VF honours the bit, which
 * vfio-pci passes through.
 */
static void ivmg_with_mem(struct ivmg_device *ivdev, void (*fn)(struct ivmg_device *))
{
	struct pci_dev *pdev = ivdev->core_device.pdev;
	u16 cmd;

	pci_read_config_word(pdev, PCI_COMMAND, &cmd);
	if (!(cmd & PCI_COMMAND_MEMORY))
		pci_write_config_word(pdev, PCI_COMMAND, cmd | PCI_COMMAND_MEMORY);
	fn(ivdev);
	if (!(cmd & PCI_COMMAND_MEMORY))
		pci_write_config_word(pdev, PCI_COMMAND, cmd);
}

static void ivmg_do_clear(struct ivmg_device *ivdev)
{
	int i;

	if (ivdev->vfregs) {
		for (i = 0; i < IGBVF_NREGS; i++)
			iowrite32(0, ivdev->vfregs + igbvf_regs[i]);
		return;
	}
	memset_io(ivdev->mem, 0, ivdev->mem_len);
}

static void ivmg_do_snapshot(struct ivmg_device *ivdev)
{
	int i;

	if (ivdev->vfregs) {
		for (i = 0; i < IGBVF_NREGS; i++)
			put_unaligned_le32(ioread32(ivdev->vfregs + igbvf_regs[i]), ivdev->scratch + 4 * i);
		return;
	}
	memcpy_fromio(ivdev->scratch, ivdev->mem, ivdev->mem_len);
}

static void ivmg_do_load(struct ivmg_device *ivdev)
{
	int i;

	if (ivdev->vfregs) {
		for (i = 0; i < IGBVF_NREGS; i++)
			iowrite32(get_unaligned_le32(ivdev->staging + 4 * i), ivdev->vfregs + igbvf_regs[i]);
		return;
	}
	memcpy_toio(ivdev->mem, ivdev->staging, ivdev->mem_len);
}

/* The device loses the memory area, or the VF its queue registers (a reset, the last close). */
static void ivmg_clear(struct ivmg_device *ivdev)
{
	if (keep_on_reset || (!ivdev->mem && !ivdev->vfregs))
		return;
	ivmg_with_mem(ivdev, ivmg_do_clear);
}

static size_t ivmg_max_size(struct ivmg_device *ivdev)
{
	return IVMG_HEAD + (size_t)ivdev->nchunks * (IVMG_HEAD + ivdev->chunk) +
	       IVMG_HEAD + 4 + IVMG_HEAD;
}

static void ivmg_put_head(u8 *p, u32 a, u32 b, u32 c, u32 d)
{
	put_unaligned_le32(a, p);
	put_unaligned_le32(b, p + 4);
	put_unaligned_le32(c, p + 8);
	put_unaligned_le32(d, p + 12);
}

/* Makes room for len more bytes at the end of buf (cap is twice the largest stream). */
static u8 *ivmg_room(struct ivmg_file *migf, size_t len)
{
	if (migf->rd) {
		memmove(migf->buf, migf->buf + migf->rd, migf->filled - migf->rd);
		migf->filled -= migf->rd;
		migf->rd = 0;
	}
	if (WARN_ON(migf->filled + len > migf->cap))
		return NULL;
	return migf->buf + migf->filled;
}

/* Chunks differing from the shadow (all when it is not valid); with emit, append their records. */
static u32 ivmg_dirty(struct ivmg_device *ivdev, struct ivmg_file *migf, bool emit)
{
	u32 i, n = 0, c = ivdev->chunk;
	u8 *p;

	if (!ivdev->mem_len) {	/* a function without a memory area (e1000e) */
		if (emit)
			ivdev->shadow_valid = true;
		return 0;
	}
	ivmg_with_mem(ivdev, ivmg_do_snapshot);
	for (i = 0; i < ivdev->nchunks; i++) {
		u8 *now = ivdev->scratch + (size_t)i * c, *had = ivdev->shadow + (size_t)i * c;

		if (ivdev->shadow_valid && !memcmp(now, had, c))
			continue;
		n++;
		if (!emit)
			continue;
		p = ivmg_room(migf, IVMG_HEAD + c);
		if (!p)
			break;
		ivmg_put_head(p, IVMG_REC_CHUNK, i * c, c, 0);
		memcpy(p + IVMG_HEAD, now, c);
		memcpy(had, now, c);
		migf->filled += IVMG_HEAD + c;
	}
	if (emit)
		ivdev->shadow_valid = true;
	return n;
}

static void ivmg_emit_final(struct ivmg_device *ivdev, struct ivmg_file *migf)
{
	u8 *p;

	ivmg_dirty(ivdev, migf, true);
	p = ivmg_room(migf, 2 * IVMG_HEAD + 4);
	if (!p)
		return;
	ivmg_put_head(p, IVMG_REC_REGS, 0, 4, 0);
	put_unaligned_le32(ivdev->regs ? ioread32(ivdev->regs + IVSHMEM_INTRMASK) : 0, p + IVMG_HEAD);
	ivmg_put_head(p + IVMG_HEAD + 4, IVMG_REC_END, 0, 0, 0);
	migf->filled += 2 * IVMG_HEAD + 4;
	migf->final = true;
}

static void ivmg_disable_fd(struct ivmg_file *migf)
{
	mutex_lock(&migf->lock);
	WRITE_ONCE(migf->disabled, true);
	migf->rd = migf->filled = 0;
	mutex_unlock(&migf->lock);
}

/*
 * Ends the data fds. From a reset (locked false) no migf->lock is taken: reset_done may
 * run under vfio-pci-core's memory_lock, and a reader holds migf->lock across
 * copy_to_user (mmap_lock), under which a fault on the BAR mmap takes memory_lock — the
 * second chain lockdep reported (tests/kernel/torture/README.md). The flag alone stops
 * the next read or write; one already inside finishes with the bytes it had.
 */
static void ivmg_disable_fds_how(struct ivmg_device *ivdev, bool locked)
{
	if (ivdev->resuming_migf) {
		if (locked)
			ivmg_disable_fd(ivdev->resuming_migf);
		else
			WRITE_ONCE(ivdev->resuming_migf->disabled, true);
		fput(ivdev->resuming_migf->filp);
		ivdev->resuming_migf = NULL;
	}
	if (ivdev->saving_migf) {
		if (locked)
			ivmg_disable_fd(ivdev->saving_migf);
		else
			WRITE_ONCE(ivdev->saving_migf->disabled, true);
		fput(ivdev->saving_migf->filp);
		ivdev->saving_migf = NULL;
	}
	ivdev->shadow_valid = false;
}

static void ivmg_disable_fds(struct ivmg_device *ivdev)
{
	ivmg_disable_fds_how(ivdev, true);
}

static int ivmg_release_file(struct inode *inode, struct file *filp)
{
	struct ivmg_file *migf = filp->private_data;

	ivmg_disable_fd(migf);
	mutex_destroy(&migf->lock);
	kvfree(migf->buf);
	kfree(migf);
	return 0;
}

static ssize_t ivmg_save_read(struct file *filp, char __user *buf, size_t len, loff_t *pos)
{
	struct ivmg_file *migf = filp->private_data;
	ssize_t done;

	if (pos)
		return -ESPIPE;
	mutex_lock(&migf->lock);
	if (READ_ONCE(migf->disabled)) {
		done = -ENODEV;
		goto out;
	}
	if (migf->rd == migf->filled && !migf->final) {
		/* PRE_COPY: what changed since it was read, else the temporary end of stream. */
		ivmg_dirty(migf->ivdev, migf, true);
		if (migf->rd == migf->filled) {
			done = -ENOMSG;
			goto out;
		}
	}
	len = min_t(size_t, len, migf->filled - migf->rd);
	if (copy_to_user(buf, migf->buf + migf->rd, len)) {
		done = -EFAULT;
		goto out;
	}
	migf->rd += len;
	migf->initial_left -= min_t(u64, migf->initial_left, len);
	done = len;
out:
	mutex_unlock(&migf->lock);
	return done;
}

static long ivmg_precopy_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct ivmg_file *migf = filp->private_data;
	struct ivmg_device *ivdev = migf->ivdev;
	struct vfio_precopy_info info;
	unsigned long minsz = offsetofend(struct vfio_precopy_info, dirty_bytes);
	int ret = 0;

	if (cmd != VFIO_MIG_GET_PRECOPY_INFO)
		return -ENOTTY;
	if (copy_from_user(&info, (void __user *)arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz)
		return -EINVAL;

	mutex_lock(&ivdev->state_mutex);
	if (ivdev->mig_state != VFIO_DEVICE_STATE_PRE_COPY &&
	    ivdev->mig_state != VFIO_DEVICE_STATE_PRE_COPY_P2P) {
		ivmg_state_mutex_unlock(ivdev);
		return -EINVAL;
	}
	mutex_lock(&migf->lock);
	if (READ_ONCE(migf->disabled)) {
		ret = -ENODEV;
		goto out;
	}
	info.initial_bytes = migf->initial_left;
	/* Records buffered but not read, plus the chunks changed since they were read. */
	info.dirty_bytes = migf->filled - migf->rd - migf->initial_left +
			   (u64)ivmg_dirty(ivdev, migf, false) * (IVMG_HEAD + ivdev->chunk);
out:
	mutex_unlock(&migf->lock);
	ivmg_state_mutex_unlock(ivdev);
	if (ret)
		return ret;
	return copy_to_user((void __user *)arg, &info, minsz) ? -EFAULT : 0;
}

static const struct file_operations ivmg_save_fops = {
	.owner = THIS_MODULE,
	.read = ivmg_save_read,
	.unlocked_ioctl = ivmg_precopy_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.release = ivmg_release_file,
};

/* A complete 16-byte head of resume data, checked; 0 or -EINVAL. */
static int ivmg_resume_head(struct ivmg_device *ivdev, struct ivmg_file *migf)
{
	const u8 *h = migf->head;
	u32 a = get_unaligned_le32(h), b = get_unaligned_le32(h + 4);
	u32 c = get_unaligned_le32(h + 8);

	if (!migf->have_header) {
		if (a != IVMG_MAGIC || b != IVMG_VERSION || c != ivdev->mem_len ||
		    get_unaligned_le32(h + 12) != ivdev->chunk)
			return -EINVAL;
		migf->have_header = true;
		return 0;
	}
	if (migf->have_end)
		return -EINVAL;
	migf->rec_type = a;
	migf->rec_off = b;
	migf->rec_len = c;
	migf->rec_got = 0;
	switch (a) {
	case IVMG_REC_CHUNK:
		/* The planted defect: trust_resume_len skips this check. */
		if (!trust_resume_len &&
		    (c > ivdev->chunk || b > ivdev->mem_len || c > ivdev->mem_len - b))
			return -EINVAL;
		return 0;
	case IVMG_REC_REGS:
		return c == 4 ? 0 : -EINVAL;
	case IVMG_REC_END:
		if (c)
			return -EINVAL;
		migf->have_end = true;
		return 0;
	default:
		return -EINVAL;
	}
}

static ssize_t ivmg_resume_write(struct file *filp, const char __user *buf, size_t len, loff_t *pos)
{
	struct ivmg_file *migf = filp->private_data;
	struct ivmg_device *ivdev = migf->ivdev;
	size_t used = 0, n;
	ssize_t ret;

	if (pos)
		return -ESPIPE;
	mutex_lock(&migf->lock);
	if (READ_ONCE(migf->disabled)) {
		ret = -ENODEV;
		goto out;
	}
	while (used < len) {
		if (!migf->rec_type) {
			/* a 16-byte head: the stream header, then each record's */
			n = min_t(size_t, len - used, IVMG_HEAD - migf->head_got);
			if (copy_from_user(migf->head + migf->head_got, buf + used, n)) {
				ret = -EFAULT;
				goto out;
			}
			migf->head_got += n;
			used += n;
			if (migf->head_got < IVMG_HEAD)
				break;
			migf->head_got = 0;
			ret = ivmg_resume_head(ivdev, migf);
			if (ret)
				goto out;
			if (!migf->rec_len)
				migf->rec_type = 0;
			continue;
		}
		n = min_t(size_t, len - used, migf->rec_len - migf->rec_got);
		if (migf->rec_type == IVMG_REC_CHUNK) {
			if (copy_from_user(ivdev->staging + migf->rec_off + migf->rec_got, buf + used, n)) {
				ret = -EFAULT;
				goto out;
			}
		} else if (copy_from_user(migf->regbuf + migf->rec_got, buf + used, n)) {
			ret = -EFAULT;
			goto out;
		}
		migf->rec_got += n;
		used += n;
		if (migf->rec_got < migf->rec_len)
			continue;
		if (migf->rec_type == IVMG_REC_REGS) {
			migf->intrmask = get_unaligned_le32(migf->regbuf);
			migf->have_regs = true;
		}
		migf->rec_type = 0;
	}
	ret = used;
out:
	mutex_unlock(&migf->lock);
	return ret;
}

static const struct file_operations ivmg_resume_fops = {
	.owner = THIS_MODULE,
	.write = ivmg_resume_write,
	.release = ivmg_release_file,
};

static struct ivmg_file *ivmg_new_file(struct ivmg_device *ivdev, bool save)
{
	struct ivmg_file *migf;
	int ret;

	migf = kzalloc(sizeof(*migf), GFP_KERNEL);
	if (!migf)
		return ERR_PTR(-ENOMEM);
	if (save) {
		migf->cap = 2 * ivmg_max_size(ivdev);
		migf->buf = kvmalloc(migf->cap, GFP_KERNEL);
		if (!migf->buf) {
			kfree(migf);
			return ERR_PTR(-ENOMEM);
		}
	}
	migf->filp = anon_inode_getfile("ivshmem_vfio_mig", save ? &ivmg_save_fops : &ivmg_resume_fops,
					migf, save ? O_RDONLY : O_WRONLY);
	ret = PTR_ERR_OR_ZERO(migf->filp);
	if (ret) {
		kvfree(migf->buf);
		kfree(migf);
		return ERR_PTR(ret);
	}
	stream_open(migf->filp->f_inode, migf->filp);
	mutex_init(&migf->lock);
	migf->ivdev = ivdev;
	return migf;
}

static struct file *ivmg_start_save(struct ivmg_device *ivdev, bool pre_copy)
{
	struct ivmg_file *migf = ivmg_new_file(ivdev, true);

	if (IS_ERR(migf))
		return ERR_CAST(migf);
	ivmg_put_head(migf->buf, IVMG_MAGIC, IVMG_VERSION, ivdev->mem_len, ivdev->chunk);
	migf->filled = IVMG_HEAD;
	ivdev->shadow_valid = false;
	if (pre_copy) {
		ivmg_dirty(ivdev, migf, true);
		migf->initial_left = migf->filled;
	} else {
		ivmg_emit_final(ivdev, migf);
	}
	get_file(migf->filp);
	ivdev->saving_migf = migf;
	return migf->filp;
}

static int ivmg_load(struct ivmg_device *ivdev, struct ivmg_file *migf)
{
	int ret = 0;

	mutex_lock(&migf->lock);
	/* A stream cut short (no end record, or a record not complete) loads nothing. */
	if (!migf->have_end || !migf->have_regs || migf->head_got || migf->rec_type) {
		ret = -EINVAL;
		goto out;
	}
	if (ivdev->mem_len)
		ivmg_with_mem(ivdev, ivmg_do_load);
	if (ivdev->regs)
		iowrite32(migf->intrmask, ivdev->regs + IVSHMEM_INTRMASK);
out:
	mutex_unlock(&migf->lock);
	return ret;
}

static struct file *ivmg_step(struct ivmg_device *ivdev, u32 new)
{
	u32 cur = ivdev->mig_state;

	/* No DMA: the P2P states change nothing. */
	if ((cur == VFIO_DEVICE_STATE_RUNNING && new == VFIO_DEVICE_STATE_RUNNING_P2P) ||
	    (cur == VFIO_DEVICE_STATE_RUNNING_P2P && new == VFIO_DEVICE_STATE_RUNNING) ||
	    (cur == VFIO_DEVICE_STATE_PRE_COPY && new == VFIO_DEVICE_STATE_PRE_COPY_P2P) ||
	    (cur == VFIO_DEVICE_STATE_PRE_COPY_P2P && new == VFIO_DEVICE_STATE_PRE_COPY) ||
	    (cur == VFIO_DEVICE_STATE_RUNNING_P2P && new == VFIO_DEVICE_STATE_STOP) ||
	    (cur == VFIO_DEVICE_STATE_STOP && new == VFIO_DEVICE_STATE_RUNNING_P2P))
		return NULL;

	if (cur == VFIO_DEVICE_STATE_STOP && new == VFIO_DEVICE_STATE_STOP_COPY)
		return ivmg_start_save(ivdev, false);

	if ((cur == VFIO_DEVICE_STATE_RUNNING && new == VFIO_DEVICE_STATE_PRE_COPY) ||
	    (cur == VFIO_DEVICE_STATE_RUNNING_P2P && new == VFIO_DEVICE_STATE_PRE_COPY_P2P))
		return ivmg_start_save(ivdev, true);

	if (cur == VFIO_DEVICE_STATE_PRE_COPY_P2P && new == VFIO_DEVICE_STATE_STOP_COPY) {
		struct ivmg_file *migf = ivdev->saving_migf;

		if (!migf)
			return ERR_PTR(-EINVAL);
		mutex_lock(&migf->lock);
		migf->initial_left = 0;
		ivmg_emit_final(ivdev, migf);
		mutex_unlock(&migf->lock);
		return NULL;
	}

	if (cur == VFIO_DEVICE_STATE_STOP && new == VFIO_DEVICE_STATE_RESUMING) {
		struct ivmg_file *migf = ivmg_new_file(ivdev, false);

		if (IS_ERR(migf))
			return ERR_CAST(migf);
		if (ivdev->staging)
			memset(ivdev->staging, 0, ivdev->mem_len);
		get_file(migf->filp);
		ivdev->resuming_migf = migf;
		return migf->filp;
	}

	if (cur == VFIO_DEVICE_STATE_RESUMING && new == VFIO_DEVICE_STATE_STOP) {
		int ret = ivmg_load(ivdev, ivdev->resuming_migf);

		if (ret)
			return ERR_PTR(ret);
		ivmg_disable_fds(ivdev);
		return NULL;
	}

	if ((cur == VFIO_DEVICE_STATE_STOP_COPY && new == VFIO_DEVICE_STATE_STOP) ||
	    (cur == VFIO_DEVICE_STATE_PRE_COPY && new == VFIO_DEVICE_STATE_RUNNING) ||
	    (cur == VFIO_DEVICE_STATE_PRE_COPY_P2P && new == VFIO_DEVICE_STATE_RUNNING_P2P)) {
		ivmg_disable_fds(ivdev);
		return NULL;
	}

	/* vfio_mig_get_next_state() uses no other arc */
	WARN_ON(true);
	return ERR_PTR(-EINVAL);
}

static struct file *ivmg_set_state(struct vfio_device *vdev, enum vfio_device_mig_state new_state)
{
	struct ivmg_device *ivdev = ivmg_of(vdev);
	enum vfio_device_mig_state next;
	struct file *res = NULL;
	int ret;

	mutex_lock(&ivdev->state_mutex);
	while (new_state != ivdev->mig_state) {
		ret = vfio_mig_get_next_state(vdev, ivdev->mig_state, new_state, &next);
		if (ret) {
			res = ERR_PTR(ret);
			break;
		}
		res = ivmg_step(ivdev, next);
		if (IS_ERR(res))
			break;
		ivdev->mig_state = next;
		if (WARN_ON(res && new_state != ivdev->mig_state)) {
			fput(res);
			res = ERR_PTR(-EINVAL);
			break;
		}
	}
	ivmg_state_mutex_unlock(ivdev);
	return res;
}

static int ivmg_get_state(struct vfio_device *vdev, enum vfio_device_mig_state *curr)
{
	struct ivmg_device *ivdev = ivmg_of(vdev);

	mutex_lock(&ivdev->state_mutex);
	*curr = ivdev->mig_state;
	ivmg_state_mutex_unlock(ivdev);
	return 0;
}

static int ivmg_get_data_size(struct vfio_device *vdev, unsigned long *stop_copy_length)
{
	*stop_copy_length = ivmg_max_size(ivmg_of(vdev));
	return 0;
}

static const struct vfio_migration_ops ivmg_mig_ops = {
	.migration_set_state = ivmg_set_state,
	.migration_get_state = ivmg_get_state,
	.migration_get_data_size = ivmg_get_data_size,
};

static int ivmg_open_device(struct vfio_device *vdev)
{
	struct ivmg_device *ivdev = ivmg_of(vdev);
	int ret;

	/* Resets the function (pci_try_reset_function): reset_done below clears the area. */
	ret = vfio_pci_core_enable(&ivdev->core_device);
	if (ret)
		return ret;
	ivdev->mig_state = VFIO_DEVICE_STATE_RUNNING;
	vfio_pci_core_finish_enable(&ivdev->core_device);
	return 0;
}

static void ivmg_close_device(struct vfio_device *vdev)
{
	struct ivmg_device *ivdev = ivmg_of(vdev);

	mutex_lock(&ivdev->state_mutex);
	ivmg_disable_fds(ivdev);
	ivdev->mig_state = VFIO_DEVICE_STATE_RUNNING;
	/* vfio_pci_core_disable resets the function without reset_done: drop the state here. */
	ivmg_clear(ivdev);
	ivmg_state_mutex_unlock(ivdev);
	vfio_pci_core_close_device(vdev);
}

/*
 * reset_done runs with vfio-pci-core's memory_lock held (vfio_pci_core_ioctl's
 * VFIO_DEVICE_RESET, the first open), and a BAR access through the device fd takes
 * state_mutex (ivmg_write) and then memory_lock (vfio_pci_bar_rw): taking state_mutex
 * here would be the circular locking lockdep reported (check --torture on the
 * sanitizer kernel, tests/kernel/torture/). So, as mlx5 (mlx5vf_pci_aer_reset_done)
 * and hisi_acc do: reset_done only marks the reset when state_mutex is taken, and
 * whoever holds it applies the reset as it unlocks.
 */
static void ivmg_state_mutex_unlock(struct ivmg_device *ivdev)
{
again:
	spin_lock(&ivdev->reset_lock);
	if (ivdev->deferred_reset) {
		ivdev->deferred_reset = false;
		spin_unlock(&ivdev->reset_lock);
		ivdev->mig_state = VFIO_DEVICE_STATE_RUNNING;
		ivmg_disable_fds_how(ivdev, false);
		ivmg_clear(ivdev);
		goto again;
	}
	mutex_unlock(&ivdev->state_mutex);
	spin_unlock(&ivdev->reset_lock);
}

static void ivmg_reset_done(struct pci_dev *pdev)
{
	struct vfio_pci_core_device *core = pci_get_drvdata(pdev);
	struct ivmg_device *ivdev = container_of(core, struct ivmg_device, core_device);

	spin_lock(&ivdev->reset_lock);
	ivdev->deferred_reset = true;
	if (!mutex_trylock(&ivdev->state_mutex)) {
		spin_unlock(&ivdev->reset_lock);
		return;
	}
	spin_unlock(&ivdev->reset_lock);
	ivmg_state_mutex_unlock(ivdev);
}

static int ivmg_init_dev(struct vfio_device *vdev)
{
	struct ivmg_device *ivdev = ivmg_of(vdev);
	struct pci_dev *pdev = to_pci_dev(vdev->dev);
	resource_size_t bar2 = pci_resource_len(pdev, 2);
	bool ivshmem = pdev->vendor == PCI_VENDOR_ID_REDHAT_QUMRANET && pdev->device == 0x1110;
	bool igbvf = pdev->vendor == PCI_VENDOR_ID_INTEL && pdev->device == IGBVF_DEVICE;
	int ret;

	if (!chunk_bytes || chunk_bytes > SZ_1M || !mem_bytes || mem_bytes % chunk_bytes ||
	    (ivshmem && (mem_bytes > bar2 || pci_resource_len(pdev, 0) < 16)))
		return -EINVAL;
	vdev->migration_flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
	vdev->mig_ops = &ivmg_mig_ops;
	ret = vfio_pci_core_init_dev(vdev);
	if (ret)
		return ret;
	mutex_init(&ivdev->state_mutex);
	spin_lock_init(&ivdev->reset_lock);
	ivdev->chunk = chunk_bytes;
	ivdev->state_bar = VFIO_PCI_BAR2_REGION_INDEX;
	if (igbvf) {
		/* The queue registers, one chunk: dirty tracking compares them as a whole. */
		if (pci_resource_len(pdev, 0) < igbvf_regs[IGBVF_NREGS - 1] + 4)
			return -EINVAL;
		ivdev->state_bar = VFIO_PCI_BAR0_REGION_INDEX;
		ivdev->mem_len = ivdev->chunk = 4 * IGBVF_NREGS;
		ivdev->nchunks = 1;
		ivdev->shadow = vzalloc(ivdev->mem_len);
		ivdev->scratch = vzalloc(ivdev->mem_len);
		ivdev->staging = vzalloc(ivdev->mem_len);
		ivdev->vfregs = pci_iomap(pdev, 0, igbvf_regs[IGBVF_NREGS - 1] + 4);
		if (!ivdev->shadow || !ivdev->scratch || !ivdev->staging || !ivdev->vfregs)
			return -ENOMEM; /* the release callback frees what was taken */
		return 0;
	}
	if (!ivshmem)
		return 0;	/* e1000e: no memory area, no register */
	ivdev->mem_len = mem_bytes;
	ivdev->nchunks = mem_bytes / chunk_bytes;
	ivdev->shadow = vzalloc(mem_bytes);
	ivdev->scratch = vzalloc(mem_bytes);
	ivdev->staging = vzalloc(mem_bytes);
	ivdev->regs = pci_iomap(pdev, 0, 16);
	ivdev->mem = pci_iomap(pdev, 2, mem_bytes);
	if (!ivdev->shadow || !ivdev->scratch || !ivdev->staging || !ivdev->regs || !ivdev->mem)
		return -ENOMEM; /* the release callback frees what was taken */
	return 0;
}

static void ivmg_release_dev(struct vfio_device *vdev)
{
	struct ivmg_device *ivdev = ivmg_of(vdev);
	struct pci_dev *pdev = to_pci_dev(vdev->dev);

	if (ivdev->mem)
		pci_iounmap(pdev, ivdev->mem);
	if (ivdev->regs)
		pci_iounmap(pdev, ivdev->regs);
	if (ivdev->vfregs)
		pci_iounmap(pdev, ivdev->vfregs);
	vfree(ivdev->shadow);
	vfree(ivdev->scratch);
	vfree(ivdev->staging);
	mutex_destroy(&ivdev->state_mutex);
	vfio_pci_core_release_dev(vdev);
}

/*
 * A stopped device (STOP, STOP_COPY, RESUMING) takes no writes to the BAR that holds
 * its state (ivshmem BAR2, the igb VF's BAR0) through the BAR region (-EBUSY): what
 * the save streamed stays the device's state. Writes through an mmap of that BAR are
 * not seen here, and not stopped.
 */
static ssize_t ivmg_write(struct vfio_device *vdev, const char __user *buf, size_t count, loff_t *ppos)
{
	struct ivmg_device *ivdev = ivmg_of(vdev);
	ssize_t ret;

	if (VFIO_PCI_OFFSET_TO_INDEX(*ppos) != ivdev->state_bar)
		return vfio_pci_core_write(vdev, buf, count, ppos);
	mutex_lock(&ivdev->state_mutex);
	if (ivdev->mig_state == VFIO_DEVICE_STATE_STOP || ivdev->mig_state == VFIO_DEVICE_STATE_STOP_COPY ||
	    ivdev->mig_state == VFIO_DEVICE_STATE_RESUMING)
		ret = -EBUSY;
	else
		ret = vfio_pci_core_write(vdev, buf, count, ppos);
	ivmg_state_mutex_unlock(ivdev);
	return ret;
}

static const struct vfio_device_ops ivmg_ops = {
	.name = "ivshmem-vfio-pci",
	.init = ivmg_init_dev,
	.release = ivmg_release_dev,
	.open_device = ivmg_open_device,
	.close_device = ivmg_close_device,
	.ioctl = vfio_pci_core_ioctl,
	.device_feature = vfio_pci_core_ioctl_feature,
	.read = vfio_pci_core_read,
	.write = ivmg_write,
	.mmap = vfio_pci_core_mmap,
	.request = vfio_pci_core_request,
	.match = vfio_pci_core_match,
	.bind_iommufd = vfio_iommufd_physical_bind,
	.unbind_iommufd = vfio_iommufd_physical_unbind,
	.attach_ioas = vfio_iommufd_physical_attach_ioas,
	.detach_ioas = vfio_iommufd_physical_detach_ioas,
};

static int ivmg_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct ivmg_device *ivdev;
	int ret;

	ivdev = vfio_alloc_device(ivmg_device, core_device.vdev, &pdev->dev, &ivmg_ops);
	if (IS_ERR(ivdev))
		return PTR_ERR(ivdev);
	dev_set_drvdata(&pdev->dev, &ivdev->core_device);
	ret = vfio_pci_core_register_device(&ivdev->core_device);
	if (ret) {
		vfio_put_device(&ivdev->core_device.vdev);
		return ret;
	}
	return 0;
}

static void ivmg_remove(struct pci_dev *pdev)
{
	struct vfio_pci_core_device *core = dev_get_drvdata(&pdev->dev);

	vfio_pci_core_unregister_device(core);
	vfio_put_device(&core->vdev);
}

static const struct pci_device_id ivmg_table[] = {
	{ PCI_DRIVER_OVERRIDE_DEVICE_VFIO(PCI_VENDOR_ID_REDHAT_QUMRANET, 0x1110) }, /* ivshmem */
	{ PCI_DRIVER_OVERRIDE_DEVICE_VFIO(PCI_VENDOR_ID_INTEL, 0x10d3) }, /* e1000e: config, MSI, MSI-X only */
	{ PCI_DRIVER_OVERRIDE_DEVICE_VFIO(PCI_VENDOR_ID_INTEL, IGBVF_DEVICE) }, /* igb VF: queue 0 registers */
	{}
};
MODULE_DEVICE_TABLE(pci, ivmg_table);

static const struct pci_error_handlers ivmg_err_handlers = {
	.reset_done = ivmg_reset_done,
	.error_detected = vfio_pci_core_aer_err_detected,
};

static struct pci_driver ivmg_driver = {
	.name = KBUILD_MODNAME,
	.id_table = ivmg_table,
	.probe = ivmg_probe,
	.remove = ivmg_remove,
	.err_handler = &ivmg_err_handlers,
	.driver_managed_dma = true,
};
module_pci_driver(ivmg_driver);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vfio-mig test: ivshmem-plain and the igb VF over vfio-pci-core with VFIO migration uAPI v2");
