/*
 * client_conf.c: where an XRAY application finds its agent and its
 * certificates (see client.h, xr_client_conf_fill).
 */
#include "common/common.h"
#include "lib/client.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* The settings a client file may carry, and where each goes. */
typedef struct {
    const char *key;
    const char *env;
    size_t off_conf; /* offsetof(xr_client_conf_t, ...) */
    size_t off_buf;  /* offsetof(xr_client_conf_buf_t, ...) */
    size_t len;
    int path; /* relative to the file's directory */
} xr_cc_field_t;

#define XR_CC_FIELD(k, env, f, path)                                                               \
    {                                                                                              \
        k, env, offsetof(xr_client_conf_t, f), offsetof(xr_client_conf_buf_t, f),                  \
            sizeof(((xr_client_conf_buf_t *) 0)->f), path                                          \
    }

static const xr_cc_field_t xr_cc_fields[] = {
    XR_CC_FIELD("agent", "XRAY_AGENT", agent, 0),
    XR_CC_FIELD("agent_name", "XRAY_AGENT_NAME", agent_name, 0),
    XR_CC_FIELD("cert", "XRAY_CERT", cert, 1),
    XR_CC_FIELD("key", "XRAY_KEY", key, 1),
    XR_CC_FIELD("ca", "XRAY_CA", ca, 1),
};

static const char **xr_cc_slot(xr_client_conf_t *cf, const xr_cc_field_t *f)
{
    return (const char **) (void *) ((char *) cf + f->off_conf);
}

static char *xr_cc_buf(xr_client_conf_buf_t *b, const xr_cc_field_t *f)
{
    return (char *) b + f->off_buf;
}

static const xr_cc_field_t *xr_cc_field(const char *key)
{
    for (size_t i = 0; i < sizeof(xr_cc_fields) / sizeof(xr_cc_fields[0]); i++)
        if (strcmp(xr_cc_fields[i].key, key) == 0)
            return &xr_cc_fields[i];
    return NULL;
}

/* Store value for field f, a path made absolute against dir (the file's
 * directory) where it is one.  0, or -1 if it does not fit. */
static int xr_cc_set(xr_client_conf_t *cf, xr_client_conf_buf_t *b, const xr_cc_field_t *f,
                     const char *value, const char *dir)
{
    char *dst = xr_cc_buf(b, f);
    int n = f->path && value[0] != '/' && dir != NULL ? snprintf(dst, f->len, "%s/%s", dir, value)
                                                      : snprintf(dst, f->len, "%s", value);
    if (n < 0 || (size_t) n >= f->len)
        return -1;
    *xr_cc_slot(cf, f) = dst;
    return 0;
}

/* Parse a client file from p (its name for messages, dir for relative
 * paths) into the settings cf has not set yet.  0, or -1 with err. */
static int xr_cc_parse(yaml_parser_t *p, const char *name, const char *dir, xr_client_conf_t *cf,
                       xr_client_conf_buf_t *b, char *err, size_t errlen)
{
    yaml_event_t ev;
    int rc = 0, depth = 0, done = 0;
    const xr_cc_field_t *want = NULL; /* the key whose value comes next */
    int expect_key = 1;
    while (!done && rc == 0) {
        if (!yaml_parser_parse(p, &ev)) {
            snprintf(err, errlen, "%s:%zu:%zu: %s", name, p->problem_mark.line + 1,
                     p->problem_mark.column + 1, p->problem ? p->problem : "bad YAML");
            return -1;
        }
        size_t line = ev.start_mark.line + 1, col = ev.start_mark.column + 1;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = 1; break;
        case YAML_DOCUMENT_START_EVENT:
            if (depth != 0 || want != NULL) {
                snprintf(err, errlen, "%s:%zu:%zu: one document only", name, line, col);
                rc = -1;
            }
            break;
        case YAML_MAPPING_START_EVENT:
            if (depth++ != 0) {
                snprintf(err, errlen, "%s:%zu:%zu: a value must be a string, not a mapping", name,
                         line, col);
                rc = -1;
            }
            break;
        case YAML_MAPPING_END_EVENT: depth--; break;
        case YAML_SEQUENCE_START_EVENT:
            snprintf(err, errlen, "%s:%zu:%zu: %s", name, line, col,
                     depth == 0 ? "the file must be a mapping of settings"
                                : "a value must be a string, not a list");
            rc = -1;
            break;
        case YAML_ALIAS_EVENT:
            snprintf(err, errlen, "%s:%zu:%zu: aliases are not allowed here", name, line, col);
            rc = -1;
            break;
        case YAML_SCALAR_EVENT: {
            const char *s = (const char *) ev.data.scalar.value;
            if (depth == 0) {
                snprintf(err, errlen, "%s:%zu:%zu: the file must be a mapping of settings", name,
                         line, col);
                rc = -1;
            } else if (expect_key) {
                want = xr_cc_field(s);
                if (want == NULL) {
                    snprintf(err, errlen,
                             "%s:%zu:%zu: unknown setting \"%.64s\" (known: agent, agent_name, "
                             "cert, key, ca)",
                             name, line, col, s);
                    rc = -1;
                }
                expect_key = 0;
            } else {
                /* What the flags or the environment set wins. */
                if (*xr_cc_slot(cf, want) == NULL && s[0] != '\0' &&
                    xr_cc_set(cf, b, want, s, dir) < 0) {
                    snprintf(err, errlen, "%s:%zu:%zu: \"%s\" is too long", name, line, col,
                             want->key);
                    rc = -1;
                }
                expect_key = 1;
            }
            break;
        }
        default: break;
        }
        yaml_event_delete(&ev);
    }
    return rc;
}

/* Read the client file at path into the settings cf has not set yet.
 * 1 when read, 0 when there is no such file, -1 with err. */
static int xr_cc_read_file(const char *path, xr_client_conf_t *cf, xr_client_conf_buf_t *b,
                           char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    yaml_parser_t p;
    yaml_parser_initialize(&p);
    yaml_parser_set_input_file(&p, f);
    int rc = xr_cc_parse(&p, path, dir, cf, b, err, errlen);
    yaml_parser_delete(&p);
    fclose(f);
    return rc < 0 ? -1 : 1;
}

int xr_client_conf_parse(const void *text, size_t len, xr_client_conf_t *cf,
                         xr_client_conf_buf_t *b, char *err, size_t errlen)
{
    yaml_parser_t p;
    yaml_parser_initialize(&p);
    yaml_parser_set_input_string(&p, text, len);
    int rc = xr_cc_parse(&p, "(text)", NULL, cf, b, err, errlen);
    yaml_parser_delete(&p);
    return rc;
}

int xr_client_conf_fill(xr_client_conf_t *cf, xr_client_conf_buf_t *b, char *err, size_t errlen)
{
    memset(b, 0, sizeof(*b));
    for (size_t i = 0; i < sizeof(xr_cc_fields) / sizeof(xr_cc_fields[0]); i++) {
        const xr_cc_field_t *f = &xr_cc_fields[i];
        const char *e = getenv(f->env);
        if (*xr_cc_slot(cf, f) == NULL && e != NULL && e[0] != '\0' &&
            xr_cc_set(cf, b, f, e, NULL) < 0) {
            snprintf(err, errlen, "$%s is too long", f->env);
            return -1;
        }
    }
    /* $XRAY_CONFIG must exist; the default places need not. */
    const char *named = getenv("XRAY_CONFIG");
    if (named != NULL && named[0] != '\0') {
        int rc = xr_cc_read_file(named, cf, b, err, errlen);
        if (rc == 0)
            snprintf(err, errlen, "$XRAY_CONFIG names %s, which does not exist", named);
        if (rc <= 0)
            return -1;
        snprintf(b->file, sizeof(b->file), "%s", named);
    } else {
        char user[PATH_MAX] = "";
        const char *home = getenv("HOME");
        if (home != NULL && home[0] != '\0')
            snprintf(user, sizeof(user), "%s/.config/xray/client.yaml", home);
        const char *places[] = {user, "/etc/xray/client.yaml"};
        for (size_t i = 0; i < 2; i++) {
            if (places[i][0] == '\0')
                continue;
            int rc = xr_cc_read_file(places[i], cf, b, err, errlen);
            if (rc < 0)
                return -1;
            if (rc > 0) {
                snprintf(b->file, sizeof(b->file), "%s", places[i]);
                break; /* the first file found is the configuration */
            }
        }
    }
    if (cf->agent == NULL) {
        /* The agent's address alone, as older installations have it. */
        FILE *f = fopen("/etc/xray/agent", "re");
        if (f != NULL) {
            if (fgets(b->agent, sizeof(b->agent), f) != NULL) {
                b->agent[strcspn(b->agent, " \t\r\n")] = '\0';
                if (b->agent[0] != '\0')
                    cf->agent = b->agent;
            }
            fclose(f);
        }
    }
    for (size_t i = 0; i < sizeof(xr_cc_fields) / sizeof(xr_cc_fields[0]); i++) {
        const xr_cc_field_t *f = &xr_cc_fields[i];
        if (*xr_cc_slot(cf, f) != NULL || strcmp(f->key, "agent_name") == 0)
            continue;
        char where[PATH_MAX + 40] = "~/.config/xray/client.yaml or /etc/xray/client.yaml";
        if (b->file[0] != '\0')
            snprintf(where, sizeof(where), "%s (read, without it)", b->file);
        snprintf(err, errlen, "no %s: give --%s, set $%s, or put \"%s:\" in %s", f->key, f->key,
                 f->env, f->key, where);
        return -1;
    }
    return 0;
}

const char **xr_client_conf_flag(xr_client_conf_t *cf, const char *flag)
{
    return strcmp(flag, "--agent") == 0        ? &cf->agent
           : strcmp(flag, "--agent-name") == 0 ? &cf->agent_name
           : strcmp(flag, "--cert") == 0       ? &cf->cert
           : strcmp(flag, "--key") == 0        ? &cf->key
           : strcmp(flag, "--ca") == 0         ? &cf->ca
                                               : NULL;
}
