/*
 * lease.c: registrations, the official pool and the state file (see
 * lease.h).
 */
#include "agent/lease.h"
#include "agent/policy.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XR_STATE_MAGIC "xrayd-leases 1"

int xr_pool_range_parse(const char *text, xr_pool_range_t *r, char *why, size_t whylen)
{
    xr_net_rule_t rule;
    memset(r, 0, sizeof(*r));
    if (xr_net_rule_parse(text, &rule, why, whylen) != XR_OK)
        return XR_ERROR;
    if (rule.family == 0 || rule.prefix != (rule.family == 4 ? 32 : 128) ||
        strchr(text, ':') == NULL || (rule.family == 6 && strstr(text, "]:") == NULL)) {
        snprintf(why, whylen, "expected ADDR:PORT-PORT (one address and its ports)");
        return XR_ERROR;
    }
    r->family = rule.family;
    memcpy(r->addr, rule.addr, 16);
    r->lo = rule.port_lo;
    r->hi = rule.port_hi;
    return XR_OK;
}

void xr_leases_init(xr_leases_t *L, xr_pool_range_t *ranges, size_t nranges)
{
    memset(L, 0, sizeof(*L));
    L->ranges = ranges;
    L->nranges = nranges;
    L->next_handle = 1;
}

void xr_leases_free(xr_leases_t *L)
{
    free(L->l);
    L->l = NULL;
    L->n = L->cap = 0;
}

static int xr_paddr_eq(const xr_paddr_t *a, const xr_paddr_t *b)
{
    return a->family == b->family && a->port == b->port && memcmp(a->addr, b->addr, 16) == 0;
}

xr_lease_t *xr_leases_by_official(xr_leases_t *L, uint8_t proto, const xr_paddr_t *a)
{
    for (size_t i = 0; i < L->n; i++)
        if (L->l[i].proto == proto && xr_paddr_eq(&L->l[i].official, a))
            return &L->l[i];
    return NULL;
}

static int xr_in_pool(const xr_leases_t *L, const xr_paddr_t *a)
{
    for (size_t i = 0; i < L->nranges; i++) {
        const xr_pool_range_t *r = &L->ranges[i];
        if (r->family == a->family && memcmp(r->addr, a->addr, 16) == 0 && a->port >= r->lo &&
            a->port <= r->hi)
            return 1;
    }
    return 0;
}

/* The first free address of the pool, or 0. */
static int xr_pool_pick(xr_leases_t *L, uint8_t proto, xr_paddr_t *out)
{
    for (size_t i = 0; i < L->nranges; i++) {
        const xr_pool_range_t *r = &L->ranges[i];
        for (uint32_t port = r->lo; port <= r->hi; port++) {
            xr_paddr_t a = {.family = r->family, .port = (uint16_t) port};
            memcpy(a.addr, r->addr, 16);
            if (xr_leases_by_official(L, proto, &a) == NULL) {
                *out = a;
                return 1;
            }
        }
    }
    return 0;
}

static xr_lease_t *xr_leases_add(xr_leases_t *L)
{
    if (L->n == L->cap) {
        size_t ncap = L->cap ? L->cap * 2 : 16;
        xr_lease_t *nl = realloc(L->l, ncap * sizeof(*nl));
        if (nl == NULL)
            return NULL;
        L->l = nl;
        L->cap = ncap;
    }
    xr_lease_t *l = &L->l[L->n++];
    memset(l, 0, sizeof(*l));
    return l;
}

xr_lease_t *xr_leases_register(xr_leases_t *L, uint8_t proto, const xr_paddr_t *local,
                               int is_private, const xr_paddr_t *prior, const char *key,
                               const char *app, void *owner, int64_t now, int64_t lease_ms,
                               int *err, char *why, size_t whylen)
{
    char a[80];
    xr_paddr_t official;
    int leased = is_private;
    xr_lease_t *held = NULL;

    if (!is_private) {
        /* A public local address is its own official address. */
        official = *local;
        held = xr_leases_by_official(L, proto, &official);
    } else if (prior->family != 0 && xr_in_pool(L, prior)) {
        /* Rebuilding after a restart or a lost session: give back the
         * address the holder had, if nobody else holds it. */
        official = *prior;
        held = xr_leases_by_official(L, proto, &official);
    } else if (!xr_pool_pick(L, proto, &official)) {
        *err = XR_PERR_OVER_LIMIT;
        snprintf(why, whylen, "the official pool is exhausted");
        return NULL;
    }
    if (held != NULL) {
        if (strcmp(held->key, key) != 0) {
            if (is_private && prior->family != 0 && xr_pool_pick(L, proto, &official)) {
                held = NULL; /* prior taken by another holder: a fresh address */
            } else {
                *err = XR_PERR_OVER_LIMIT;
                snprintf(why, whylen, "official address %s is held by another application",
                         xr_paddr_str(&official, a, sizeof(a)));
                return NULL;
            }
        }
    }
    xr_lease_t *l = held != NULL ? held : xr_leases_add(L);
    if (l == NULL) {
        *err = XR_PERR_INTERNAL;
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    l->handle = L->next_handle++;
    l->proto = proto;
    l->leased = (uint8_t) leased;
    l->official = official;
    l->local = *local;
    snprintf(l->key, sizeof(l->key), "%s", key);
    snprintf(l->app, sizeof(l->app), "%s", app);
    l->expires = now + lease_ms;
    l->owner = owner;
    return l;
}

xr_lease_t *xr_leases_find(xr_leases_t *L, uint64_t handle, const void *owner)
{
    for (size_t i = 0; i < L->n; i++)
        if (L->l[i].handle == handle && handle != 0 && L->l[i].owner == owner)
            return &L->l[i];
    return NULL;
}

void xr_leases_release(xr_leases_t *L, xr_lease_t *l)
{
    size_t i = (size_t) (l - L->l);
    L->l[i] = L->l[--L->n];
}

size_t xr_leases_count(const xr_leases_t *L, const char *app)
{
    size_t c = 0;
    for (size_t i = 0; i < L->n; i++)
        c += strcmp(L->l[i].app, app) == 0;
    return c;
}

size_t xr_leases_owned(const xr_leases_t *L, const void *owner)
{
    size_t c = 0;
    for (size_t i = 0; i < L->n; i++)
        c += L->l[i].owner == owner;
    return c;
}

size_t xr_leases_expire(xr_leases_t *L, int64_t now, void (*cb)(xr_lease_t *, void *), void *arg)
{
    size_t gone = 0;
    for (size_t i = 0; i < L->n;) {
        if (L->l[i].expires <= now) {
            if (cb != NULL)
                cb(&L->l[i], arg);
            L->l[i] = L->l[--L->n];
            gone++;
        } else {
            i++;
        }
    }
    return gone;
}

void xr_leases_orphan(xr_leases_t *L, const void *owner)
{
    for (size_t i = 0; i < L->n; i++)
        if (L->l[i].owner == owner) {
            L->l[i].owner = NULL;
            L->l[i].handle = 0;
        }
}

int xr_leases_save(const xr_leases_t *L, const char *path)
{
    char tmp[4096];
    /* Per process: during a reload the old and the new agent both save. */
    if ((size_t) snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long) getpid()) >= sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        close(fd);
        return -1;
    }
    fprintf(f, "%s\n", XR_STATE_MAGIC);
    for (size_t i = 0; i < L->n; i++) {
        const xr_lease_t *l = &L->l[i];
        char o[80], lo[80];
        fprintf(f, "%u %s %s %u %s %" PRId64 " %s\n", l->proto,
                xr_paddr_str(&l->official, o, sizeof(o)), xr_paddr_str(&l->local, lo, sizeof(lo)),
                l->leased, l->key[0] ? l->key : "-", l->expires, l->app);
    }
    /* A full disk must not replace a good state file with a cut one. */
    int bad = fflush(f) != 0 || ferror(f) || fsync(fd) != 0;
    int saved = errno;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        saved = errno;
    }
    if (bad || rename(tmp, path) != 0) {
        if (!bad)
            saved = errno;
        unlink(tmp);
        errno = saved;
        return -1;
    }
    return 0;
}

int xr_leases_load(xr_leases_t *L, const char *path, int64_t now, char *why, size_t whylen)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        if (errno == ENOENT)
            return 0;
        snprintf(why, whylen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    char line[512];
    int lineno = 0, loaded = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        line[strcspn(line, "\n")] = '\0';
        if (lineno == 1) {
            if (strcmp(line, XR_STATE_MAGIC) != 0) {
                snprintf(why, whylen, "%s:1: not an xrayd lease file", path);
                fclose(f);
                return -1;
            }
            continue;
        }
        unsigned proto, leased;
        char off[80], loc[80], key[80];
        int64_t expires;
        int pos = 0;
        if (sscanf(line, "%u %79s %79s %u %79s %" SCNd64 " %n", &proto, off, loc, &leased, key,
                   &expires, &pos) != 6 ||
            pos == 0 || (proto != XR_PROTO_TCP && proto != XR_PROTO_UDP) || leased > 1 ||
            strlen(key) > 64) {
            snprintf(why, whylen, "%s:%d: malformed lease", path, lineno);
            fclose(f);
            return -1;
        }
        xr_paddr_t o, l;
        if (xr_paddr_parse(off, &o) < 0 || xr_paddr_parse(loc, &l) < 0) {
            snprintf(why, whylen, "%s:%d: bad address", path, lineno);
            fclose(f);
            return -1;
        }
        if (expires <= now || xr_leases_by_official(L, (uint8_t) proto, &o) != NULL)
            continue; /* ran out while we were down, or a duplicate */
        xr_lease_t *x = xr_leases_add(L);
        if (x == NULL) {
            snprintf(why, whylen, "out of memory");
            fclose(f);
            return -1;
        }
        x->proto = (uint8_t) proto;
        x->leased = (uint8_t) leased;
        x->official = o;
        x->local = l;
        snprintf(x->key, sizeof(x->key), "%s", strcmp(key, "-") == 0 ? "" : key);
        snprintf(x->app, sizeof(x->app), "%s", line + pos);
        x->expires = expires;
        loaded++;
    }
    fclose(f);
    return loaded;
}
