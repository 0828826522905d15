/*
 * xray.c: the `xray` command-line companion of xrayd.  It parses the
 * global flags and hands off to one subcommand; each subcommand lives in
 * its own file, takes argv starting at its own name, and returns the exit
 * code (0 success, 1 failure, 2 bad usage).
 */
#include "core/xrayd.h"
#include "cli/connect.h"
#include "cli/forward.h"
#include "cli/helper.h"
#include "cli/listen.h"
#include "cli/pki.h"
#include "cli/socks.h"
#include "cli/status.h"

#include <mbedtls/version.h>
#include <sodium.h>
#include <stdio.h>

#define XR_XRAY_EXIT_USAGE 2

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} xr_xray_cmd_t;

/* New subcommands (connect, listen, status, tun) add a row here. */
static const xr_xray_cmd_t xr_xray_cmds[] = {
    {"pki", xr_pki_main, "make a CA, issue agent and application certificates, show identities"},
    {"connect", xr_connect_main, "connect to an official address through the agents"},
    {"forward", xr_forward_main, "carry a local port's connections to an official address"},
    {"helper", xr_helper_main, "carry an application's connections for libxray (started by it)"},
    {"listen", xr_listen_main, "serve on a port bound through the agent (stdin/stdout or --exec)"},
    {"socks", xr_socks_main, "a local SOCKS5 front that carries connections through the agents"},
    {"status", xr_status_main, "show an agent's registrations, sessions and counters"},
};

static void xr_xray_usage(FILE *out)
{
    fprintf(out, "usage: xray [-V] [-h] COMMAND [ARGS...]\n"
                 "\n"
                 "The command-line companion of xrayd.\n"
                 "\n"
                 "commands:\n");
    for (size_t i = 0; i < XR_ARRAY_SIZE(xr_xray_cmds); i++)
        fprintf(out, "  %-8s %s\n", xr_xray_cmds[i].name, xr_xray_cmds[i].summary);
    fprintf(out, "\n"
                 "  -V, --version   print the version and the libraries it was built with\n"
                 "  -h, --help      this text\n"
                 "\n"
                 "'xray COMMAND --help' describes one command.\n");
}

static void xr_xray_version(void)
{
    char mbed[32];
    mbedtls_version_get_string(mbed);
    printf("xray version %s\n", XR_VERSION);
    printf("built with mbedTLS %s, libsodium %s\n", mbed, sodium_version_string());
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        xr_xray_usage(stderr);
        return XR_XRAY_EXIT_USAGE;
    }
    const char *a = argv[1];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0) {
        xr_xray_usage(stdout);
        return 0;
    }
    if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
        xr_xray_version();
        return 0;
    }
    for (size_t i = 0; i < XR_ARRAY_SIZE(xr_xray_cmds); i++)
        if (strcmp(a, xr_xray_cmds[i].name) == 0)
            return xr_xray_cmds[i].run(argc - 1, argv + 1);
    if (a[0] == '-')
        fprintf(stderr, "xray: unknown option %s\n", a);
    else
        fprintf(stderr, "xray: unknown command \"%s\"\n", a);
    fprintf(stderr, "Try 'xray --help'.\n");
    return XR_XRAY_EXIT_USAGE;
}
