/*
 * ktailor guest /init: proves from inside a booted guest that the kernel has what its target promises.
 *
 * Output is one machine-readable line per fact, parsed by src/ktailor/guest/probes.py:
 *   KTAILOR-INIT boottime_ns=<ns> pid=<pid>          first act: CLOCK_BOOTTIME, the clock /proc/uptime reads
 *   KTAILOR-UPTIME seconds=<s>                        /proc/uptime itself (10 ms steps)
 *   KTAILOR-KMSG us=<printk time> text=<message>      kernel lines the host needs even under `quiet`
 *   KTAILOR-MEM total_kb=<n> available_kb=<n> used_kb=<n>
 *   KTAILOR-CMDLINE text=<the command line the kernel ran with, /proc/cmdline>
 *   KTAILOR-VULN name=<file> state=<text>             each /sys/devices/system/cpu/vulnerabilities/<file>
 *   KTAILOR-PROBE name=<name> status=pass|fail|skip detail=<free text to end of line>
 *   KTAILOR-DONE probes=<n> failed=<n>
 *
 * The probes to run come from the environment variable ktailor_probes (comma-separated; the kernel
 * hands unknown `name=value` command-line words to init as environment).
 * ktailor_vsock_cid=<cid> says the VM has a vsock device, so the guest must see that CID.
 * ktailor_9p_token=<t> / ktailor_virtiofs_token=<t>: the host shares a directory whose file `token` holds t.
 *   KTAILOR-AWAIT name=<what>                         init waits for the host to act (cad: send Ctrl-Alt-Del)
 *
 * Only as PID 1 does init mount anything, create cgroups or reboot: run on a host (the unit tests do)
 * it only looks, reports side-effecting steps as skipped, and exits.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <linux/if_link.h>
#include <linux/if_vlan.h>
#include <linux/loop.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nf_tables_compat.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <linux/veth.h>
#include <linux/dm-ioctl.h>
#include <linux/filter.h>
#include <linux/if_alg.h>
#include <linux/seccomp.h>
#include <linux/vm_sockets.h>

enum status { PASS, FAIL, SKIP };
static const char *const status_names[] = {"pass", "fail", "skip"};

static int pid1;
static char detail[512];

static enum status say(enum status status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	return status;
}

static int read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return (int)n;
}

static int exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* Whether `word` appears in `text` as a whole whitespace-separated word. */
static int has_word(const char *text, const char *word)
{
	size_t len = strlen(word);
	for (const char *p = text; (p = strstr(p, word)); p += len) {
		int starts = p == text || p[-1] == ' ' || p[-1] == '\t' || p[-1] == '\n';
		int ends = p[len] == '\0' || p[len] == ' ' || p[len] == '\n' || p[len] == '\t';
		if (starts && ends)
			return 1;
	}
	return 0;
}

/* Run fn in a child so that what it changes (namespaces, seccomp) does not stick to init. */
static int in_child(int (*fn)(long), long arg)
{
	pid_t pid = fork();
	if (pid < 0)
		return errno;
	if (pid == 0)
		_exit(fn(arg));
	int wstatus;
	if (waitpid(pid, &wstatus, 0) < 0)
		return errno;
	return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 255;
}

static const char *mount_source_of(const char *target, const char *fstype)
{
	static char mounts[16384];
	static char found[256];
	if (read_file("/proc/mounts", mounts, sizeof(mounts)) < 0)
		return NULL;
	char *save = NULL;
	for (char *line = strtok_r(mounts, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char source[128], mnt[128], type[64];
		if (sscanf(line, "%127s %127s %63s", source, mnt, type) == 3 && strcmp(mnt, target) == 0 &&
		    (!fstype || strcmp(type, fstype) == 0)) {
			snprintf(found, sizeof(found), "%s %s", source, type);
			return found;
		}
	}
	return NULL;
}

/* ---- probes ---------------------------------------------------------------------------------- */

static enum status probe_vsock(const char *arg)
{
	(void)arg;
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return say(FAIL, "socket(AF_VSOCK): %s", strerror(errno));
	close(fd);
	/* The socket family alone does not prove the virtio transport: its driver must be registered. */
	if (!exists("/sys/bus/virtio/drivers/vmw_vsock_virtio_transport"))
		return say(FAIL, "AF_VSOCK exists but the virtio vsock transport driver is not registered");
	const char *want = getenv("ktailor_vsock_cid");
	if (!want || !*want)
		return say(PASS, "AF_VSOCK socket created; virtio transport registered; no vsock device in this VM");
	unsigned int cid = 0;
	int dev = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
	if (dev < 0 || ioctl(dev, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) < 0)
		return say(FAIL, "cannot read the local CID from /dev/vsock: %s", strerror(errno));
	close(dev);
	if (cid != (unsigned int)strtoul(want, NULL, 10))
		return say(FAIL, "local CID is %u, the VM's vsock device has %s", cid, want);
	return say(PASS, "AF_VSOCK socket created; local CID %u", cid);
}

static enum status probe_dm_crypt(const char *arg)
{
	(void)arg;
	static union {
		struct dm_ioctl io;
		char bytes[16384];
	} buf;
	int fd = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return say(FAIL, "/dev/mapper/control: %s", strerror(errno));
	memset(&buf, 0, sizeof(buf));
	buf.io.version[0] = DM_VERSION_MAJOR;
	buf.io.data_size = sizeof(buf);
	buf.io.data_start = sizeof(struct dm_ioctl);
	int rc = ioctl(fd, DM_LIST_VERSIONS, &buf);
	int saved = errno;
	close(fd);
	if (rc < 0)
		return say(FAIL, "DM_LIST_VERSIONS: %s", strerror(saved));
	uint32_t offset = buf.io.data_start;
	while (offset + sizeof(struct dm_target_versions) < sizeof(buf)) {
		struct dm_target_versions *target = (struct dm_target_versions *)(buf.bytes + offset);
		if (strcmp(target->name, "crypt") == 0)
			return say(PASS, "device-mapper target crypt v%u.%u.%u", target->version[0],
				   target->version[1], target->version[2]);
		if (!target->next)
			break;
		offset += target->next;
	}
	return say(FAIL, "device-mapper works but its target list has no crypt");
}

/* Bind an AF_ALG socket to an algorithm and get an operation socket from it. */
static int alg_open(const char *type, const char *name, const void *key, int keylen, int *tfm)
{
	struct sockaddr_alg sa = {.salg_family = AF_ALG};
	strncpy((char *)sa.salg_type, type, sizeof(sa.salg_type) - 1);
	strncpy((char *)sa.salg_name, name, sizeof(sa.salg_name) - 1);
	*tfm = socket(AF_ALG, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (*tfm < 0)
		return say(FAIL, "socket(AF_ALG): %s", strerror(errno)), -1;
	if (bind(*tfm, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return say(FAIL, "bind AF_ALG %s %s: %s", type, name, strerror(errno)), -1;
	if (key && setsockopt(*tfm, SOL_ALG, ALG_SET_KEY, key, keylen) < 0)
		return say(FAIL, "ALG_SET_KEY on %s: %s", name, strerror(errno)), -1;
	int op = accept4(*tfm, NULL, 0, SOCK_CLOEXEC);
	if (op < 0)
		return say(FAIL, "accept on %s: %s", name, strerror(errno)), -1;
	return op;
}

static enum status probe_xts_aes(const char *arg)
{
	(void)arg;
	/* IEEE 1619 XTS-AES vector 2 (also the kernel's own testmgr vector). */
	unsigned char key[32], iv[16] = {0x33, 0x33, 0x33, 0x33, 0x33}, text[32], out[32];
	static const unsigned char expected[32] = {
		0xc4, 0x54, 0x18, 0x5e, 0x6a, 0x16, 0x93, 0x6e, 0x39, 0x33, 0x40, 0x38, 0xac, 0xef, 0x83, 0x8b,
		0xfb, 0x18, 0x6f, 0xff, 0x74, 0x80, 0xad, 0xc4, 0x28, 0x93, 0x82, 0xec, 0xd6, 0xd3, 0x94, 0xf0};
	memset(key, 0x11, 16);
	memset(key + 16, 0x22, 16);
	memset(text, 0x44, sizeof(text));
	int tfm = -1, op = alg_open("skcipher", "xts(aes)", key, sizeof(key), &tfm);
	if (op < 0)
		return close(tfm), FAIL;

	char control[CMSG_SPACE(sizeof(uint32_t)) + CMSG_SPACE(sizeof(struct af_alg_iv) + sizeof(iv))] = {0};
	struct iovec iov = {.iov_base = text, .iov_len = sizeof(text)};
	struct msghdr msg = {.msg_control = control, .msg_controllen = sizeof(control), .msg_iov = &iov, .msg_iovlen = 1};
	struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_ALG;
	cmsg->cmsg_type = ALG_SET_OP;
	cmsg->cmsg_len = CMSG_LEN(sizeof(uint32_t));
	*(uint32_t *)CMSG_DATA(cmsg) = ALG_OP_ENCRYPT;
	cmsg = CMSG_NXTHDR(&msg, cmsg);
	cmsg->cmsg_level = SOL_ALG;
	cmsg->cmsg_type = ALG_SET_IV;
	cmsg->cmsg_len = CMSG_LEN(sizeof(struct af_alg_iv) + sizeof(iv));
	struct af_alg_iv *alg_iv = (struct af_alg_iv *)CMSG_DATA(cmsg);
	alg_iv->ivlen = sizeof(iv);
	memcpy(alg_iv->iv, iv, sizeof(iv));

	enum status result;
	if (sendmsg(op, &msg, 0) != (ssize_t)sizeof(text))
		result = say(FAIL, "sendmsg to xts(aes): %s", strerror(errno));
	else if (read(op, out, sizeof(out)) != (ssize_t)sizeof(out))
		result = say(FAIL, "read from xts(aes): %s", strerror(errno));
	else if (memcmp(out, expected, sizeof(out)) != 0)
		result = say(FAIL, "xts(aes) encrypted the IEEE 1619 vector to the wrong ciphertext");
	else
		result = say(PASS, "xts(aes) via AF_ALG matches IEEE 1619 vector 2");
	close(op);
	close(tfm);
	return result;
}

static enum status probe_sha256(const char *arg)
{
	(void)arg;
	static const unsigned char expected[32] = {
		0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
		0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
	unsigned char out[32];
	int tfm = -1, op = alg_open("hash", "sha256", NULL, 0, &tfm);
	if (op < 0)
		return close(tfm), FAIL;
	enum status result;
	if (write(op, "abc", 3) != 3)
		result = say(FAIL, "write to sha256: %s", strerror(errno));
	else if (read(op, out, sizeof(out)) != (ssize_t)sizeof(out))
		result = say(FAIL, "read from sha256: %s", strerror(errno));
	else if (memcmp(out, expected, sizeof(out)) != 0)
		result = say(FAIL, "sha256(\"abc\") came out wrong");
	else
		result = say(PASS, "sha256 via AF_ALG matches the FIPS 180-2 \"abc\" vector");
	close(op);
	close(tfm);
	return result;
}

static enum status probe_filesystem(const char *fs)
{
	char text[4096];
	if (read_file("/proc/filesystems", text, sizeof(text)) < 0)
		return say(FAIL, "/proc/filesystems: %s", strerror(errno));
	if (!has_word(text, fs))
		return say(FAIL, "%s is not in /proc/filesystems", fs);
	return say(PASS, "%s is in /proc/filesystems", fs);
}

static int devtmpfs_mounted_by_init;

static enum status probe_devtmpfs(const char *arg)
{
	(void)arg;
	const char *source = mount_source_of("/dev", "devtmpfs");
	if (!source)
		return say(FAIL, "/dev is not a devtmpfs");
	return say(PASS, "/dev is a devtmpfs, mounted by %s", devtmpfs_mounted_by_init ? "init" : "the kernel");
}

static int unshare_child(long flag)
{
	return unshare((int)flag) < 0 ? errno : 0;
}

static enum status probe_namespace(const char *kind)
{
	static const struct {
		const char *name;
		int flag;
	} kinds[] = {{"uts", CLONE_NEWUTS}, {"ipc", CLONE_NEWIPC}, {"user", CLONE_NEWUSER},
		     {"pid", CLONE_NEWPID}, {"net", CLONE_NEWNET},   {"cgroup", CLONE_NEWCGROUP},
		     {"mnt", CLONE_NEWNS}};
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		if (strcmp(kinds[i].name, kind) != 0)
			continue;
		int err = in_child(unshare_child, kinds[i].flag);
		if (err)
			return say(FAIL, "unshare(CLONE_NEW%s): %s", kind, strerror(err));
		return say(PASS, "unshare of a %s namespace works", kind);
	}
	return say(FAIL, "no such namespace kind: %s", kind);
}

#define CGROUP_ROOT "/sys/fs/cgroup"

static enum status probe_cgroup2(const char *arg)
{
	(void)arg;
	if (!mount_source_of(CGROUP_ROOT, "cgroup2"))
		return say(FAIL, "cgroup2 is not mounted on " CGROUP_ROOT);
	char text[512];
	if (read_file(CGROUP_ROOT "/cgroup.controllers", text, sizeof(text)) < 0)
		return say(FAIL, CGROUP_ROOT "/cgroup.controllers: %s", strerror(errno));
	text[strcspn(text, "\n")] = '\0';
	return say(PASS, "cgroup2 mounted; controllers: %s", text);
}

static enum status probe_cgroup_controller(const char *controller)
{
	char text[512];
	if (read_file(CGROUP_ROOT "/cgroup.controllers", text, sizeof(text)) < 0)
		return say(FAIL, "no cgroup2 hierarchy: " CGROUP_ROOT "/cgroup.controllers: %s", strerror(errno));
	if (!has_word(text, controller))
		return say(FAIL, "%s is not in cgroup.controllers (%.*s)", controller, (int)strcspn(text, "\n"), text);
	return say(PASS, "%s is in cgroup.controllers", controller);
}

static enum status probe_cgroup_freeze(const char *arg)
{
	(void)arg;
	/* cgroup v2's freezer is core: every non-root cgroup has cgroup.freeze. */
	if (!pid1)
		return say(SKIP, "not PID 1: would create a child cgroup on this host");
	const char *child = CGROUP_ROOT "/ktailor-probe";
	if (mkdir(child, 0755) < 0 && errno != EEXIST)
		return say(FAIL, "mkdir %s: %s", child, strerror(errno));
	int found = exists(CGROUP_ROOT "/ktailor-probe/cgroup.freeze");
	rmdir(child);
	return found ? say(PASS, "a child cgroup has cgroup.freeze") : say(FAIL, "a child cgroup has no cgroup.freeze");
}

static int seccomp_child(long unused)
{
	(void)unused;
	struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sock_fprog prog = {.len = 1, .filter = &allow};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return 1;
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
		return errno == EINVAL ? 2 : 3;
	return prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == 2 ? 0 : 4;
}

static enum status probe_seccomp(const char *arg)
{
	(void)arg;
	switch (in_child(seccomp_child, 0)) {
	case 0:
		return say(PASS, "an allow-all SECCOMP_SET_MODE_FILTER filter installs");
	case 1:
		return say(FAIL, "PR_SET_NO_NEW_PRIVS failed");
	case 2:
		return say(FAIL, "seccomp(SECCOMP_SET_MODE_FILTER): EINVAL (kernel without SECCOMP_FILTER)");
	default:
		return say(FAIL, "seccomp filter mode did not take effect");
	}
}

static enum status probe_virtio_net(const char *arg)
{
	(void)arg;
	char link[256], target[256] = "";
	snprintf(link, sizeof(link), "/sys/class/net/eth0/device/driver");
	if (!exists("/sys/class/net/eth0"))
		return say(FAIL, "no eth0 in /sys/class/net");
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	target[n > 0 ? n : 0] = '\0';
	const char *driver = strrchr(target, '/') ? strrchr(target, '/') + 1 : target;
	if (strcmp(driver, "virtio_net") != 0)
		return say(FAIL, "eth0 is driven by %s, not virtio_net", *driver ? driver : "nothing");
	return say(PASS, "eth0 is a virtio_net interface");
}

static void on_alarm(int sig)
{
	(void)sig;
}

/*
 * A runtime value the kernel reports: arg is "<path>=<expected>" (a sysctl under /proc/sys, a
 * parameter under /sys/module, a file of securityfs, which this probe mounts). The .config says
 * what was built; this is what the booted kernel actually does.
 */
static enum status probe_runtime_value(const char *arg)
{
	char path[128], value[128];
	const char *eq = strchr(arg, '=');
	if (!eq || (size_t)(eq - arg) >= sizeof(path))
		return say(FAIL, "bad runtime-value probe argument %s", arg);
	snprintf(path, sizeof(path), "%.*s", (int)(eq - arg), arg);
	const char *expected = eq + 1;
	/* securityfs: mounted here when running as the guest's init (never on a host run) */
	if (getpid() == 1 && strncmp(path, "/sys/kernel/security/", 21) == 0 &&
	    mount("securityfs", "/sys/kernel/security", "securityfs", 0, NULL) < 0 && errno != EBUSY)
		return say(FAIL, "mount securityfs: %s", strerror(errno));
	if (read_file(path, value, sizeof(value)) < 0)
		return say(FAIL, "%s: %s", path, strerror(errno));
	value[strcspn(value, "\n")] = '\0';
	if (strcmp(value, expected) != 0)
		return say(FAIL, "%s is \"%s\", not \"%s\"", path, value, expected);
	return say(PASS, "%s = %s", path, value);
}

static enum status probe_virtio_rng(const char *arg)
{
	(void)arg;
	char current[128];
	if (read_file("/sys/class/misc/hw_random/rng_current", current, sizeof(current)) < 0)
		return say(FAIL, "no hw_random device (/sys/class/misc/hw_random): %s", strerror(errno));
	current[strcspn(current, "\n")] = '\0';
	if (strncmp(current, "virtio_rng", 10) != 0)
		return say(FAIL, "the current hwrng is %s, not virtio_rng", current);
	unsigned char bytes[16];
	int fd = open("/dev/hwrng", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return say(FAIL, "/dev/hwrng: %s", strerror(errno));
	/* PID 1 ignores signals it has no handler for, so install one to let alarm() interrupt read(). */
	struct sigaction sa = {.sa_handler = on_alarm}, old;
	sigaction(SIGALRM, &sa, &old);
	alarm(5);
	ssize_t n = read(fd, bytes, sizeof(bytes));
	int saved = errno;
	alarm(0);
	sigaction(SIGALRM, &old, NULL);
	close(fd);
	if (n <= 0)
		return say(FAIL, "reading /dev/hwrng: %s", n < 0 ? strerror(saved) : "no data");
	return say(PASS, "read %zd bytes from /dev/hwrng (rng_current=%s)", n, current);
}

static enum status probe_virtio_blk(const char *arg)
{
	(void)arg;
	struct stat st;
	if (stat("/dev/vda", &st) < 0)
		return say(FAIL, "/dev/vda: %s", strerror(errno));
	if (!S_ISBLK(st.st_mode))
		return say(FAIL, "/dev/vda is not a block device");
	const char *root = mount_source_of("/", NULL);
	return say(PASS, "/dev/vda is a block device; / is %s", root ? root : "unknown");
}

static enum status probe_virtio_driver(const char *driver)
{
	char path[256];
	snprintf(path, sizeof(path), "/sys/bus/virtio/drivers/%s", driver);
	DIR *dir = opendir(path);
	if (!dir)
		return say(FAIL, "driver %s is not registered on the virtio bus", driver);
	const char *bound = NULL;
	for (struct dirent *entry; (entry = readdir(dir));)
		if (strncmp(entry->d_name, "virtio", 6) == 0) {
			bound = entry->d_name;
			break;
		}
	enum status result = bound ? say(PASS, "%s drives %s", driver, bound)
				   : say(FAIL, "%s is registered but drives no device", driver);
	closedir(dir);
	return result;
}

static enum status probe_pci(const char *arg)
{
	(void)arg;
	DIR *dir = opendir("/sys/bus/pci/devices");
	if (!dir)
		return say(FAIL, "/sys/bus/pci/devices: %s", strerror(errno));
	int count = 0;
	for (struct dirent *entry; (entry = readdir(dir));)
		count += entry->d_name[0] != '.';
	closedir(dir);
	return count ? say(PASS, "%d PCI devices enumerated", count) : say(FAIL, "no PCI device enumerated");
}

static enum status probe_acpi(const char *arg)
{
	(void)arg;
	return exists("/sys/firmware/acpi") ? say(PASS, "/sys/firmware/acpi exists") : say(FAIL, "/sys/firmware/acpi is missing");
}

static enum status probe_modules(const char *arg)
{
	(void)arg;
	return exists("/proc/modules") ? say(PASS, "/proc/modules exists: modules can be loaded")
				       : say(FAIL, "/proc/modules is missing: kernel without module support");
}

static enum status probe_bpf(const char *arg)
{
	(void)arg;
	struct bpf_insn insns[] = {
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0}, /* r0 = 0 */
		{.code = BPF_JMP | BPF_EXIT},                                         /* exit */
	};
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
	attr.insns = (uintptr_t)insns;
	attr.insn_cnt = sizeof(insns) / sizeof(insns[0]);
	attr.license = (uintptr_t) "GPL";
	int fd = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
	if (fd < 0)
		return say(FAIL, "bpf(BPF_PROG_LOAD): %s", strerror(errno));
	close(fd);
	return say(PASS, "bpf() loaded a socket filter program");
}

/* ---- mini's devices and network features ------------------------------------------------------ */

#define SCRATCH "/tmp" /* init mounts a tmpfs there: mount points for the probes below */

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = write(fd, text, strlen(text));
	int saved = errno;
	close(fd);
	errno = saved;
	return n < 0 ? -1 : 0;
}

static enum status probe_virtio_scsi(const char *arg)
{
	(void)arg;
	char target[512];
	ssize_t n = readlink("/sys/block/sda", target, sizeof(target) - 1);
	if (n < 0)
		return say(FAIL, "no /sys/block/sda: no SCSI disk appeared (the VM has a virtio-scsi controller with one disk)");
	target[n] = '\0';
	if (!strstr(target, "/virtio") || !strstr(target, "/host"))
		return say(FAIL, "sda is not behind a virtio-scsi host (%s)", target);
	return say(PASS, "sda is a SCSI disk on virtio-scsi (%s)", target);
}

/* Mount source on SCRATCH/<dir> read-only, check the filesystem's magic, read <file> if given. */
static enum status mount_and_check(const char *source, const char *dir, const char *fstype, const char *data,
				   long magic, const char *file, const char *want)
{
	if (!pid1)
		return say(SKIP, "not PID 1: would mount %s on this host", fstype);
	char where[128], path[192], text[256];
	snprintf(where, sizeof(where), SCRATCH "/%s", dir);
	mkdir(where, 0755);
	if (mount(source, where, fstype, MS_RDONLY | MS_NOSUID | MS_NODEV, data) < 0)
		return say(FAIL, "mount -t %s %s: %s", fstype, source, strerror(errno));
	struct statfs st;
	enum status result = PASS;
	if (statfs(where, &st) < 0 || (magic && st.f_type != magic)) {
		result = say(FAIL, "%s mounted but statfs says type 0x%lx", fstype, (long)st.f_type);
	} else if (file) {
		snprintf(path, sizeof(path), "%s/%s", where, file);
		if (read_file(path, text, sizeof(text)) < 0)
			result = say(FAIL, "%s mounted but %s cannot be read: %s", fstype, path, strerror(errno));
		else if (strcmp(text, want ? want : "") != 0)
			result = say(FAIL, "%s mounted; %s holds %.40s, not the host's token", fstype, path, text);
		else
			result = say(PASS, "mounted %s (%s) and read the host's token from it", source, fstype);
	} else {
		result = say(PASS, "mounted %s as %s (read-only)", source, fstype);
	}
	umount(where);
	return result;
}

static enum status probe_xfs_mount(const char *arg)
{
	(void)arg;
	if (!exists("/dev/sda"))
		return say(FAIL, "no /dev/sda to mount (the host attaches an XFS image as a virtio-scsi disk)");
	return mount_and_check("/dev/sda", "xfs", "xfs", NULL, 0x58465342 /* XFS_SUPER_MAGIC */, NULL, NULL);
}

static enum status probe_9p(const char *arg)
{
	(void)arg;
	const char *token = getenv("ktailor_9p_token");
	if (!token)
		return say(FAIL, "the command line has no ktailor_9p_token: the host attached no 9p share");
	/* No magic check: 9p2000.L passes the server's statfs through, so f_type is the host directory's
	 * filesystem (ext4, xfs…), not V9FS_MAGIC. Reading the token only the host share holds is the proof. */
	return mount_and_check("ktailor9p", "9p", "9p", "trans=virtio,version=9p2000.L", 0, "token", token);
}

static enum status probe_virtiofs(const char *arg)
{
	(void)arg;
	const char *token = getenv("ktailor_virtiofs_token");
	if (!token)
		return say(FAIL, "the command line has no ktailor_virtiofs_token: the host attached no virtio-fs share");
	return mount_and_check("ktailorfs", "virtiofs", "virtiofs", NULL, 0x65735546 /* FUSE_SUPER_MAGIC */, "token", token);
}

static enum status probe_pmem(const char *arg)
{
	(void)arg;
	struct stat st;
	if (stat("/dev/pmem0", &st) < 0 || !S_ISBLK(st.st_mode))
		return say(FAIL, "no /dev/pmem0 block device (the host attaches a virtio-pmem region)");
	char dax[16] = "?";
	if (read_file("/sys/block/pmem0/queue/dax", dax, sizeof(dax)) > 0)
		dax[strcspn(dax, "\n")] = '\0';
	return say(PASS, "/dev/pmem0 is a persistent-memory block device (queue/dax=%s)", dax);
}

static enum status probe_cpu_hotplug(const char *arg)
{
	(void)arg;
	const char *knob = "/sys/devices/system/cpu/cpu1/online";
	char online[64];
	if (!exists(knob))
		return say(FAIL, "%s is missing: no second vCPU, or it cannot be hot-unplugged (HOTPLUG_CPU)", knob);
	if (!pid1)
		return say(SKIP, "not PID 1: would take cpu1 offline on this host");
	if (write_text(knob, "0") < 0)
		return say(FAIL, "taking cpu1 offline: %s", strerror(errno));
	read_file("/sys/devices/system/cpu/online", online, sizeof(online));
	online[strcspn(online, "\n")] = '\0';
	int offlined = strcmp(online, "0") == 0;
	if (write_text(knob, "1") < 0)
		return say(FAIL, "cpu1 went offline (online CPUs: %s) but bringing it back failed: %s", online, strerror(errno));
	char back[64];
	read_file("/sys/devices/system/cpu/online", back, sizeof(back));
	back[strcspn(back, "\n")] = '\0';
	if (!offlined || strcmp(back, "0-1") != 0)
		return say(FAIL, "online CPUs were %s after offlining cpu1 and %s after onlining it", online, back);
	return say(PASS, "cpu1 went offline (online: %s) and came back (online: %s)", online, back);
}

static enum status probe_loop(const char *arg)
{
	(void)arg;
	int fd = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return say(FAIL, "/dev/loop-control: %s", strerror(errno));
	int index = ioctl(fd, LOOP_CTL_GET_FREE);
	int saved = errno;
	close(fd);
	if (index < 0)
		return say(FAIL, "LOOP_CTL_GET_FREE: %s", strerror(saved));
	return say(PASS, "/dev/loop-control hands out a free loop device (/dev/loop%d)", index);
}

static int set_flags(const char *ifname, int up)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
	int rc = ioctl(fd, SIOCGIFFLAGS, &ifr);
	if (rc == 0) {
		ifr.ifr_flags = up ? (ifr.ifr_flags | IFF_UP) : (ifr.ifr_flags & ~IFF_UP);
		rc = ioctl(fd, SIOCSIFFLAGS, &ifr);
	}
	int saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

static enum status probe_ipv6_lo(const char *arg)
{
	(void)arg;
	if (!pid1)
		return say(SKIP, "not PID 1: would change lo on this host");
	if (set_flags("lo", 1) < 0)
		return say(FAIL, "bringing lo up: %s", strerror(errno));
	int server = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (server < 0)
		return say(FAIL, "socket(AF_INET6): %s", strerror(errno));
	struct sockaddr_in6 addr = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	socklen_t len = sizeof(addr);
	enum status result;
	int client = -1, accepted = -1;
	if (bind(server, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(server, 1) < 0 ||
	    getsockname(server, (struct sockaddr *)&addr, &len) < 0) {
		result = say(FAIL, "bind/listen on [::1]: %s (no ::1 on lo)", strerror(errno));
	} else if ((client = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
		   connect(client, (struct sockaddr *)&addr, sizeof(addr)) < 0 || (accepted = accept(server, NULL, NULL)) < 0) {
		result = say(FAIL, "connecting to [::1]:%d: %s", ntohs(addr.sin6_port), strerror(errno));
	} else {
		result = say(PASS, "lo has ::1; a TCP connection to [::1]:%d was accepted", ntohs(addr.sin6_port));
	}
	if (accepted >= 0)
		close(accepted);
	if (client >= 0)
		close(client);
	close(server);
	return result;
}

static enum status probe_vlan(const char *arg)
{
	(void)arg;
	if (!pid1)
		return say(SKIP, "not PID 1: would add a VLAN link on this host");
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct vlan_ioctl_args req;
	memset(&req, 0, sizeof(req));
	req.cmd = ADD_VLAN_CMD;
	snprintf(req.device1, sizeof(req.device1), "eth0");
	req.u.VID = 42;
	if (ioctl(fd, SIOCSIFVLAN, &req) < 0) {
		int saved = errno;
		close(fd);
		return say(FAIL, "adding VLAN 42 on eth0: %s", strerror(saved));
	}
	int found = exists("/sys/class/net/eth0.42");
	memset(&req, 0, sizeof(req));
	req.cmd = DEL_VLAN_CMD;
	snprintf(req.device1, sizeof(req.device1), "eth0.42");
	ioctl(fd, SIOCSIFVLAN, &req);
	close(fd);
	return found ? say(PASS, "created VLAN link eth0.42 (802.1Q id 42) and removed it")
		     : say(FAIL, "the VLAN ioctl succeeded but /sys/class/net/eth0.42 did not appear");
}

/* ---- netlink: just enough to create a veth pair and an nftables table -------------------------- */

struct nlbuf {
	char data[2048] __attribute__((aligned(NLMSG_ALIGNTO)));
	size_t len;
};

static struct nlmsghdr *nl_begin(struct nlbuf *b, unsigned type, unsigned flags, const void *head, size_t head_len)
{
	struct nlmsghdr *m = (struct nlmsghdr *)(b->data + b->len);
	memset(m, 0, NLMSG_SPACE(head_len));
	m->nlmsg_type = (unsigned short)type;
	m->nlmsg_flags = (unsigned short)(NLM_F_REQUEST | flags);
	m->nlmsg_seq = (unsigned)(b->len + 1);
	memcpy(NLMSG_DATA(m), head, head_len);
	m->nlmsg_len = NLMSG_LENGTH(head_len);
	return m;
}

static void nl_end(struct nlbuf *b, struct nlmsghdr *m)
{
	b->len += NLMSG_ALIGN(m->nlmsg_len);
}

/* Append an attribute to message m; returns its offset (for nesting). */
static size_t nl_put(struct nlmsghdr *m, unsigned short type, const void *value, size_t len)
{
	size_t at = NLMSG_ALIGN(m->nlmsg_len);
	struct nlattr *a = (struct nlattr *)((char *)m + at);
	a->nla_type = type;
	a->nla_len = (unsigned short)(NLA_HDRLEN + len);
	if (len)
		memcpy((char *)a + NLA_HDRLEN, value, len);
	m->nlmsg_len = (unsigned)(at + NLA_ALIGN(a->nla_len));
	return at;
}

static void nl_put_str(struct nlmsghdr *m, unsigned short type, const char *value)
{
	nl_put(m, type, value, strlen(value) + 1);
}

static void nl_nest_end(struct nlmsghdr *m, size_t at)
{
	struct nlattr *a = (struct nlattr *)((char *)m + at);
	a->nla_len = (unsigned short)(m->nlmsg_len - at);
}

/* Send b on a new netlink socket of `protocol`; 0 when every acked message succeeded, else -errno. */
static int nl_talk(int protocol, struct nlbuf *b, char *reply, size_t reply_size, ssize_t *reply_len)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
	if (fd < 0)
		return -errno;
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	struct timeval tv = {.tv_sec = 5};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (sendto(fd, b->data, b->len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
		int saved = errno;
		close(fd);
		return -saved;
	}
	static char scratch[8192] __attribute__((aligned(NLMSG_ALIGNTO)));
	char *buf = reply ? reply : scratch;
	size_t size = reply ? reply_size : sizeof(scratch);
	ssize_t n = recv(fd, buf, size, 0);
	int saved = errno;
	close(fd);
	if (n < 0)
		return -saved;
	if (reply_len)
		*reply_len = n;
	for (struct nlmsghdr *m = (struct nlmsghdr *)buf; NLMSG_OK(m, (unsigned)n); m = NLMSG_NEXT(m, n))
		if (m->nlmsg_type == NLMSG_ERROR && ((struct nlmsgerr *)NLMSG_DATA(m))->error)
			return ((struct nlmsgerr *)NLMSG_DATA(m))->error;
	return 0;
}

/* A veth pair: `inside` in the caller's network namespace, `outside` in PID 1's. */
static int make_veth(const char *inside, const char *outside)
{
	struct nlbuf b = {.len = 0};
	struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
	struct nlmsghdr *m = nl_begin(&b, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, &ifi, sizeof(ifi));
	nl_put_str(m, IFLA_IFNAME, inside);
	size_t linkinfo = nl_put(m, IFLA_LINKINFO, NULL, 0);
	nl_put_str(m, IFLA_INFO_KIND, "veth");
	size_t data = nl_put(m, IFLA_INFO_DATA, NULL, 0);
	size_t peer = nl_put(m, VETH_INFO_PEER, &ifi, sizeof(ifi));
	nl_put_str(m, IFLA_IFNAME, outside);
	uint32_t pid = 1;
	nl_put(m, IFLA_NET_NS_PID, &pid, sizeof(pid));
	nl_nest_end(m, peer);
	nl_nest_end(m, data);
	nl_nest_end(m, linkinfo);
	nl_end(&b, m);
	return nl_talk(NETLINK_ROUTE, &b, NULL, 0, NULL);
}

static int set_ipv4(const char *ifname, const char *address)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
	sin->sin_family = AF_INET;
	inet_pton(AF_INET, address, &sin->sin_addr);
	int rc = ioctl(fd, SIOCSIFADDR, &ifr);
	if (rc == 0) {
		inet_pton(AF_INET, "255.255.255.0", &sin->sin_addr);
		rc = ioctl(fd, SIOCSIFNETMASK, &ifr);
	}
	int saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

static uint16_t icmp_checksum(const void *data, size_t len)
{
	const uint16_t *p = data;
	uint32_t sum = 0;
	for (; len > 1; len -= 2)
		sum += *p++;
	if (len)
		sum += *(const uint8_t *)p;
	sum = (sum >> 16) + (sum & 0xffff);
	sum += sum >> 16;
	return (uint16_t)~sum;
}

/* One ICMP echo to address, answered within the timeout: 0, else an errno-style code. */
static int ping_once(const char *address, int seconds)
{
	int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
	if (fd < 0)
		return errno;
	struct sockaddr_in to = {.sin_family = AF_INET};
	inet_pton(AF_INET, address, &to.sin_addr);
	struct timeval tv = {.tv_sec = 1};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	uint16_t id = (uint16_t)getpid();
	for (int attempt = 0; attempt < seconds; attempt++) {
		struct icmphdr echo = {.type = ICMP_ECHO, .un.echo = {.id = htons(id), .sequence = htons((uint16_t)attempt)}};
		echo.checksum = icmp_checksum(&echo, sizeof(echo));
		sendto(fd, &echo, sizeof(echo), 0, (struct sockaddr *)&to, sizeof(to));
		char packet[256];
		ssize_t n;
		while ((n = recv(fd, packet, sizeof(packet), 0)) > 0) {
			struct iphdr *ip = (struct iphdr *)packet;
			struct icmphdr *reply = (struct icmphdr *)(packet + ip->ihl * 4);
			if (n >= ip->ihl * 4 + (ssize_t)sizeof(*reply) && reply->type == ICMP_ECHOREPLY &&
			    reply->un.echo.id == htons(id)) {
				close(fd);
				return 0;
			}
		}
	}
	close(fd);
	return ETIMEDOUT;
}

/*
 * A child in a new network namespace: a veth pair with `outside` left in init's namespace, its own
 * end addressed and up. It reports "ok" or the failure on `report`, then waits on `go`: for the
 * pinging child, go carries the address to ping and the result goes back on report.
 */
static void veth_child(const char *outside, const char *address, int report, int go)
{
	char text[160] = "ok";
	int err = 0;
	if (unshare(CLONE_NEWNET) < 0)
		snprintf(text, sizeof(text), "unshare(CLONE_NEWNET): %s", strerror(errno));
	else if ((err = make_veth("veth0", outside)) < 0)
		snprintf(text, sizeof(text), "creating a veth pair veth0/%s: %s", outside, strerror(-err));
	else if (set_ipv4("veth0", address) < 0 || set_flags("veth0", 1) < 0)
		snprintf(text, sizeof(text), "addressing veth0 as %s: %s", address, strerror(errno));
	write(report, text, strlen(text) + 1);
	char peer[32] = "";
	ssize_t n = read(go, peer, sizeof(peer) - 1);
	if (n > 1) {
		peer[n] = '\0';
		err = ping_once(peer, 8);
		snprintf(text, sizeof(text), err ? "no echo reply from %s: %s" : "ok", peer, strerror(err));
		write(report, text, strlen(text) + 1);
	}
	_exit(0);
}

static enum status probe_veth_bridge(const char *arg)
{
	(void)arg;
	if (!pid1)
		return say(SKIP, "not PID 1: would add a bridge and namespaces on this host");
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (ioctl(fd, SIOCBRADDBR, "kbr0") < 0 || set_flags("kbr0", 1) < 0) {
		int saved = errno;
		close(fd);
		return say(FAIL, "creating bridge kbr0: %s", strerror(saved));
	}
	const char *outside[2] = {"kvp0", "kvp1"}, *address[2] = {"10.77.0.1", "10.77.0.2"};
	int report[2][2], go[2][2];
	pid_t child[2] = {-1, -1};
	enum status result = PASS;
	char text[160];
	for (int i = 0; i < 2 && result == PASS; i++) {
		if (pipe2(report[i], O_CLOEXEC) < 0 || pipe2(go[i], O_CLOEXEC) < 0)
			return say(FAIL, "pipe: %s", strerror(errno));
		if ((child[i] = fork()) == 0)
			veth_child(outside[i], address[i], report[i][1], go[i][0]);
		ssize_t n = read(report[i][0], text, sizeof(text) - 1);
		text[n > 0 ? n : 0] = '\0';
		if (strcmp(text, "ok") != 0) {
			result = say(FAIL, "namespace %d: %s", i + 1, n > 0 ? text : "the child died");
			break;
		}
		struct ifreq ifr;
		memset(&ifr, 0, sizeof(ifr));
		snprintf(ifr.ifr_name, IFNAMSIZ, "kbr0");
		ifr.ifr_ifindex = (int)if_nametoindex(outside[i]);
		if (ioctl(fd, SIOCBRADDIF, &ifr) < 0 || set_flags(outside[i], 1) < 0)
			result = say(FAIL, "adding %s to bridge kbr0: %s", outside[i], strerror(errno));
	}
	if (result == PASS) {
		write(go[1][1], address[0], strlen(address[0]));
		ssize_t n = read(report[1][0], text, sizeof(text) - 1);
		text[n > 0 ? n : 0] = '\0';
		result = strcmp(text, "ok") == 0
				 ? say(PASS, "two network namespaces on veth pairs joined by bridge kbr0: %s pinged %s", address[1], address[0])
				 : say(FAIL, "namespace 2 (%s) over bridge kbr0: %s", address[1], n > 0 ? text : "the child died");
	}
	for (int i = 0; i < 2; i++)
		if (child[i] > 0) {
			write(go[i][1], "", 1);
			waitpid(child[i], NULL, 0);
		}
	close(fd);
	return result;
}

static int nft_message(struct nlbuf *b, unsigned subsys, unsigned type, unsigned flags, int family)
{
	struct nfgenmsg head = {.nfgen_family = (uint8_t)family, .version = NFNETLINK_V0};
	struct nlmsghdr *m = nl_begin(b, (subsys << 8) | type, flags, &head, sizeof(head));
	return (int)((char *)m - b->data);
}

static enum status probe_nft_table(const char *arg)
{
	(void)arg;
	if (!pid1)
		return say(SKIP, "not PID 1: would load an nftables table on this host");
	struct nlbuf b = {.len = 0};
	struct nfgenmsg batch = {.nfgen_family = AF_UNSPEC, .version = NFNETLINK_V0, .res_id = htons(NFNL_SUBSYS_NFTABLES)};
	nl_end(&b, nl_begin(&b, NFNL_MSG_BATCH_BEGIN, 0, &batch, sizeof(batch)));
	struct nlmsghdr *m = (struct nlmsghdr *)(b.data + nft_message(&b, NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWTABLE,
								      NLM_F_CREATE | NLM_F_ACK, NFPROTO_INET));
	nl_put_str(m, NFTA_TABLE_NAME, "ktailor");
	nl_end(&b, m);
	m = (struct nlmsghdr *)(b.data + nft_message(&b, NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK,
						      NFPROTO_INET));
	nl_put_str(m, NFTA_CHAIN_TABLE, "ktailor");
	nl_put_str(m, NFTA_CHAIN_NAME, "input");
	size_t hook = nl_put(m, NFTA_CHAIN_HOOK, NULL, 0);
	uint32_t hooknum = htonl(NF_INET_LOCAL_IN), priority = htonl(0);
	nl_put(m, NFTA_HOOK_HOOKNUM, &hooknum, sizeof(hooknum));
	nl_put(m, NFTA_HOOK_PRIORITY, &priority, sizeof(priority));
	nl_nest_end(m, hook);
	nl_put_str(m, NFTA_CHAIN_TYPE, "filter");
	nl_end(&b, m);
	nl_end(&b, nl_begin(&b, NFNL_MSG_BATCH_END, 0, &batch, sizeof(batch)));
	int err = nl_talk(NETLINK_NETFILTER, &b, NULL, 0, NULL);
	if (err)
		return say(FAIL, "loading table inet ktailor with a filter chain on the input hook: %s", strerror(-err));
	return say(PASS, "loaded nftables table inet ktailor with a base chain on the input hook");
}

/* nft_compat: can nf_tables run the xtables match iptables-nft uses for Docker's port publishing? */
static enum status probe_nft_compat(const char *arg)
{
	(void)arg;
	struct nlbuf b = {.len = 0};
	struct nlmsghdr *m = (struct nlmsghdr *)(b.data + nft_message(&b, NFNL_SUBSYS_NFT_COMPAT, NFNL_MSG_COMPAT_GET, 0,
								      NFPROTO_IPV4));
	uint32_t rev = htonl(1), type = htonl(0); /* revision 1 of a match (type 0) */
	nl_put_str(m, NFTA_COMPAT_NAME, "addrtype");
	nl_put(m, NFTA_COMPAT_REV, &rev, sizeof(rev));
	nl_put(m, NFTA_COMPAT_TYPE, &type, sizeof(type));
	nl_end(&b, m);
	static char reply[4096] __attribute__((aligned(NLMSG_ALIGNTO)));
	ssize_t n = 0;
	int err = nl_talk(NETLINK_NETFILTER, &b, reply, sizeof(reply), &n);
	if (err)
		return say(FAIL, "asking nft_compat for the xtables match addrtype: %s", strerror(-err));
	struct nlmsghdr *answer = (struct nlmsghdr *)reply;
	if (n <= 0 || !NLMSG_OK(answer, (unsigned)n) || (answer->nlmsg_type & 0xff) != NFNL_MSG_COMPAT_GET)
		return say(FAIL, "nft_compat gave no answer for the xtables match addrtype");
	return say(PASS, "nft_compat offers the xtables match addrtype (iptables-nft rules run)");
}

static enum status probe_fscaps_ext4(const char *arg)
{
	(void)arg;
	if (!pid1)
		return say(SKIP, "not PID 1: would write a file capability on this host");
	const char *root = mount_source_of("/", "ext4");
	int remounted = root != NULL;
	const char *dir = "/";
	if (remounted) {
		if (mount(NULL, "/", NULL, MS_REMOUNT, NULL) < 0)
			return say(FAIL, "remounting the ext4 root read-write: %s", strerror(errno));
	} else {
		dir = SCRATCH "/ext4";
		mkdir(dir, 0755);
		if (mount("/dev/vda", dir, "ext4", 0, NULL) < 0)
			return say(FAIL, "mounting /dev/vda (ext4) read-write: %s", strerror(errno));
	}
	char path[128];
	snprintf(path, sizeof(path), "%s/ktailor-fscaps", strcmp(dir, "/") ? dir : "");
	struct vfs_cap_data caps;
	memset(&caps, 0, sizeof(caps));
	caps.magic_etc = VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE;
	caps.data[0].permitted = 1u << CAP_NET_BIND_SERVICE;
	struct vfs_cap_data back;
	enum status result;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	if (fd < 0)
		result = say(FAIL, "creating %s: %s", path, strerror(errno));
	else if (close(fd), setxattr(path, "security.capability", &caps, XATTR_CAPS_SZ_2, 0) < 0)
		result = say(FAIL, "setcap cap_net_bind_service+ep on ext4: %s%s", strerror(errno),
			     errno == EOPNOTSUPP ? " (ext4 without security.* xattrs: EXT4_FS_SECURITY)" : "");
	else if (getxattr(path, "security.capability", &back, sizeof(back)) != XATTR_CAPS_SZ_2 ||
		 memcmp(&back, &caps, XATTR_CAPS_SZ_2) != 0)
		result = say(FAIL, "security.capability on %s did not read back as written", path);
	else
		result = say(PASS, "set and read back file capability cap_net_bind_service+ep on ext4 (%s)", path);
	unlink(path);
	if (remounted)
		mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	else
		umount(dir);
	return result;
}

static volatile sig_atomic_t got_sigint;

static void on_sigint(int sig)
{
	(void)sig;
	got_sigint = 1;
}

/* Ctrl-Alt-Del from the VMM, through the i8042, the AT keyboard and the VT keyboard handler to init. */
static enum status probe_i8042_cad(const char *arg)
{
	(void)arg;
	if (!exists("/sys/bus/serio/drivers/atkbd/serio0"))
		return say(FAIL, "no AT keyboard on the i8042 (serio0 is not bound to atkbd): the VMM's Ctrl-Alt-Del cannot arrive");
	if (!pid1)
		return say(SKIP, "not PID 1: Ctrl-Alt-Del reaches PID 1 only");
	struct sigaction sa = {.sa_handler = on_sigint}, old, alarm_old;
	struct sigaction wake = {.sa_handler = on_alarm};
	sigaction(SIGINT, &sa, &old);
	sigaction(SIGALRM, &wake, &alarm_old);
	reboot(RB_DISABLE_CAD); /* Ctrl-Alt-Del now signals init instead of restarting at once */
	printf("KTAILOR-AWAIT name=cad\n");
	fflush(stdout);
	for (int waited = 0; !got_sigint && waited < 30; waited++) {
		alarm(1);
		pause();
	}
	alarm(0);
	sigaction(SIGALRM, &alarm_old, NULL);
	sigaction(SIGINT, &old, NULL);
	return got_sigint ? say(PASS, "the VMM's Ctrl-Alt-Del reached init as SIGINT (i8042 -> atkbd -> VT keyboard)")
			  : say(FAIL, "no Ctrl-Alt-Del reached init within 30 s of asking the host for it");
}

/*
 * The probes by name. An entry without an argument is a prefix family: the rest of the name is the
 * argument (fs-ext4 runs probe_filesystem("ext4")). Which probes a target runs is data
 * (guest/probes.toml); this table only says how each is done.
 */
static const struct {
	const char *name;
	enum status (*run)(const char *arg);
	const char *arg; /* NULL: prefix family */
} probes[] = {
	{"vsock", probe_vsock, ""},
	{"dm-crypt", probe_dm_crypt, ""},
	{"crypto-xts-aes", probe_xts_aes, ""},
	{"crypto-sha256", probe_sha256, ""},
	{"devtmpfs", probe_devtmpfs, ""},
	{"cgroup2", probe_cgroup2, ""},
	{"cgroup-freeze", probe_cgroup_freeze, ""},
	{"seccomp-filter", probe_seccomp, ""},
	{"virtio-net", probe_virtio_net, ""},
	{"virtio-rng", probe_virtio_rng, ""},
	{"page-shuffle", probe_runtime_value, "/sys/module/page_alloc/parameters/shuffle=Y"},
	{"module-sig-enforce", probe_runtime_value, "/sys/module/module/parameters/sig_enforce=Y"},
	{"yama-ptrace-scope", probe_runtime_value, "/proc/sys/kernel/yama/ptrace_scope=1"},
	{"dmesg-restrict", probe_runtime_value, "/proc/sys/kernel/dmesg_restrict=1"},
	{"mmap-min-addr", probe_runtime_value, "/proc/sys/vm/mmap_min_addr=65536"},
	{"unprivileged-bpf-off", probe_runtime_value, "/proc/sys/kernel/unprivileged_bpf_disabled=2"},
	{"lockdown-integrity", probe_runtime_value, "/sys/kernel/security/lockdown=none [integrity] confidentiality"},
	{"virtio-blk", probe_virtio_blk, ""},
	{"virtio-balloon", probe_virtio_driver, "virtio_balloon"},
	{"virtio-console", probe_virtio_driver, "virtio_console"},
	{"pci", probe_pci, ""},
	{"acpi", probe_acpi, ""},
	{"modules", probe_modules, ""},
	{"bpf", probe_bpf, ""},
	{"virtio-scsi", probe_virtio_scsi, ""},
	{"xfs-mount", probe_xfs_mount, ""},
	{"9p-mount", probe_9p, ""},
	{"virtiofs-mount", probe_virtiofs, ""},
	{"pmem", probe_pmem, ""},
	{"cpu-hotplug", probe_cpu_hotplug, ""},
	{"ipv6-lo", probe_ipv6_lo, ""},
	{"vlan", probe_vlan, ""},
	{"veth-bridge", probe_veth_bridge, ""},
	{"nft-table", probe_nft_table, ""},
	{"nft-compat", probe_nft_compat, ""},
	{"fscaps-ext4", probe_fscaps_ext4, ""},
	{"i8042-cad", probe_i8042_cad, ""},
	{"loop-device", probe_loop, ""},
	{"fs-", probe_filesystem, NULL},
	{"ns-", probe_namespace, NULL},
	{"cgroup-", probe_cgroup_controller, NULL},
};

static enum status run_probe(const char *name)
{
	for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
		size_t len = strlen(probes[i].name);
		if (probes[i].arg && strcmp(name, probes[i].name) == 0)
			return probes[i].run(probes[i].arg);
		if (!probes[i].arg && strncmp(name, probes[i].name, len) == 0 && name[len])
			return probes[i].run(name + len);
	}
	return say(FAIL, "init.c has no probe named %s", name);
}

/* ---- setup and report ------------------------------------------------------------------------ */

static void mount_if_missing(const char *source, const char *target, const char *type, const char *data)
{
	if (mount_source_of(target, type))
		return;
	mkdir(target, 0755);
	if (mount(source, target, type, MS_NOSUID | MS_NOEXEC, data) < 0)
		printf("KTAILOR-WARN mount %s on %s: %s\n", type, target, strerror(errno));
	else if (strcmp(type, "devtmpfs") == 0)
		devtmpfs_mounted_by_init = 1;
}

static long meminfo_kb(const char *text, const char *key)
{
	const char *p = strstr(text, key);
	return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

/* The CPU vulnerability state the kernel settled on (its mitigations, as the command line left them). */
static void report_vulnerabilities(void)
{
	const char *dir = "/sys/devices/system/cpu/vulnerabilities";
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *entry;
	char path[512], state[512];
	while ((entry = readdir(d)) != NULL) {
		if (entry->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, entry->d_name);
		if (read_file(path, state, sizeof(state)) < 0)
			continue;
		state[strcspn(state, "\n")] = '\0';
		printf("KTAILOR-VULN name=%s state=%s\n", entry->d_name, state);
	}
	closedir(d);
}

/* Forward the kernel lines the host parses; under `quiet` they never reach the console. */
static void forward_kmsg(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		printf("KTAILOR-WARN /dev/kmsg: %s\n", strerror(errno));
		return;
	}
	char record[8192];
	for (;;) {
		ssize_t n = read(fd, record, sizeof(record) - 1);
		if (n < 0 && errno == EPIPE)
			continue; /* records overwritten while reading: skip ahead */
		if (n <= 0)
			break;
		record[n] = '\0';
		unsigned long long us;
		char *text = strchr(record, ';');
		if (!text || sscanf(record, "%*u,%*u,%llu", &us) != 1)
			continue;
		text++;
		text[strcspn(text, "\n")] = '\0';
		if (strncmp(text, "Memory: ", 8) == 0 || (strncmp(text, "Run ", 4) == 0 && strstr(text, " as init process")))
			printf("KTAILOR-KMSG us=%llu text=%s\n", us, text);
	}
	close(fd);
}

int main(void)
{
	struct timespec boot;
	clock_gettime(CLOCK_BOOTTIME, &boot); /* first act: time-to-init */
	pid1 = getpid() == 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("KTAILOR-INIT boottime_ns=%lld pid=%d\n", (long long)boot.tv_sec * 1000000000LL + boot.tv_nsec, (int)getpid());

	if (pid1) {
		mount_if_missing("proc", "/proc", "proc", NULL);
		mount_if_missing("sysfs", "/sys", "sysfs", NULL);
		mount_if_missing("devtmpfs", "/dev", "devtmpfs", NULL);
		mount_if_missing("cgroup2", CGROUP_ROOT, "cgroup2", NULL);
		mount_if_missing("tmpfs", SCRATCH, "tmpfs", "size=1m,mode=0755");
	}
	char text[4096];
	if (read_file("/proc/uptime", text, sizeof(text)) > 0)
		printf("KTAILOR-UPTIME seconds=%.*s\n", (int)strcspn(text, " \n"), text);
	if (read_file("/proc/meminfo", text, sizeof(text)) > 0) {
		long total = meminfo_kb(text, "MemTotal:"), available = meminfo_kb(text, "MemAvailable:");
		long rss = read_file("/proc/self/status", text, sizeof(text)) > 0 ? meminfo_kb(text, "VmRSS:") : -1;
		printf("KTAILOR-MEM total_kb=%ld available_kb=%ld used_kb=%ld init_rss_kb=%ld\n", total, available,
		       total - available, rss);
	}
	if (read_file("/proc/cmdline", text, sizeof(text)) > 0) {
		text[strcspn(text, "\n")] = '\0';
		printf("KTAILOR-CMDLINE text=%s\n", text);
	}
	report_vulnerabilities();
	forward_kmsg();

	const char *wanted = getenv("ktailor_probes");
	if (!wanted || !*wanted)
		printf("KTAILOR-WARN no probes requested: the kernel command line has no ktailor_probes=\n");
	char *list = strdup(wanted ? wanted : "");
	int count = 0, failed = 0;
	char *save = NULL;
	for (char *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
		detail[0] = '\0';
		enum status status = run_probe(name);
		count++;
		failed += status != PASS;
		for (char *c = detail; *c; c++)
			if (*c == '\n' || *c == '\r')
				*c = ' ';
		printf("KTAILOR-PROBE name=%s status=%s detail=%s\n", name, status_names[status], detail);
	}
	printf("KTAILOR-DONE probes=%d failed=%d\n", count, failed);
	fflush(stdout);
	if (!pid1)
		return failed ? 1 : 0;
	sync();
	/* With reboot=t and QEMU's -no-reboot the VM exits; power-off would only halt a micro guest. */
	reboot(RB_AUTOBOOT);
	printf("KTAILOR-WARN reboot: %s\n", strerror(errno));
	for (;;)
		pause();
}
