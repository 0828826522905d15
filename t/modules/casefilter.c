/*
 * casefilter.c: a test-only filter module whose data hook does one thing,
 * chosen by configuration, so that t/test_45_filter_table.py can run the
 * same filter case on every front door that runs data filters:
 *
 *   casefilter: {case: pass}                  every chunk passes unchanged
 *   casefilter: {case: modify, token: "abc"}  each "abc" becomes "ABC"
 *   casefilter: {case: grow, token: "+", replacement: "<plus>"}
 *                                             each token becomes the
 *                                             replacement; the chunk grows
 *                                             within its cap, or the relay
 *                                             closes if it cannot
 *   casefilter: {case: hold}                  a chunk that does not end
 *                                             with a newline is held, so
 *                                             only whole lines pass
 *   casefilter: {case: drop, token: "DROP"}   a chunk that starts with the
 *                                             token is dropped
 *   casefilter: {case: close, token: "BAD"}   a chunk holding the token
 *                                             closes the relay (a reset)
 *   casefilter: {case: answer, token: "BAD", answer: "no\n"}
 *                                             a chunk holding the token is
 *                                             answered: the sender gets the
 *                                             answer, then both sides a FIN
 *
 * Both directions are filtered.  A token is looked for within one chunk:
 * the tests send it in one write.  Built as objs/t/casefilter.so, loaded
 * with `load_module:`; like any module built outside the tree it includes
 * only the public header.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xrayd_module.h"

enum { XR_CF_PASS, XR_CF_MODIFY, XR_CF_GROW, XR_CF_HOLD, XR_CF_DROP, XR_CF_CLOSE, XR_CF_ANSWER };

static const char *const xr_cf_cases[] = {"pass", "modify", "grow",   "hold",
                                          "drop", "close",  "answer", NULL};

typedef struct {
    int kase;
    char *token;
    char *replacement;
    char *answer;
    size_t tlen, rlen, alen;
} xr_cf_conf_t;

static const xr_directive_t xr_cf_directives[] = {
    {"case", XR_CTX_FILTER, XR_T_ENUM, offsetof(xr_cf_conf_t, kase), "pass", 0, 0, xr_cf_cases,
     NULL, 0, "What the data hook does: pass, modify, grow, hold, drop, close or answer."},
    {"token", XR_CTX_FILTER, XR_T_STRING, offsetof(xr_cf_conf_t, token), NULL, 0, 0, NULL, NULL, 0,
     "The bytes modify, grow, drop, close and answer look for."},
    {"replacement", XR_CTX_FILTER, XR_T_STRING, offsetof(xr_cf_conf_t, replacement), NULL, 0, 0,
     NULL, NULL, 0, "grow: what each token becomes."},
    {"answer", XR_CTX_FILTER, XR_T_STRING, offsetof(xr_cf_conf_t, answer), "casefilter answered\n",
     0, 0, NULL, NULL, 0, "answer: the text sent back to the sender of the token."},
    XR_DIRECTIVES_END};

static int xr_cf_init_conf(xr_conf_t *cf, const xr_node_t *node, void *conf)
{
    xr_cf_conf_t *c = conf;
    c->tlen = c->token ? strlen(c->token) : 0;
    c->rlen = c->replacement ? strlen(c->replacement) : 0;
    c->alen = c->answer ? strlen(c->answer) : 0;
    if (c->kase != XR_CF_PASS && c->kase != XR_CF_HOLD && c->tlen == 0)
        return xr_conf_error(cf, node, "case %s needs a non-empty token", xr_cf_cases[c->kase]);
    if (c->kase == XR_CF_GROW && c->replacement == NULL)
        return xr_conf_error(cf, node, "case grow needs a replacement");
    if (c->kase == XR_CF_ANSWER && c->alen == 0)
        return xr_conf_error(cf, node, "case answer needs a non-empty answer");
    return XR_OK;
}

static const char *xr_cf_dir(int dir)
{
    return dir == XR_DIR_UP ? "client-to-upstream" : "upstream-to-client";
}

/* Each token in c becomes the replacement; XR_FILTER_CLOSE when the result
 * would not fit in the chunk's cap. */
static xr_filter_rc_t xr_cf_grow(const xr_cf_conf_t *cf, xr_session_t *s, int dir, xr_chunk_t *c)
{
    size_t n = 0;
    const unsigned char *p = c->data, *end = c->data + c->len;
    while ((size_t) (end - p) >= cf->tlen &&
           (p = memmem(p, (size_t) (end - p), cf->token, cf->tlen)) != NULL) {
        n++;
        p += cf->tlen;
    }
    if (n == 0)
        return XR_FILTER_PASS;
    size_t len = c->len - n * cf->tlen + n * cf->rlen;
    if (len > c->cap) {
        snprintf(s->close_reason, sizeof(s->close_reason),
                 "casefilter: %zu bytes would grow to %zu, past the cap of %zu", c->len, len,
                 c->cap);
        xr_log_session(XR_LOG_WARN, s, "%s", s->close_reason);
        return XR_FILTER_CLOSE;
    }
    unsigned char *out = malloc(len);
    if (out == NULL) {
        snprintf(s->close_reason, sizeof(s->close_reason), "casefilter: out of memory");
        return XR_FILTER_CLOSE;
    }
    size_t w = 0;
    for (p = c->data; p < end;) {
        const unsigned char *t = (size_t) (end - p) >= cf->tlen
                                     ? memmem(p, (size_t) (end - p), cf->token, cf->tlen)
                                     : NULL;
        size_t plain = t ? (size_t) (t - p) : (size_t) (end - p);
        memcpy(out + w, p, plain);
        w += plain;
        p += plain;
        if (t != NULL) {
            memcpy(out + w, cf->replacement, cf->rlen);
            w += cf->rlen;
            p += cf->tlen;
        }
    }
    xr_log_session(XR_LOG_INFO, s,
                   "casefilter: grew %zu token(s), %zu bytes to %zu (cap %zu) in the %s direction",
                   n, c->len, len, c->cap, xr_cf_dir(dir));
    memcpy(c->data, out, len);
    c->len = len;
    free(out);
    return XR_FILTER_PASS;
}

static xr_filter_rc_t xr_cf_data(void *conf, void *state, xr_session_t *s, int dir, xr_chunk_t *c)
{
    const xr_cf_conf_t *cf = conf;
    unsigned char *p;

    switch (cf->kase) {
    case XR_CF_MODIFY:
        for (p = c->data; (size_t) (c->data + c->len - p) >= cf->tlen &&
                          (p = memmem(p, (size_t) (c->data + c->len - p), cf->token, cf->tlen));
             p += cf->tlen)
            for (size_t i = 0; i < cf->tlen; i++)
                p[i] = (unsigned char) toupper(p[i]);
        return XR_FILTER_PASS;

    case XR_CF_GROW: return xr_cf_grow(cf, s, dir, c);

    case XR_CF_HOLD:
        if (c->len > 0 && c->data[c->len - 1] == '\n')
            return XR_FILTER_PASS;
        xr_log_session(XR_LOG_INFO, s, "casefilter: holding %zu bytes in the %s direction", c->len,
                       xr_cf_dir(dir));
        return XR_FILTER_HOLD;

    case XR_CF_DROP:
        if (c->len < cf->tlen || memcmp(c->data, cf->token, cf->tlen) != 0)
            return XR_FILTER_PASS;
        xr_log_session(XR_LOG_INFO, s, "casefilter: dropped %zu bytes in the %s direction", c->len,
                       xr_cf_dir(dir));
        return XR_FILTER_DROP;

    case XR_CF_CLOSE:
    case XR_CF_ANSWER:
        if (c->len < cf->tlen || memmem(c->data, c->len, cf->token, cf->tlen) == NULL)
            return XR_FILTER_PASS;
        snprintf(s->close_reason, sizeof(s->close_reason), "casefilter: token seen");
        xr_log_session(XR_LOG_INFO, s, "casefilter: token seen in the %s direction, %s",
                       xr_cf_dir(dir), cf->kase == XR_CF_CLOSE ? "closing" : "answering");
        if (cf->kase == XR_CF_CLOSE || cf->alen > c->cap)
            return XR_FILTER_CLOSE;
        memcpy(c->data, cf->answer, cf->alen);
        c->len = cf->alen;
        return XR_FILTER_ANSWER;

    case XR_CF_PASS:
    default: return XR_FILTER_PASS;
    }
}

xr_module_t xr_casefilter_module = {XR_MODULE_HEAD,
                                    "casefilter",
                                    "1.0",
                                    xr_cf_directives,
                                    sizeof(xr_cf_conf_t),
                                    xr_cf_init_conf,
                                    NULL,
                                    NULL,
                                    NULL,
                                    NULL,
                                    0,
                                    NULL,
                                    xr_cf_data,
                                    NULL,
                                    NULL,
                                    {0}};

XR_MODULE_EXPORT(xr_casefilter_module);
