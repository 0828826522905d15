/*
 * log.c: the error log.
 */
#include "core/xrayd.h"
#include "core/log.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

const char *const xr_log_level_names[] = {"emerg",  "alert", "crit",  "error", "warn",
                                          "notice", "info",  "debug", NULL};

static struct {
    int fd;
    xr_log_level_t level;
    char path[4096];
    pid_t pid;
} xr_log_state = {STDERR_FILENO, XR_LOG_INFO, "stderr", 0};

static int xr_log_open_path(const char *path)
{
    if (strcmp(path, "stderr") == 0)
        return STDERR_FILENO;
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

int xr_log_open(const char *path, xr_log_level_t level)
{
    int fd = xr_log_open_path(path);
    if (fd < 0)
        return XR_ERROR;
    if (xr_log_state.fd != STDERR_FILENO && xr_log_state.fd != fd)
        close(xr_log_state.fd);
    xr_log_state.fd = fd;
    xr_log_state.level = level;
    snprintf(xr_log_state.path, sizeof(xr_log_state.path), "%s", path);
    return XR_OK;
}

int xr_log_reopen(void)
{
    int fd = xr_log_open_path(xr_log_state.path);
    if (fd < 0) {
        int err = errno;
        xr_log_errno(XR_LOG_ALERT, err, "cannot reopen error log \"%s\"", xr_log_state.path);
        return XR_ERROR;
    }
    if (fd != xr_log_state.fd && xr_log_state.fd != STDERR_FILENO)
        close(xr_log_state.fd);
    xr_log_state.fd = fd;
    return XR_OK;
}

void xr_log_set_level(xr_log_level_t level)
{
    xr_log_state.level = level;
}
xr_log_level_t xr_log_get_level(void)
{
    return xr_log_state.level;
}
int xr_log_fd(void)
{
    return xr_log_state.fd;
}
void xr_log_set_pid(void)
{
    xr_log_state.pid = getpid();
}

static void xr_log_write(xr_log_level_t level, const xr_session_t *s, int err, const char *fmt,
                         va_list ap)
{
    char line[2048];
    size_t n = 0, cap = sizeof(line) - 1; /* room for '\n' */
    struct timespec ts;
    struct tm tm;

    if (xr_log_state.pid == 0)
        xr_log_state.pid = getpid();
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n += strftime(line, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t) snprintf(line + n, cap - n, ".%03ldZ [%s] %d: ", ts.tv_nsec / 1000000,
                           xr_log_level_names[level], (int) xr_log_state.pid);
    if (s != NULL && n < cap)
        n += (size_t) snprintf(line + n, cap - n, "*%llu ", (unsigned long long) s->id);
    if (n < cap) {
        int w = vsnprintf(line + n, cap - n, fmt, ap);
        if (w > 0)
            n += (size_t) w;
    }
    if (err != 0 && n < cap)
        n += (size_t) snprintf(line + n, cap - n, " (%d: %s)", err, strerror(err));
    if (s != NULL && n < cap)
        n += xr__log_session_context(s, line + n, cap - n);
    if (n > cap)
        n = cap;
    /* Control characters from peers must not forge log lines. */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) line[i] < 0x20)
            line[i] = ' ';
    line[n++] = '\n';
    ssize_t w = write(xr_log_state.fd, line, n);
    (void) w; /* a full disk must not stop relaying; nothing else to do */
}

void xr_log(xr_log_level_t level, const char *fmt, ...)
{
    if (level > xr_log_state.level)
        return;
    va_list ap;
    va_start(ap, fmt);
    xr_log_write(level, NULL, 0, fmt, ap);
    va_end(ap);
}

void xr_log_errno(xr_log_level_t level, int err, const char *fmt, ...)
{
    if (level > xr_log_state.level)
        return;
    va_list ap;
    va_start(ap, fmt);
    xr_log_write(level, NULL, err, fmt, ap);
    va_end(ap);
}

void xr_log_session(xr_log_level_t level, const xr_session_t *s, const char *fmt, ...)
{
    if (level > xr_log_state.level)
        return;
    va_list ap;
    va_start(ap, fmt);
    xr_log_write(level, s, 0, fmt, ap);
    va_end(ap);
}
