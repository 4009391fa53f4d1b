/* bench/memory.py's /init: prints what the kernel holds at init (/proc/meminfo, zoneinfo, slabinfo, the vm
 * tunables that decide MemAvailable) on the console, then reboots, which ends the VM. */
#include <stdio.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <fcntl.h>
#include <string.h>
static void cat(const char *path) {
    char buf[65536]; int fd = open(path, O_RDONLY); if (fd < 0) { printf("no %s\n", path); return; }
    ssize_t n; printf("=== %s\n", path);
    while ((n = read(fd, buf, sizeof buf)) > 0) fwrite(buf, 1, n, stdout);
    close(fd);
}
/* With initcall_debug on the command line: the kernel log's "initcall … returned … after N usecs" records. */
static void initcalls(void) {
    char record[1024];
    int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
    if (fd < 0) { printf("no /dev/kmsg\n"); return; }
    printf("=== initcalls\n");
    ssize_t n;
    while ((n = read(fd, record, sizeof record - 1)) > 0) {
        record[n] = 0;
        if (strstr(record, "initcall ") && strstr(record, " after ")) fputs(strchr(record, ';') ? strchr(record, ';') + 1 : record, stdout);
    }
    close(fd);
}

int main(void) {
    mount("proc", "/proc", "proc", 0, 0);
    mount("sysfs", "/sys", "sysfs", 0, 0);
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    cat("/proc/meminfo");
    cat("/proc/zoneinfo");
    cat("/proc/slabinfo");
    cat("/proc/sys/vm/min_free_kbytes");
    cat("/proc/sys/vm/lowmem_reserve_ratio");
    cat("/proc/sys/vm/watermark_scale_factor");
    initcalls();
    printf("=== END\n"); fflush(stdout);
    reboot(RB_AUTOBOOT);
    return 0;
}
