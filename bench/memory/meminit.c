/* bench/memory.py's /init: prints what the kernel holds at init (/proc/meminfo, zoneinfo, slabinfo, the vm
 * tunables that decide MemAvailable) on the console, then reboots, which ends the VM. */
#include <stdio.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <fcntl.h>
static void cat(const char *path) {
    char buf[65536]; int fd = open(path, O_RDONLY); if (fd < 0) { printf("no %s\n", path); return; }
    ssize_t n; printf("=== %s\n", path);
    while ((n = read(fd, buf, sizeof buf)) > 0) fwrite(buf, 1, n, stdout);
    close(fd);
}
int main(void) {
    mount("proc", "/proc", "proc", 0, 0);
    mount("sysfs", "/sys", "sysfs", 0, 0);
    cat("/proc/meminfo");
    cat("/proc/zoneinfo");
    cat("/proc/slabinfo");
    cat("/proc/sys/vm/min_free_kbytes");
    cat("/proc/sys/vm/lowmem_reserve_ratio");
    cat("/proc/sys/vm/watermark_scale_factor");
    printf("=== END\n"); fflush(stdout);
    reboot(RB_AUTOBOOT);
    return 0;
}
