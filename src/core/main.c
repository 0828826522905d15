/*
 * main.c: command-line flags; everything else is handed off.
 */
#include "core/xrayd.h"
#include "core/gen.h"
#include "core/log.h"
#include "core/master.h"
#include "core/proctitle.h"
#include "core/shm.h"
#include "event/listener.h"
#include "common/gcm.h"

#include <fcntl.h>
#include <mbedtls/version.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>
#include <yaml.h>

static void xr_usage(FILE *out)
{
    fprintf(out,
            "usage: xrayd [-c FILE] [-t] [-s reload|stop|quit|reopen|upgrade] [-V]\n"
            "             [--list-directives]\n"
            "\n"
            "  -c FILE             configuration file (default %s)\n"
            "  -t                  test the configuration and exit\n"
            "  -s SIGNAL           signal the running master: reload, stop (fast), quit\n"
            "                      (graceful), reopen (log files) or upgrade (the binary)\n"
            "  -V                  print version, libraries and configure options\n"
            "  --list-directives   print every directive: name, contexts, type, default, doc\n"
            "  -h, --help          this text\n",
            XR_CONF_PATH);
}

static void xr_version(void)
{
    char mbed[32];
    mbedtls_version_get_string(mbed);
    printf("xrayd version %s\n", XR_VERSION);
    printf("built with libuv %s (running %s), mbedTLS %s, libyaml %s, libsodium %s\n",
           UV_VERSION_MAJOR == 1 ? uv_version_string() : "?", uv_version_string(), mbed,
           yaml_get_version_string(), sodium_version_string());
    printf("TLS record AES-256-GCM: %s\n", xr_gcm_impl_name(xr_gcm_impl()));
    printf("module ABI %d, build signature %s\n", XR_MODULE_ABI, XR_BUILD_SIGNATURE);
    printf("compiler: %s\n", XR_CC);
    printf("configure arguments:%s%s\n", XR_CONFIGURE_ARGS[0] ? " " : "", XR_CONFIGURE_ARGS);
}

static int xr_send_signal(xr_gen_t *g, const char *name)
{
    static const struct {
        const char *name;
        int sig;
    } map[] = {{"reload", SIGHUP},
               {"stop", SIGTERM},
               {"quit", SIGQUIT},
               {"reopen", SIGUSR1},
               {"upgrade", SIGUSR2}};
    int sig = 0;
    for (size_t i = 0; i < XR_ARRAY_SIZE(map); i++)
        if (strcmp(map[i].name, name) == 0)
            sig = map[i].sig;
    if (sig == 0) {
        fprintf(stderr,
                "xrayd: unknown signal \"%s\" (use reload, stop, quit, reopen or upgrade)\n", name);
        return 1;
    }
    FILE *fp = fopen(g->main.pid, "r");
    if (fp == NULL) {
        fprintf(stderr, "xrayd: cannot open pid file \"%s\": %s (is xrayd running?)\n", g->main.pid,
                strerror(errno));
        return 1;
    }
    int pid = 0;
    int ok = fscanf(fp, "%d", &pid) == 1 && pid > 1;
    fclose(fp);
    if (!ok) {
        fprintf(stderr, "xrayd: invalid pid file \"%s\"\n", g->main.pid);
        return 1;
    }
    if (kill(pid, sig) != 0) {
        fprintf(stderr, "xrayd: kill(%d, %s) failed: %s\n", pid, name, strerror(errno));
        return 1;
    }
    return 0;
}

/* Refuse to start twice on one pid file while the first one lives. */
static int xr_check_running(const char *pid_path)
{
    FILE *fp = fopen(pid_path, "r");
    if (fp == NULL)
        return 0;
    int pid = 0;
    int ok = fscanf(fp, "%d", &pid) == 1;
    fclose(fp);
    if (!ok || pid <= 1 || pid == getpid() || kill(pid, 0) != 0)
        return 0;
    char path[64], comm[64] = "";
    snprintf(path, sizeof(path), "/proc/%d/comm", pid);
    fp = fopen(path, "r");
    if (fp != NULL) {
        if (fgets(comm, sizeof(comm), fp) == NULL)
            comm[0] = '\0';
        fclose(fp);
    }
    return strncmp(comm, "xrayd", 5) == 0 ? pid : 0;
}

static int xr_daemonize(void)
{
    pid_t pid = fork();
    if (pid < 0)
        return XR_ERROR;
    if (pid > 0)
        _exit(0);
    if (setsid() < 0)
        return XR_ERROR;
    int fd = open("/dev/null", O_RDWR);
    if (fd < 0)
        return XR_ERROR;
    dup2(fd, STDIN_FILENO);
    dup2(fd, STDOUT_FILENO);
    if (xr_log_fd() != STDERR_FILENO)
        dup2(xr_log_fd(), STDERR_FILENO);
    else
        dup2(fd, STDERR_FILENO);
    if (fd > STDERR_FILENO)
        close(fd);
    xr_log_set_pid();
    return XR_OK;
}

int main(int argc, char **argv)
{
    const char *conf = XR_CONF_PATH, *signame = NULL;
    int test = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-c") == 0 && i + 1 < argc) {
            conf = argv[++i];
        } else if (strcmp(a, "-t") == 0) {
            test = 1;
        } else if (strcmp(a, "-s") == 0 && i + 1 < argc) {
            signame = argv[++i];
        } else if (strcmp(a, "-V") == 0 || strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
            xr_version();
            return 0;
        } else if (strcmp(a, "--list-directives") == 0) {
            xr_gen_list_directives(stdout);
            return 0;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            xr_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "xrayd: invalid option \"%s\"\n", a);
            xr_usage(stderr);
            return 1;
        }
    }

    if (sodium_init() < 0) {
        fprintf(stderr, "xrayd: libsodium failed to initialise\n");
        return 1;
    }
    char err[1024];
    xr_gen_t *g = xr_gen_load(conf, err, sizeof(err));
    if (g == NULL) {
        fprintf(stderr, "%s\n", err);
        if (test)
            fprintf(stderr, "xrayd: configuration test failed\n");
        return 1;
    }
    if (signame != NULL) {
        int rc = xr_send_signal(g, signame);
        xr_gen_free(g);
        return rc;
    }
    if (test) {
        /* A dry run opens what the daemon would open, except sockets. */
        if (strcmp(g->main.error_log, "stderr") != 0) {
            int fd = open(g->main.error_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
            if (fd < 0) {
                fprintf(stderr, "%s: \"error_log\": cannot open \"%s\": %s\n", g->file,
                        g->main.error_log, strerror(errno));
                xr_gen_free(g);
                return 1;
            }
            close(fd);
        }
        fprintf(stderr, "configuration ok: %s\n", g->file);
        xr_gen_free(g);
        return 0;
    }

    /* A binary upgrade: the old master runs us and hands its sockets over. */
    const char *up = getenv("XRAYD_UPGRADE_FD");
    int upgrade_fd = up != NULL ? atoi(up) : -1;
    unsetenv("XRAYD_UPGRADE_FD");
    int other = upgrade_fd >= 0 ? 0 : xr_check_running(g->main.pid);
    if (other) {
        fprintf(stderr, "xrayd: already running as pid %d (pid file %s)\n", other, g->main.pid);
        xr_gen_free(g);
        return 1;
    }
    if (xr_log_open(g->main.error_log, (xr_log_level_t) g->main.log_level) != XR_OK) {
        fprintf(stderr, "xrayd: cannot open error log \"%s\": %s\n", g->main.error_log,
                strerror(errno));
        xr_gen_free(g);
        return 1;
    }
    /* Two descriptors per relay: take the whole hard limit, as a distro's
     * default soft limit of 1024 would cap a worker at ~500 relays. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (xr_shm_init() != XR_OK || xr_shm_assign(g, err, sizeof(err)) != XR_OK) {
        xr_log_errno(XR_LOG_EMERG, errno, "cannot set up shared counters");
        xr_gen_free(g);
        return 1;
    }
    if (upgrade_fd < 0 && xr_listeners_open(g, err, sizeof(err)) != XR_OK) {
        xr_log(XR_LOG_EMERG, "%s", err);
        if (xr_log_fd() != STDERR_FILENO)
            fprintf(stderr, "xrayd: %s\n", err);
        xr_gen_free(g);
        return 1;
    }
    if (g->main.daemon && upgrade_fd < 0) {
        if (strcmp(g->main.error_log, "stderr") == 0)
            xr_log(XR_LOG_WARN, "daemon: on with error_log: stderr, the error log is discarded");
        if (xr_daemonize() != XR_OK) {
            xr_log_errno(XR_LOG_EMERG, errno, "cannot run as a daemon");
            return 1;
        }
    }
    /* Flags are parsed: argv's memory may now hold the process title. */
    char title[4200];
    snprintf(title, sizeof(title), "xrayd: master process %s", g->file);
    xr_proctitle_init(argc, argv);
    xr_proctitle_set(title);
    return xr_master_run(g, g->file, upgrade_fd);
}
