/*
 * fault_shim.c: an LD_PRELOAD library that makes chosen system calls fail, so
 * the tests can check what a loader does on every I/O and thread failure.
 *
 * Build:  cc -shared -fPIC -O1 -o fault_shim.so fault_shim.c -ldl
 * Use:    LD_PRELOAD=/path/fault_shim.so python ...
 *
 * It wraps read, pread (pread64, __pread_chk, __pread64_chk), preadv
 * (preadv64, preadv2, preadv64v2), open (open64, openat, openat64, __open_2,
 * __open64_2, __openat_2, __openat64_2) and pthread_create. While disarmed
 * (the default) every wrapper calls straight through. Once armed, each call
 * of an armed family on a matching file is counted (1, 2, 3, ... across all
 * threads), and calls nth .. nth+count-1 (count < 0: every call from nth on)
 * get the fault:
 *
 *   kind        what the call does
 *   EIO         fails with errno EIO, reads nothing
 *   EINTR       fails with errno EINTR, reads nothing (the next call is normal)
 *   SHORT       reads, then reports half the bytes it read (a short read) and
 *               overwrites the other half with 0xA5, so ignoring the count
 *               shows; read(), which moves the file position, asks for half
 *   EOF         returns 0, reads nothing
 *   EAGAIN      pthread_create returns EAGAIN (no thread started)
 *   DELAY       sleeps `arg` microseconds, then calls through
 *   TRUNCATE    truncates the call's file to `arg` bytes, then calls through
 *   REPLACE     renames `file` over the call's path (atomic replacement, as
 *               `os.replace` does), then calls through
 *   UNLINK      deletes the call's path, then calls through
 *
 * open() understands EIO, EINTR and the three file actions; the other kinds
 * are for reads. A matching file is one whose path (for reads, the fd's
 * /proc/self/fd link) contains the filter string; an empty filter matches
 * every file. pthread_create has no file and ignores the filter.
 *
 * Control from the process itself (ctypes.CDLL(None) finds these):
 *   fault_arm(kind, fn_mask, nth, count)  counters reset, then armed
 *   fault_disarm()
 *   fault_set_filter(const char *substr)  set while disarmed
 *   fault_set_arg(long long arg, const char *file)   set while disarmed
 *   fault_calls()         matching calls since fault_arm
 *   fault_fired()         faults injected since fault_arm
 *   fault_fired_direct()  of those, how many hit an O_DIRECT descriptor
 * or from the environment, read once at load time:
 *   SAFELOAD_FAULT="kind=eio,fn=pread+preadv,nth=3,count=1,filter=/tmp/x,arg=0,file=/tmp/y"
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum {
  FAULT_NONE = 0,
  FAULT_EIO = 1,
  FAULT_EINTR = 2,
  FAULT_SHORT = 3,
  FAULT_EOF = 4,
  FAULT_EAGAIN = 5,
  FAULT_DELAY = 6,
  FAULT_TRUNCATE = 7,
  FAULT_REPLACE = 8,
  FAULT_UNLINK = 9,
};

enum {
  FN_READ = 1,
  FN_PREAD = 2,
  FN_PREADV = 4,
  FN_OPEN = 8,
  FN_PTHREAD_CREATE = 16,
};

static volatile int g_kind;     /* FAULT_NONE while disarmed */
static volatile unsigned g_mask;
static volatile long g_nth = 1, g_count = 1;
static long long g_arg;
static char g_filter[4096];
static char g_file[4096];
static long g_calls, g_fired, g_fired_direct; /* atomics */

void fault_disarm(void) { __atomic_store_n(&g_kind, FAULT_NONE, __ATOMIC_SEQ_CST); }

void fault_arm(int kind, unsigned mask, long nth, long count) {
  fault_disarm();
  __atomic_store_n(&g_calls, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n(&g_fired, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n(&g_fired_direct, 0, __ATOMIC_SEQ_CST);
  g_mask = mask;
  g_nth = nth < 1 ? 1 : nth;
  g_count = count;
  __atomic_store_n(&g_kind, kind, __ATOMIC_SEQ_CST);
}

void fault_set_filter(const char *substr) {
  snprintf(g_filter, sizeof g_filter, "%s", substr ? substr : "");
}

void fault_set_arg(long long arg, const char *file) {
  g_arg = arg;
  snprintf(g_file, sizeof g_file, "%s", file ? file : "");
}

long fault_calls(void) { return __atomic_load_n(&g_calls, __ATOMIC_SEQ_CST); }
long fault_fired(void) { return __atomic_load_n(&g_fired, __ATOMIC_SEQ_CST); }
long fault_fired_direct(void) { return __atomic_load_n(&g_fired_direct, __ATOMIC_SEQ_CST); }

/* The real function behind a wrapper, looked up once. */
#define REAL(name, type) \
  static type real_##name; \
  if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)

/* Whether this call, of family `fn`, on `path` (NULL: no file), gets the
 * fault; counts it. Returns the kind to apply, or FAULT_NONE. */
static int decide(unsigned fn, const char *path, int fd) {
  const int kind = __atomic_load_n(&g_kind, __ATOMIC_SEQ_CST);
  if (kind == FAULT_NONE || !(g_mask & fn)) return FAULT_NONE;
  if (path && g_filter[0] && !strstr(path, g_filter)) return FAULT_NONE;
  if (!path && fn != FN_PTHREAD_CREATE && g_filter[0]) return FAULT_NONE;
  const long k = __atomic_add_fetch(&g_calls, 1, __ATOMIC_SEQ_CST);
  if (k < g_nth || (g_count >= 0 && k >= g_nth + g_count)) return FAULT_NONE;
  __atomic_add_fetch(&g_fired, 1, __ATOMIC_SEQ_CST);
#ifdef O_DIRECT
  if (fd >= 0 && (fcntl(fd, F_GETFL) & O_DIRECT)) __atomic_add_fetch(&g_fired_direct, 1, __ATOMIC_SEQ_CST);
#endif
  return kind;
}

/* The path an fd was opened with (Linux), or "" when unknown. */
static const char *fd_path(int fd, char *buf, size_t size) {
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, buf, size - 1);
  buf[n > 0 ? n : 0] = '\0';
  /* A deleted or replaced file's link reads "path (deleted)". */
  char *tail = strstr(buf, " (deleted)");
  if (tail && tail[10] == '\0') *tail = '\0';
  return buf;
}

/* Runs the file actions and the delay; returns nonzero (errno set) for the
 * kinds that fail the call without calling through. */
static int apply_before(int kind, const char *path) {
  switch (kind) {
    case FAULT_EIO: errno = EIO; return 1;
    case FAULT_EINTR: errno = EINTR; return 1;
    case FAULT_DELAY: {
      struct timespec ts = {(time_t)(g_arg / 1000000), (long)(g_arg % 1000000) * 1000};
      while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
      return 0;
    }
    case FAULT_TRUNCATE: if (path && path[0]) truncate(path, (off_t)g_arg); return 0;
    case FAULT_REPLACE: if (path && path[0] && g_file[0]) rename(g_file, path); return 0;
    case FAULT_UNLINK: if (path && path[0]) unlink(path); return 0;
    default: return 0;
  }
}

/* A short read's bytes past what it reports are unspecified: scribble over
 * them, so a caller that ignores the count gets visibly wrong bytes. */
static void scribble(const struct iovec *iov, int count, size_t from, size_t to) {
  size_t at = 0;
  for (int i = 0; i < count && at < to; at += iov[i].iov_len, ++i) {
    const size_t lo = from > at ? from - at : 0;
    const size_t hi = to - at < iov[i].iov_len ? to - at : iov[i].iov_len;
    if (lo < hi) memset((char *)iov[i].iov_base + lo, 0xA5, hi - lo);
  }
}

/* One body for every positional read: `call` performs the real read into
 * the buffers `iov` (`count` of them). */
#define POSITIONAL_READ(fn, fd, iov, count, call)                        \
  do {                                                                   \
    char path_[4096] = "";                                               \
    const int want_ = __atomic_load_n(&g_kind, __ATOMIC_SEQ_CST) != FAULT_NONE && (g_mask & (fn)); \
    const int kind_ = want_ ? decide((fn), fd_path((fd), path_, sizeof path_), (fd)) : FAULT_NONE; \
    if (kind_ == FAULT_EOF) return 0;                                    \
    if (apply_before(kind_, path_)) return -1;                           \
    const ssize_t got_ = (call);                                         \
    if (kind_ == FAULT_SHORT && got_ >= 2) {                             \
      scribble((iov), (count), (size_t)got_ / 2, (size_t)got_);          \
      return got_ / 2;                                                   \
    }                                                                    \
    return got_;                                                         \
  } while (0)

typedef ssize_t (*pread_fn)(int, void *, size_t, off_t);
typedef ssize_t (*preadv_fn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*preadv2_fn)(int, const struct iovec *, int, off_t, int);
typedef ssize_t (*read_fn)(int, void *, size_t);

ssize_t pread(int fd, void *buf, size_t n, off_t off) {
  REAL(pread, pread_fn);
  const struct iovec one = {buf, n};
  POSITIONAL_READ(FN_PREAD, fd, &one, 1, real_pread(fd, buf, n, off));
}
ssize_t pread64(int fd, void *buf, size_t n, off_t off) {
  REAL(pread64, pread_fn);
  const struct iovec one = {buf, n};
  POSITIONAL_READ(FN_PREAD, fd, &one, 1, real_pread64(fd, buf, n, off));
}
ssize_t __pread_chk(int fd, void *buf, size_t n, off_t off, size_t buflen) {
  (void)buflen;
  return pread(fd, buf, n, off);
}
ssize_t __pread64_chk(int fd, void *buf, size_t n, off_t off, size_t buflen) {
  (void)buflen;
  return pread64(fd, buf, n, off);
}
ssize_t preadv(int fd, const struct iovec *iov, int count, off_t off) {
  REAL(preadv, preadv_fn);
  POSITIONAL_READ(FN_PREADV, fd, iov, count, real_preadv(fd, iov, count, off));
}
ssize_t preadv64(int fd, const struct iovec *iov, int count, off_t off) {
  REAL(preadv64, preadv_fn);
  POSITIONAL_READ(FN_PREADV, fd, iov, count, real_preadv64(fd, iov, count, off));
}
ssize_t preadv2(int fd, const struct iovec *iov, int count, off_t off, int flags) {
  REAL(preadv2, preadv2_fn);
  POSITIONAL_READ(FN_PREADV, fd, iov, count, real_preadv2(fd, iov, count, off, flags));
}
ssize_t preadv64v2(int fd, const struct iovec *iov, int count, off_t off, int flags) {
  REAL(preadv64v2, preadv2_fn);
  POSITIONAL_READ(FN_PREADV, fd, iov, count, real_preadv64v2(fd, iov, count, off, flags));
}

static ssize_t read_impl(int fd, void *buf, size_t n) {
  REAL(read, read_fn);
  char path[4096] = "";
  const int want = __atomic_load_n(&g_kind, __ATOMIC_SEQ_CST) != FAULT_NONE && (g_mask & FN_READ);
  const int kind = want ? decide(FN_READ, fd_path(fd, path, sizeof path), fd) : FAULT_NONE;
  if (kind == FAULT_EOF) return 0;
  if (apply_before(kind, path)) return -1;
  if (kind == FAULT_SHORT && n >= 2) n /= 2; /* read() moves the position: ask for less */
  return real_read(fd, buf, n);
}
ssize_t read(int fd, void *buf, size_t n) { return read_impl(fd, buf, n); }
ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen) {
  (void)buflen;
  return read_impl(fd, buf, n);
}

/* open and friends: the path is the argument (relative paths match on what
 * was passed). The mode argument exists only with O_CREAT or O_TMPFILE. */
static int needs_mode(int flags) {
#ifdef O_TMPFILE
  if ((flags & O_TMPFILE) == O_TMPFILE) return 1;
#endif
  return (flags & O_CREAT) != 0;
}

typedef int (*openat_fn)(int, const char *, int, ...);

static int open_impl(int dirfd, const char *path, int flags, mode_t mode) {
  REAL(openat, openat_fn);
  const int want = __atomic_load_n(&g_kind, __ATOMIC_SEQ_CST) != FAULT_NONE && (g_mask & FN_OPEN);
  const int kind = want ? decide(FN_OPEN, path, -1) : FAULT_NONE;
  if (apply_before(kind, path)) return -1;
  return real_openat(dirfd, path, flags, mode);
}

#define OPEN_MODE(flags, last) \
  mode_t mode = 0; \
  if (needs_mode(flags)) { va_list ap; va_start(ap, last); mode = (mode_t)va_arg(ap, int); va_end(ap); }

int open(const char *path, int flags, ...) { OPEN_MODE(flags, flags); return open_impl(AT_FDCWD, path, flags, mode); }
int open64(const char *path, int flags, ...) { OPEN_MODE(flags, flags); return open_impl(AT_FDCWD, path, flags, mode); }
int openat(int dirfd, const char *path, int flags, ...) { OPEN_MODE(flags, flags); return open_impl(dirfd, path, flags, mode); }
int openat64(int dirfd, const char *path, int flags, ...) { OPEN_MODE(flags, flags); return open_impl(dirfd, path, flags, mode); }
int __open_2(const char *path, int flags) { return open_impl(AT_FDCWD, path, flags, 0); }
int __open64_2(const char *path, int flags) { return open_impl(AT_FDCWD, path, flags, 0); }
int __openat_2(int dirfd, const char *path, int flags) { return open_impl(dirfd, path, flags, 0); }
int __openat64_2(int dirfd, const char *path, int flags) { return open_impl(dirfd, path, flags, 0); }

typedef int (*pthread_create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *), void *arg) {
  REAL(pthread_create, pthread_create_fn);
  const int kind = decide(FN_PTHREAD_CREATE, NULL, -1);
  if (kind == FAULT_EAGAIN) return EAGAIN;
  if (kind == FAULT_DELAY) apply_before(kind, NULL);
  return real_pthread_create(thread, attr, start, arg);
}

/* SAFELOAD_FAULT="kind=eio,fn=pread+preadv,nth=3,count=1,filter=...,arg=...,file=..." */
static const char *const kKindNames[] = {"none", "eio", "eintr", "short", "eof", "eagain",
                                         "delay", "truncate", "replace", "unlink"};
static const char *const kFnNames[] = {"read", "pread", "preadv", "open", "pthread_create"};

__attribute__((constructor)) static void fault_from_environment(void) {
  const char *spec = getenv("SAFELOAD_FAULT");
  if (!spec || !spec[0]) return;
  char buf[8192];
  snprintf(buf, sizeof buf, "%s", spec);
  int kind = FAULT_NONE;
  unsigned mask = 0;
  long nth = 1, count = 1;
  long long arg = 0;
  const char *file = "";
  char *save = NULL;
  for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
    char *value = strchr(item, '=');
    if (!value) continue;
    *value++ = '\0';
    if (!strcmp(item, "kind")) {
      for (int i = 0; i < (int)(sizeof kKindNames / sizeof *kKindNames); ++i)
        if (!strcmp(value, kKindNames[i])) kind = i;
    } else if (!strcmp(item, "fn")) {
      char *save2 = NULL;
      for (char *f = strtok_r(value, "+", &save2); f; f = strtok_r(NULL, "+", &save2))
        for (int i = 0; i < (int)(sizeof kFnNames / sizeof *kFnNames); ++i)
          if (!strcmp(f, kFnNames[i])) mask |= 1u << i;
    } else if (!strcmp(item, "nth")) {
      nth = strtol(value, NULL, 10);
    } else if (!strcmp(item, "count")) {
      count = strtol(value, NULL, 10);
    } else if (!strcmp(item, "filter")) {
      fault_set_filter(value);
    } else if (!strcmp(item, "arg")) {
      arg = strtoll(value, NULL, 10);
    } else if (!strcmp(item, "file")) {
      file = value;
    }
  }
  fault_set_arg(arg, file);
  if (kind != FAULT_NONE && mask) fault_arm(kind, mask, nth, count);
}
