/* bench/memory.py's /init: prints what the kernel holds at init (/proc/meminfo, zoneinfo, slabinfo, the vm
 * tunables that decide MemAvailable) on the console, then reboots, which ends the VM. */
#include <stdio.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <fcntl.h>
#include <string.h>
#include <errno.h>
#include <time.h>
static void cat(const char *path) {
    char buf[65536]; int fd = open(path, O_RDONLY); if (fd < 0) { printf("no %s\n", path); return; }
    ssize_t n; printf("=== %s\n", path);
    while ((n = read(fd, buf, sizeof buf)) > 0) fwrite(buf, 1, n, stdout);
    close(fd);
}
/* The kernel log as /dev/kmsg keeps it, every record with its timestamp ("kmsg <usecs> <message>"): the
 * bench's phases (to mem_init, the initcalls, to /init) and, with initcall_debug, each initcall's time. */
static void kmsg(void) {
    char record[1024];
    int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
    if (fd < 0) { printf("no /dev/kmsg\n"); return; }
    printf("=== kmsg\n");
    ssize_t n;
    for (;;) {
        n = read(fd, record, sizeof record - 1);
        if (n < 0 && errno == EPIPE) { printf("kmsg 0 (records overwritten before they were read)\n"); continue; }
        if (n <= 0) break;
        record[n] = 0;
        unsigned long long usecs = 0; char *text = strchr(record, ';');
        if (!text) continue;
        sscanf(record, "%*u,%*u,%llu", &usecs);
        char *end = strchr(text + 1, '\n'); if (end) *end = 0;   /* continuation lines (" KEY=value") dropped */
        printf("kmsg %llu %s\n", usecs, text + 1);
    }
    close(fd);
}

int main(void) {
    struct timespec boot;
    clock_gettime(CLOCK_BOOTTIME, &boot);   /* first act: time-to-init, as the boot check's /init reads it */
    mount("proc", "/proc", "proc", 0, 0);
    mount("sysfs", "/sys", "sysfs", 0, 0);
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    printf("time-to-init-us %lld\n", (long long)boot.tv_sec * 1000000 + boot.tv_nsec / 1000);
    cat("/proc/meminfo");
    cat("/proc/zoneinfo");
    cat("/proc/slabinfo");
    cat("/proc/sys/vm/min_free_kbytes");
    cat("/proc/sys/vm/lowmem_reserve_ratio");
    cat("/proc/sys/vm/watermark_scale_factor");
    kmsg();
    printf("=== END\n"); fflush(stdout);
    reboot(RB_AUTOBOOT);
    return 0;
}
