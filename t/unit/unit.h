/*
 * unit.h: a tiny test harness in the manner of libuv's test/runner.c and
 * test/task.h (STYLE 19).
 *
 * A test file includes this header once and declares tests with TEST():
 *
 *     TEST(pool_alloc_is_zeroed)
 *     {
 *         ASSERT_EQ(p[0], 0);
 *     }
 *
 * main() (defined here) runs every test in its own forked process under an
 * alarm, so a crash, a hang or a leaked static in one test cannot affect
 * the next, and writes TAP:
 *
 *     1..N
 *     ok 1 - pool_alloc_is_zeroed
 *     not ok 2 - something
 *     # t/unit/test_x.c:42: ASSERT_EQ(a, b) failed: a = 1, b = 2
 *
 * The exit status is 1 when any test failed, else 0.
 *
 * Usage: test_x [-l] [NAME...]   (-l lists the tests; NAMEs select some)
 * Environment: UNIT_TIMEOUT seconds per test (default 30); UNIT_NOFORK=1
 * runs tests in-process, for a debugger (the first failure then ends it).
 */
#ifndef XR_UNIT_H
#define XR_UNIT_H

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define UNIT_MAX_TESTS 512
#define UNIT_EXIT_SKIP 77 /* a test that calls SKIP() exits with this */

typedef void (*unit_fn)(void);

typedef struct {
    const char *name;
    unit_fn fn;
} unit_test_t;

static unit_test_t unit_tests[UNIT_MAX_TESTS];
static int unit_ntests;

static void unit_register(const char *name, unit_fn fn)
{
    if (unit_ntests == UNIT_MAX_TESTS) {
        fprintf(stderr, "unit.h: more than %d tests\n", UNIT_MAX_TESTS);
        abort();
    }
    unit_tests[unit_ntests].name = name;
    unit_tests[unit_ntests].fn = fn;
    unit_ntests++;
}

/* Declare and register a test.  Constructors run in source order with
 * GCC and clang, so tests run in the order they are written. */
#define TEST(name)                                                                                 \
    static void unit_test_##name(void);                                                            \
    static void unit_reg_##name(void) __attribute__((constructor));                                \
    static void unit_reg_##name(void)                                                              \
    {                                                                                              \
        unit_register(#name, unit_test_##name);                                                    \
    }                                                                                              \
    static void unit_test_##name(void)

/* ---- failure reporting --------------------------------------------------- */

/* A failed assertion: print one TAP diagnostic line and end the test's
 * process.  Diagnostics go to stdout, beside the TAP lines they explain. */
__attribute__((noreturn, unused, format(printf, 3, 4))) static void
unit_fail(const char *file, int line, const char *fmt, ...);

static void unit_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    printf("# %s:%d: ", file, line);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (getenv("UNIT_NOFORK") != NULL)
        abort(); /* stop where a debugger can see it */
    _exit(1);
}

/* Print a string operand safely: NULL as (null), control bytes escaped. */
__attribute__((unused)) static const char *unit_quote(const char *s, char *buf, size_t size)
{
    if (s == NULL)
        return "(null)";
    size_t o = 0;
    buf[o++] = '"';
    for (; *s && o + 6 < size; s++) {
        unsigned char c = (unsigned char) *s;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char) c;
        } else if (c < 0x20 || c >= 0x7f) {
            o += (size_t) snprintf(buf + o, size - o, "\\x%02x", c);
        } else {
            buf[o++] = (char) c;
        }
    }
    if (*s)
        o += (size_t) snprintf(buf + o, size - o, "...");
    if (o < size - 1)
        buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* Integer comparisons: both operands are evaluated once, as intmax_t
 * (unsigned values above INTMAX_MAX print as negative numbers). */
#define UNIT_ICMP(a, op, b, mname)                                                                 \
    do {                                                                                           \
        intmax_t unit_a_ = (intmax_t) (a), unit_b_ = (intmax_t) (b);                               \
        if (!(unit_a_ op unit_b_))                                                                 \
            unit_fail(__FILE__, __LINE__,                                                          \
                      mname "(%s, %s) failed: %s = %" PRIdMAX ", %s = %" PRIdMAX, #a, #b, #a,      \
                      unit_a_, #b, unit_b_);                                                       \
    } while (0)

#define ASSERT_EQ(a, b) UNIT_ICMP(a, ==, b, "ASSERT_EQ")
#define ASSERT_NE(a, b) UNIT_ICMP(a, !=, b, "ASSERT_NE")
#define ASSERT_LT(a, b) UNIT_ICMP(a, <, b, "ASSERT_LT")
#define ASSERT_LE(a, b) UNIT_ICMP(a, <=, b, "ASSERT_LE")
#define ASSERT_GT(a, b) UNIT_ICMP(a, >, b, "ASSERT_GT")
#define ASSERT_GE(a, b) UNIT_ICMP(a, >=, b, "ASSERT_GE")

/* Pointer comparisons. */
#define UNIT_PCMP(a, op, b, mname)                                                                 \
    do {                                                                                           \
        const void *unit_a_ = (const void *) (a), *unit_b_ = (const void *) (b);                   \
        if (!(unit_a_ op unit_b_))                                                                 \
            unit_fail(__FILE__, __LINE__, mname "(%s, %s) failed: %s = %p, %s = %p", #a, #b, #a,   \
                      unit_a_, #b, unit_b_);                                                       \
    } while (0)

#define ASSERT_PTR_EQ(a, b) UNIT_PCMP(a, ==, b, "ASSERT_PTR_EQ")
#define ASSERT_PTR_NE(a, b) UNIT_PCMP(a, !=, b, "ASSERT_PTR_NE")
#define ASSERT_NULL(a)      UNIT_PCMP(a, ==, NULL, "ASSERT_NULL")
#define ASSERT_NOT_NULL(a)  UNIT_PCMP(a, !=, NULL, "ASSERT_NOT_NULL")

/* String comparisons; NULL equals only NULL. */
#define UNIT_SCMP(a, b, want_eq, mname)                                                            \
    do {                                                                                           \
        const char *unit_a_ = (a), *unit_b_ = (b);                                                 \
        int unit_eq_ = (unit_a_ == NULL || unit_b_ == NULL) ? unit_a_ == unit_b_                   \
                                                            : strcmp(unit_a_, unit_b_) == 0;       \
        if (unit_eq_ != (want_eq)) {                                                               \
            char unit_qa_[1024], unit_qb_[1024];                                                   \
            unit_fail(__FILE__, __LINE__, mname "(%s, %s) failed:\n#   %s = %s\n#   %s = %s", #a,  \
                      #b, #a, unit_quote(unit_a_, unit_qa_, sizeof(unit_qa_)), #b,                 \
                      unit_quote(unit_b_, unit_qb_, sizeof(unit_qb_)));                            \
        }                                                                                          \
    } while (0)

#define ASSERT_STREQ(a, b) UNIT_SCMP(a, b, 1, "ASSERT_STREQ")
#define ASSERT_STRNE(a, b) UNIT_SCMP(a, b, 0, "ASSERT_STRNE")

/* Byte ranges. */
#define ASSERT_MEMEQ(a, b, n)                                                                      \
    do {                                                                                           \
        size_t unit_n_ = (n);                                                                      \
        if (memcmp((a), (b), unit_n_) != 0)                                                        \
            unit_fail(__FILE__, __LINE__, "ASSERT_MEMEQ(%s, %s, %zu) failed", #a, #b, unit_n_);    \
    } while (0)

#define ASSERT_TRUE(c)                                                                             \
    do {                                                                                           \
        if (!(c))                                                                                  \
            unit_fail(__FILE__, __LINE__, "ASSERT_TRUE(%s) failed", #c);                           \
    } while (0)

#define ASSERT_FALSE(c)                                                                            \
    do {                                                                                           \
        if (c)                                                                                     \
            unit_fail(__FILE__, __LINE__, "ASSERT_FALSE(%s) failed", #c);                          \
    } while (0)

#define FAIL(...) unit_fail(__FILE__, __LINE__, __VA_ARGS__)

/* Wait for child pid, a test's helper process: it must exit 0 (its other
 * codes say which of its checks failed). */
#define ASSERT_CHILD_OK(pid)                                                                       \
    do {                                                                                           \
        pid_t unit_pid_ = (pid);                                                                   \
        int unit_st_ = 0;                                                                          \
        if (waitpid(unit_pid_, &unit_st_, 0) != unit_pid_)                                         \
            unit_fail(__FILE__, __LINE__, "waitpid(%d): %s", (int) unit_pid_, strerror(errno));    \
        if (!WIFEXITED(unit_st_) || WEXITSTATUS(unit_st_) != 0)                                    \
            unit_fail(__FILE__, __LINE__, "child %s failed: status %#x", #pid, unit_st_);          \
    } while (0)

/* Skip the rest of this test (reported as "ok N - name # SKIP why"). */
#define SKIP(why)                                                                                  \
    do {                                                                                           \
        printf("# skip: %s\n", (why));                                                             \
        fflush(stdout);                                                                            \
        _exit(UNIT_EXIT_SKIP);                                                                     \
    } while (0)

/* ---- the runner ---------------------------------------------------------- */

static int unit_selected(const char *name, int argc, char **argv, int first)
{
    if (first >= argc)
        return 1;
    for (int i = first; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

/* Run one test in a child; 0 ok, 1 failed, 2 skipped. */
static int unit_run_one(const unit_test_t *t, unsigned timeout)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        printf("# fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        signal(SIGALRM, SIG_DFL);
        alarm(timeout);
        t->fn();
        fflush(stdout);
        fflush(stderr);
        _exit(0);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            printf("# waitpid: %s\n", strerror(errno));
            return 1;
        }
    }
    if (WIFEXITED(status)) {
        if (WEXITSTATUS(status) == 0)
            return 0;
        if (WEXITSTATUS(status) == UNIT_EXIT_SKIP)
            return 2;
        if (WEXITSTATUS(status) != 1)
            printf("# exited with status %d\n", WEXITSTATUS(status));
        return 1;
    }
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        if (sig == SIGALRM)
            printf("# timed out after %u s\n", timeout);
        else
            printf("# killed by signal %d (%s)\n", sig, strsignal(sig));
    }
    return 1;
}

int main(int argc, char **argv)
{
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "-l") == 0) {
        for (int i = 0; i < unit_ntests; i++)
            printf("%s\n", unit_tests[i].name);
        return 0;
    }
    const char *to = getenv("UNIT_TIMEOUT");
    unsigned timeout = to != NULL && atoi(to) > 0 ? (unsigned) atoi(to) : 30;
    int nofork = getenv("UNIT_NOFORK") != NULL;

    int n = 0;
    for (int i = 0; i < unit_ntests; i++)
        n += unit_selected(unit_tests[i].name, argc, argv, first);
    if (n == 0) {
        fprintf(stderr, "%s: no test matches\n", argv[0]);
        return 2;
    }
    printf("1..%d\n", n);

    int k = 0, failed = 0;
    for (int i = 0; i < unit_ntests; i++) {
        const unit_test_t *t = &unit_tests[i];
        if (!unit_selected(t->name, argc, argv, first))
            continue;
        k++;
        int rc;
        if (nofork) {
            t->fn();
            rc = 0;
        } else {
            rc = unit_run_one(t, timeout);
        }
        if (rc == 0)
            printf("ok %d - %s\n", k, t->name);
        else if (rc == 2)
            printf("ok %d - %s # SKIP\n", k, t->name);
        else
            printf("not ok %d - %s\n", k, t->name);
        failed += rc == 1;
    }
    if (failed)
        printf("# %d of %d tests failed\n", failed, n);
    fflush(stdout);
    return failed ? 1 : 0;
}

#endif /* XR_UNIT_H */
