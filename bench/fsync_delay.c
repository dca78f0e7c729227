/*
 * LD_PRELOAD library of the benchmark's SD-card mode (bench/bench.py compiles it at run time):
 * every durability sync of a server is delayed, as on a Raspberry Pi's SD card, and counted.
 *
 * Wrapped: fsync, fdatasync, syncfs and sync_file_range, the sync calls redis-server 7 and
 * postgres 15 import (`nm -D`; neither imports msync). Redis's AOF syncs with fdatasync
 * (redis_fsync on Linux), PostgreSQL's WAL with fdatasync (wal_sync_method's Linux default) and
 * its data files with fsync. sync_file_range without a WAIT flag is PostgreSQL's write-back
 * hint (*_flush_after): it starts writing and returns, so it is counted apart and not delayed.
 *
 * Environment:
 *   FSYNC_DELAY_MS     delay before each sync, milliseconds (default 5, fractions allowed)
 *   FSYNC_COUNT_FILE   a file of COUNTERS little-endian uint64 (made by the benchmark), shared by
 *                      every process of one server: mapped MAP_SHARED, so forked children (all
 *                      of PostgreSQL's processes) add to the same counters atomically
 *   FSYNC_SIZE_LOG     optional: after each successful sync of a regular file whose path
 *                      contains "appendonly" (Redis's AOF), appends "<path> <size>\n", the size
 *                      taken before the sync: that much of the file was durable when it returned
 *                      (to emulate a power cut, truncate the AOF to its last logged size)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Counter indexes: the layout bench.py reads. */
enum { C_FSYNC, C_FDATASYNC, C_SYNCFS, C_RANGE_WAIT, C_RANGE_HINT, C_DELAYED_US, COUNTERS };

static uint64_t *counters;
static struct timespec delay;
static const char *size_log;
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_syncfs)(int);
static int (*real_sync_file_range)(int, off64_t, off64_t, unsigned int);

__attribute__((constructor)) static void fsync_delay_init(void) {
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    real_syncfs = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    real_sync_file_range =
        (int (*)(int, off64_t, off64_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");

    const char *ms = getenv("FSYNC_DELAY_MS");
    double delay_ms = ms && *ms ? strtod(ms, NULL) : 5.0;
    if (delay_ms < 0)
        delay_ms = 0;
    delay.tv_sec = (time_t)(delay_ms / 1000);
    delay.tv_nsec = (long)((delay_ms - (double)delay.tv_sec * 1000) * 1e6);

    /* A copy: redis-server's setproctitle overwrites the environment's original memory. */
    const char *log = getenv("FSYNC_SIZE_LOG");
    size_log = log && *log ? strdup(log) : NULL;

    const char *path = getenv("FSYNC_COUNT_FILE");
    if (!path || !*path)
        return;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "fsync_delay: cannot open %s: %s; not counting\n", path, strerror(errno));
        return;
    }
    void *map = mmap(NULL, COUNTERS * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        fprintf(stderr, "fsync_delay: cannot map %s: %s; not counting\n", path, strerror(errno));
        return;
    }
    counters = map;
}

static void count(int which, uint64_t amount) {
    if (counters)
        __atomic_fetch_add(&counters[which], amount, __ATOMIC_RELAXED);
}

/* The card's latency. An absolute deadline, so that signals (PostgreSQL's latches use them)
 * cannot shorten it. */
static void sd_delay(void) {
    if (delay.tv_sec == 0 && delay.tv_nsec == 0)
        return;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += delay.tv_sec;
    until.tv_nsec += delay.tv_nsec;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) {
    }
    count(C_DELAYED_US, (uint64_t)delay.tv_sec * 1000000 + (uint64_t)delay.tv_nsec / 1000);
}

/* Size of fd's file if it is an AOF file to log, else -1; its path goes into `path`. */
static off_t aof_size(int fd, char *path, size_t room) {
    if (!size_log)
        return -1;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, room - 1);
    if (n <= 0)
        return -1;
    path[n] = '\0';
    struct stat st;
    if (!strstr(path, "appendonly") || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return -1;
    return st.st_size;
}

static void log_size(const char *path, off_t size) {
    char line[4200];
    int n = snprintf(line, sizeof line, "%s %lld\n", path, (long long)size);
    if (n <= 0 || (size_t)n >= sizeof line)
        return;
    int fd = open(size_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    /* One write to an O_APPEND file: lines of concurrent writers never interleave. */
    ssize_t written = write(fd, line, (size_t)n);
    (void)written;
    close(fd);
}

static int synced(int which, int fd, int (*real)(int)) {
    char path[4096];
    off_t size = aof_size(fd, path, sizeof path);
    sd_delay();
    int rc = real ? real(fd) : (errno = ENOSYS, -1);
    int saved = errno;
    count(which, 1);
    if (rc == 0 && size >= 0)
        log_size(path, size);
    errno = saved;
    return rc;
}

int fsync(int fd) { return synced(C_FSYNC, fd, real_fsync); }

int fdatasync(int fd) { return synced(C_FDATASYNC, fd, real_fdatasync); }

int syncfs(int fd) { return synced(C_SYNCFS, fd, real_syncfs); }

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
    int waits = (flags & (SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WAIT_AFTER)) != 0;
    if (waits)
        sd_delay();
    int rc = real_sync_file_range ? real_sync_file_range(fd, offset, nbytes, flags)
                                  : (errno = ENOSYS, -1);
    int saved = errno;
    count(waits ? C_RANGE_WAIT : C_RANGE_HINT, 1);
    errno = saved;
    return rc;
}
