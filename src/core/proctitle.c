/*
 * proctitle.c: rewrite argv[0] in place.  The kernel shows the memory
 * from argv[0] to the end of the environment strings, so the environment
 * is copied elsewhere first and that whole span becomes the title.
 */
#include "core/xrayd.h"
#include "core/proctitle.h"

#include <stdio.h>
#include <sys/prctl.h>

extern char **environ;

static char *xr_title_start;
static size_t xr_title_len;

void xr_proctitle_init(int argc, char **argv)
{
    if (argc < 1 || argv[0] == NULL)
        return;
    char *end = argv[0] + strlen(argv[0]) + 1;
    for (int i = 1; i < argc; i++)
        if (argv[i] == end)
            end = argv[i] + strlen(argv[i]) + 1;
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **env = xr_calloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        if (environ[i] == end)
            end = environ[i] + strlen(environ[i]) + 1;
        env[i] = xr_strdup(environ[i]);
    }
    environ = env;
    /* argv[1..] keep pointing into the span; main() has parsed them. */
    xr_title_start = argv[0];
    xr_title_len = (size_t) (end - argv[0]);
}

void xr_proctitle_set(const char *title)
{
    char comm[16];
    snprintf(comm, sizeof(comm), "%s", title);
    prctl(PR_SET_NAME, comm);
    if (xr_title_start == NULL || xr_title_len < 2)
        return;
    size_t n = strlen(title);
    if (n > xr_title_len - 1)
        n = xr_title_len - 1;
    memcpy(xr_title_start, title, n);
    memset(xr_title_start + n, '\0', xr_title_len - n);
}
