/*
 * test_module.c: the module loader's checks (ABI, build signature,
 * directive tables), lookup of built-ins, loading .so files, and the
 * signature module's data hook driven through its xr_module_t.
 */
#include "core/xrayd.h"
#include "core/gen.h"
#include "core/log.h"
#include "core/module.h"

#include <unistd.h>

#include "unit.h"

extern xr_module_t xr_signature_module;
extern xr_module_t xr_log_module;

static char err[1024];

#define REL "relay:\n  - listen: 127.0.0.1:8080\n    upstream: 127.0.0.1:9090\n"

static xr_gen_t *load(const char *yaml)
{
    err[0] = '\0';
    return xr_gen_load_buffer((const unsigned char *) yaml, strlen(yaml), err, sizeof(err));
}

#define LOAD_ERR(yaml, want)                                                                       \
    do {                                                                                           \
        ASSERT_NULL(load(yaml));                                                                   \
        ASSERT_STREQ(err, want);                                                                   \
    } while (0)

/* ---- xr_module_check ------------------------------------------------------ */

TEST(check_builtins)
{
    char why[256] = "";
    ASSERT_EQ(xr_module_check(&xr_signature_module, why, sizeof(why)), XR_OK);
    ASSERT_EQ(xr_module_check(&xr_log_module, why, sizeof(why)), XR_OK);
    for (size_t i = 0; xr_builtin_modules[i]; i++)
        ASSERT_EQ(xr_module_check(xr_builtin_modules[i], why, sizeof(why)), XR_OK);
    ASSERT_STREQ(why, "");
    ASSERT_EQ(xr_signature_module.abi, XR_MODULE_ABI);
    ASSERT_STREQ(xr_signature_module.signature, XR_BUILD_SIGNATURE);
}

TEST(check_wrong_abi)
{
    char why[256], want[256];
    xr_module_t m = xr_signature_module;
    m.abi = XR_MODULE_ABI + 1;
    ASSERT_EQ(xr_module_check(&m, why, sizeof(why)), XR_ERROR);
    snprintf(want, sizeof(want), "module \"signature\" was built for ABI %d, this xrayd is ABI %d",
             XR_MODULE_ABI + 1, XR_MODULE_ABI);
    ASSERT_STREQ(why, want);
    /* Both numbers are in the sentence, and the ABI is checked first. */
    m.abi = 0;
    m.signature = "garbage";
    m.name = NULL;
    ASSERT_EQ(xr_module_check(&m, why, sizeof(why)), XR_ERROR);
    snprintf(want, sizeof(want), "module \"?\" was built for ABI 0, this xrayd is ABI %d",
             XR_MODULE_ABI);
    ASSERT_STREQ(why, want);
}

TEST(check_wrong_signature)
{
    char why[256], want[256];
    xr_module_t m = xr_signature_module;
    m.signature = "xrayd-abi1/ptr4/long4";
    ASSERT_EQ(xr_module_check(&m, why, sizeof(why)), XR_ERROR);
    snprintf(want, sizeof(want),
             "module \"signature\" has build signature \"xrayd-abi1/ptr4/long4\", this xrayd has "
             "\"%s\"",
             XR_BUILD_SIGNATURE);
    ASSERT_STREQ(why, want);
    m.signature = NULL;
    ASSERT_EQ(xr_module_check(&m, why, sizeof(why)), XR_ERROR);
    snprintf(want, sizeof(want),
             "module \"signature\" has build signature \"(none)\", this xrayd has \"%s\"",
             XR_BUILD_SIGNATURE);
    ASSERT_STREQ(why, want);
    /* A prefix is not a match. */
    m.signature = "xrayd-abi1";
    ASSERT_EQ(xr_module_check(&m, why, sizeof(why)), XR_ERROR);
}

TEST(check_no_name)
{
    char why[256];
    xr_module_t m = xr_signature_module;
    m.name = NULL;
    ASSERT_EQ(xr_module_check(&m, why, sizeof(why)), XR_ERROR);
    ASSERT_STREQ(why, "module has no name");
    m.name = "";
    ASSERT_EQ(xr_module_check(&m, why, sizeof(why)), XR_ERROR);
    ASSERT_STREQ(why, "module has no name");
}

typedef struct {
    int64_t a;
    int64_t b;
} fake_conf_t;

static int fake_set(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    return XR_OK;
}

static const char *const fake_enums[] = {"x", NULL};

static int check_one(xr_directive_t d, char *why, size_t size)
{
    xr_directive_t table[2] = {d, XR_DIRECTIVES_END};
    xr_module_t m = {XR_MODULE_HEAD,
                     "fake",
                     "1",
                     table,
                     sizeof(fake_conf_t),
                     NULL,
                     NULL,
                     NULL,
                     NULL,
                     NULL,
                     0,
                     NULL,
                     NULL,
                     NULL,
                     NULL,
                     {0}};
    return xr_module_check(&m, why, size);
}

TEST(check_malformed_directives)
{
    char why[256];
    const unsigned F = XR_CTX_FILTER;
    /* Well formed. */
    ASSERT_EQ(check_one((xr_directive_t){"d", F, XR_T_INT, offsetof(fake_conf_t, b), NULL, 0, 0,
                                         NULL, NULL, 0, NULL},
                        why, sizeof(why)),
              XR_OK);
    ASSERT_EQ(
        check_one((xr_directive_t){"d", F, XR_T_CUSTOM, 0, NULL, 0, 0, NULL, fake_set, 0, NULL},
                  why, sizeof(why)),
        XR_OK);
    ASSERT_EQ(
        check_one((xr_directive_t){"d", F, XR_T_ENUM, 0, NULL, 0, 0, fake_enums, NULL, 0, NULL},
                  why, sizeof(why)),
        XR_OK);

    /* Not a filter directive. */
    ASSERT_EQ(
        check_one((xr_directive_t){"d", XR_CTX_RELAY, XR_T_INT, 0, NULL, 0, 0, NULL, NULL, 0, NULL},
                  why, sizeof(why)),
        XR_ERROR);
    ASSERT_STREQ(why, "module \"fake\": directive \"d\" is malformed");
    /* CUSTOM without a setter. */
    ASSERT_EQ(check_one((xr_directive_t){"d", F, XR_T_CUSTOM, 0, NULL, 0, 0, NULL, NULL, 0, NULL},
                        why, sizeof(why)),
              XR_ERROR);
    ASSERT_STREQ(why, "module \"fake\": directive \"d\" is malformed");
    /* ENUM without names. */
    ASSERT_EQ(check_one((xr_directive_t){"d", F, XR_T_ENUM, 0, NULL, 0, 0, NULL, NULL, 0, NULL},
                        why, sizeof(why)),
              XR_ERROR);
    ASSERT_STREQ(why, "module \"fake\": directive \"d\" is malformed");
    /* A slot beyond the end of the module's conf. */
    ASSERT_EQ(check_one((xr_directive_t){"d", F, XR_T_INT, sizeof(fake_conf_t) + 8, NULL, 0, 0,
                                         NULL, NULL, 0, NULL},
                        why, sizeof(why)),
              XR_ERROR);
    ASSERT_STREQ(why, "module \"fake\": directive \"d\" is malformed");

    /* A slot that starts at the end of conf (or runs past it) must be
     * refused too: xr_set_filters() allocates exactly conf_size bytes. */
    int rc = check_one(
        (xr_directive_t){"d", F, XR_T_INT, sizeof(fake_conf_t), NULL, 0, 0, NULL, NULL, 0, NULL},
        why, sizeof(why));
    ASSERT_EQ(rc, XR_ERROR);
    rc = check_one((xr_directive_t){"d", F, XR_T_INT, sizeof(fake_conf_t) - 4, NULL, 0, 0, NULL,
                                    NULL, 0, NULL},
                   why, sizeof(why));
    ASSERT_EQ(rc, XR_ERROR);
}

/* ---- lookup and loading ---------------------------------------------------- */

TEST(find_builtins)
{
    ASSERT_PTR_EQ(xr_module_find(NULL, "signature"), &xr_signature_module);
    ASSERT_PTR_EQ(xr_module_find(NULL, "log"), &xr_log_module);
    ASSERT_NULL(xr_module_find(NULL, "nope"));
    ASSERT_NULL(xr_module_find(NULL, ""));
    ASSERT_NULL(xr_module_find(NULL, "Signature")); /* names are exact */
    ASSERT_PTR_EQ(xr_builtin_modules[0], &xr_log_module);
    ASSERT_PTR_EQ(xr_builtin_modules[1], &xr_signature_module);
    ASSERT_NULL(xr_builtin_modules[2]);
}

TEST(find_dynamic_shadows_builtin)
{
    xr_module_t mine = xr_signature_module;
    xr_module_t other = xr_signature_module;
    other.name = "other";
    xr_dynmod_t d2 = {NULL, &other, "/x/other.so", NULL};
    xr_dynmod_t d1 = {NULL, &mine, "/x/signature.so", &d2};
    ASSERT_PTR_EQ(xr_module_find(&d1, "signature"), &mine);
    ASSERT_PTR_EQ(xr_module_find(&d1, "other"), &other);
    ASSERT_PTR_EQ(xr_module_find(&d1, "log"), &xr_log_module);
    ASSERT_NULL(xr_module_find(&d1, "nope"));
}

static const char *objs_path(const char *rel, char *buf, size_t size)
{
    const char *objs = getenv("XRAYD_OBJS");
    snprintf(buf, size, "%s/%s", objs && *objs ? objs : "objs", rel);
    if (access(buf, R_OK) != 0)
        SKIP("module file not built (set XRAYD_OBJS)");
    return buf;
}

TEST(load_signature_so)
{
    char path[512], yaml[2048], want[2048];
    objs_path("modules/signature.so", path, sizeof(path));
    snprintf(yaml, sizeof(yaml),
             "load_module: %s\n" REL "    filters:\n      - signature: {patterns: [abc]}\n", path);
    xr_gen_t *g = load(yaml);
    if (g == NULL)
        FAIL("%s", err);
    ASSERT_NOT_NULL(g->modules);
    ASSERT_STREQ(g->modules->module->name, "signature");
    ASSERT_STREQ(g->modules->path, path);
    /* The loaded module shadows the built-in of the same name. */
    ASSERT_PTR_EQ(g->relays[0]->filters[0].module, g->modules->module);
    ASSERT_PTR_NE(g->relays[0]->filters[0].module, &xr_signature_module);
    xr_gen_free(g);

    /* Twice is refused at the second. */
    snprintf(yaml, sizeof(yaml), "load_module:\n  - %s\n  - %s\n" REL, path, path);
    snprintf(want, sizeof(want),
             "<buffer>:3:5: \"load_module\": module \"signature\" is already loaded from %s", path);
    LOAD_ERR(yaml, want);
}

TEST(load_wrong_abi_so)
{
    char path[512], yaml[2048], want[2048];
    objs_path("t/abi_mismatch.so", path, sizeof(path));
    snprintf(yaml, sizeof(yaml), "load_module: %s\n" REL, path);
    snprintf(want, sizeof(want),
             "<buffer>:1:14: \"load_module\": %s: module \"abi_mismatch\" was built for ABI %d, "
             "this xrayd is ABI %d",
             path, XR_MODULE_ABI + 1, XR_MODULE_ABI);
    LOAD_ERR(yaml, want);
}

TEST(load_not_a_module)
{
    /* Any shared object without the entry symbol. */
    LOAD_ERR("load_module: libm.so.6\n" REL,
             "<buffer>:1:14: \"load_module\": \"libm.so.6\" is not an xrayd module (no "
             "xr_module_entry symbol)");
    ASSERT_NULL(load("load_module: /nonexistent/x.so\n" REL));
    ASSERT_TRUE(strncmp(err, "<buffer>:1:14: \"load_module\": cannot load module: ", 50) == 0);
}

/* ---- the signature module's data hook ------------------------------------- */

typedef struct {
    xr_gen_t *g;
    const xr_module_t *m;
    void *conf;
    void *state;
    xr_session_t s;
} sigtest_t;

static void sig_setup(sigtest_t *t, const char *filter_yaml)
{
    char yaml[4096];
    xr_log_set_level(XR_LOG_EMERG); /* the hook logs matches at warn */
    snprintf(yaml, sizeof(yaml), REL "    filters:\n%s", filter_yaml);
    t->g = load(yaml);
    if (t->g == NULL)
        FAIL("%s", err);
    ASSERT_EQ(t->g->relays[0]->nfilters, 1);
    t->m = t->g->relays[0]->filters[0].module;
    ASSERT_PTR_EQ(t->m, &xr_signature_module);
    ASSERT_NOT_NULL(t->m->data);
    t->conf = t->g->relays[0]->filters[0].conf;
    t->state = xr_calloc(1, t->m->state_size ? t->m->state_size : 1);
    memset(&t->s, 0, sizeof(t->s));
    t->s.id = 1;
    t->s.listener = "unit";
}

/* A new relay on the same configuration. */
static void sig_reset(sigtest_t *t)
{
    if (t->m->close != NULL)
        t->m->close(t->conf, t->state, &t->s);
    memset(t->state, 0, t->m->state_size);
    t->s.close_reason[0] = '\0';
}

static xr_filter_rc_t sig_feed(sigtest_t *t, int dir, const void *data, size_t len)
{
    /* The hook gets its own copy, as the relay hands it a buffer. */
    unsigned char *copy = malloc(len ? len : 1);
    memcpy(copy, data, len);
    xr_chunk_t c = {copy, len, len};
    xr_filter_rc_t rc = t->m->data(t->conf, t->state, &t->s, dir, &c);
    ASSERT_EQ(c.len, len); /* signature never rewrites */
    ASSERT_MEMEQ(c.data, data, len);
    free(copy);
    return rc;
}

#define SIG_THREE                                                                                  \
    "      - signature:\n"                                                                         \
    "          patterns:\n"                                                                        \
    "            - \"/etc/passwd\"\n"                                                              \
    "            - hex: \"de ad be ef 00 ff\"\n"                                                   \
    "            - {literal: \"EVIL-PAYLOAD\", name: \"evil\"}\n"

static const struct {
    const char *bytes;
    size_t len;
    const char *reason;
} three[] = {
    {"/etc/passwd", 11, "signature \"/etc/passwd\" matched"},
    {"\xde\xad\xbe\xef\x00\xff", 6, "signature \"hex:de ad be ef 00 ff\" matched"},
    {"EVIL-PAYLOAD", 12, "signature \"evil\" matched"},
};

/* data = prefix + pattern + suffix; returns its length and where the
 * pattern ends. */
static size_t make_data(unsigned char *buf, size_t k, size_t pre, size_t post, size_t *end)
{
    size_t n = 0;
    for (size_t i = 0; i < pre; i++)
        buf[n++] = (unsigned char) ('a' + i % 26);
    memcpy(buf + n, three[k].bytes, three[k].len);
    n += three[k].len;
    *end = n;
    for (size_t i = 0; i < post; i++)
        buf[n++] = (unsigned char) ('A' + i % 26);
    return n;
}

TEST(signature_split_at_every_position)
{
    sigtest_t t;
    sig_setup(&t, SIG_THREE);
    unsigned char d[128];
    static const size_t pres[] = {0, 1, 5, 11, 30}, posts[] = {0, 3, 20};
    for (size_t k = 0; k < XR_ARRAY_SIZE(three); k++)
        for (size_t a = 0; a < XR_ARRAY_SIZE(pres); a++)
            for (size_t b = 0; b < XR_ARRAY_SIZE(posts); b++) {
                size_t end, n = make_data(d, k, pres[a], posts[b], &end);
                /* Two chunks, split at i. */
                for (size_t i = 1; i < n; i++) {
                    sig_reset(&t);
                    xr_filter_rc_t r1 = sig_feed(&t, XR_DIR_UP, d, i);
                    if (i >= end) {
                        ASSERT_EQ(r1, XR_FILTER_CLOSE);
                    } else {
                        ASSERT_EQ(r1, XR_FILTER_PASS);
                        ASSERT_EQ(sig_feed(&t, XR_DIR_UP, d + i, n - i), XR_FILTER_CLOSE);
                    }
                    ASSERT_STREQ(t.s.close_reason, three[k].reason);
                }
                /* Three chunks, split at i < j. */
                for (size_t i = 1; i < n; i++)
                    for (size_t j = i + 1; j < n; j++) {
                        sig_reset(&t);
                        size_t cut[4] = {0, i, j, n};
                        int closed = 0;
                        for (int c = 0; c < 3 && !closed; c++) {
                            xr_filter_rc_t r =
                                sig_feed(&t, XR_DIR_UP, d + cut[c], cut[c + 1] - cut[c]);
                            /* It closes in the chunk that completes the pattern. */
                            int completes = cut[c] < end && end <= cut[c + 1];
                            ASSERT_EQ(r, completes ? XR_FILTER_CLOSE : XR_FILTER_PASS);
                            closed = r == XR_FILTER_CLOSE;
                        }
                        ASSERT_TRUE(closed);
                    }
                /* One byte at a time: closes exactly at the last byte. */
                sig_reset(&t);
                for (size_t i = 0; i < n; i++) {
                    xr_filter_rc_t r = sig_feed(&t, XR_DIR_DOWN, d + i, 1);
                    if (i + 1 < end) {
                        ASSERT_EQ(r, XR_FILTER_PASS);
                    } else {
                        ASSERT_EQ(r, XR_FILTER_CLOSE);
                        ASSERT_EQ(i + 1, end);
                        break;
                    }
                }
            }
    sig_reset(&t);
}

TEST(signature_passes_clean_data)
{
    sigtest_t t;
    sig_setup(&t, SIG_THREE);
    /* Near misses at every seam, and pseudo-random bytes in random chunk
     * sizes; none contains a whole pattern. */
    static const char *const near[] = {"/etc/passw",           "etc/passwd",  "EVIL-PAYLOA",
                                       "\xde\xad\xbe\xef\x00", "/etc/passwD", "evil-payload"};
    for (size_t k = 0; k < XR_ARRAY_SIZE(near); k++) {
        sig_reset(&t);
        size_t n = strlen(near[k]);
        if (k == 3)
            n = 5;
        for (int rep = 0; rep < 3; rep++)
            for (size_t i = 0; i < n; i++)
                ASSERT_EQ(sig_feed(&t, XR_DIR_UP, near[k] + i, 1), XR_FILTER_PASS);
        ASSERT_EQ(sig_feed(&t, XR_DIR_UP, near[k], n), XR_FILTER_PASS);
    }

    sig_reset(&t);
    size_t total = 1 << 20;
    unsigned char *buf = malloc(total);
    uint32_t x = 12345;
    for (size_t i = 0; i < total; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (unsigned char) (x >> 16);
    }
    for (size_t k = 0; k < XR_ARRAY_SIZE(three); k++)
        ASSERT_NULL(memmem(buf, total, three[k].bytes, three[k].len));
    size_t off = 0;
    while (off < total) {
        x = x * 1103515245u + 12345u;
        size_t n = XR_MIN((size_t) (x >> 16) % 3000 + 1, total - off);
        ASSERT_EQ(sig_feed(&t, (x >> 8) & 1, buf + off, n), XR_FILTER_PASS);
        off += n;
    }
    ASSERT_STREQ(t.s.close_reason, "");
    free(buf);
    sig_reset(&t);
}

TEST(signature_directions_are_separate)
{
    sigtest_t t;
    sig_setup(&t, SIG_THREE);
    /* Half a pattern up and half down is no match. */
    ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "/etc/", 5), XR_FILTER_PASS);
    ASSERT_EQ(sig_feed(&t, XR_DIR_DOWN, "passwd", 6), XR_FILTER_PASS);
    /* Each direction keeps its own tail. */
    ASSERT_EQ(sig_feed(&t, XR_DIR_DOWN, "xx/etc/pas", 10), XR_FILTER_PASS);
    ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "passwd", 6), XR_FILTER_CLOSE);
    sig_reset(&t);

    sigtest_t u;
    sig_setup(&u, "      - signature: {patterns: [EVIL], direction: up}\n");
    ASSERT_EQ(sig_feed(&u, XR_DIR_DOWN, "EVIL", 4), XR_FILTER_PASS);
    ASSERT_EQ(sig_feed(&u, XR_DIR_UP, "EVIL", 4), XR_FILTER_CLOSE);
    ASSERT_STREQ(u.s.close_reason, "signature \"EVIL\" matched");
    sig_reset(&u);

    sigtest_t v;
    sig_setup(&v, "      - signature: {patterns: [EVIL], direction: down}\n");
    ASSERT_EQ(sig_feed(&v, XR_DIR_UP, "EVIL", 4), XR_FILTER_PASS);
    ASSERT_EQ(sig_feed(&v, XR_DIR_DOWN, "EV", 2), XR_FILTER_PASS);
    ASSERT_EQ(sig_feed(&v, XR_DIR_DOWN, "IL", 2), XR_FILTER_CLOSE);
    sig_reset(&v);
}

TEST(signature_single_byte_pattern)
{
    /* maxlen 1: nothing is kept between chunks. */
    sigtest_t t;
    sig_setup(&t, "      - signature: {patterns: [\"!\"]}\n");
    ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "abc", 3), XR_FILTER_PASS);
    ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "", 0), XR_FILTER_PASS);
    ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "d!", 2), XR_FILTER_CLOSE);
    ASSERT_STREQ(t.s.close_reason, "signature \"!\" matched");
    sig_reset(&t);
}

TEST(signature_longest_pattern)
{
    /* 1024 bytes is the limit; a match split anywhere is still found. */
    char yaml[2200], pat[1025];
    for (int i = 0; i < 1024; i++)
        pat[i] = (char) ('a' + i % 26);
    pat[1024] = '\0';
    snprintf(yaml, sizeof(yaml), "      - signature: {patterns: [%s]}\n", pat);
    sigtest_t t;
    sig_setup(&t, yaml);
    for (size_t i = 1; i < 1024; i += 97) {
        sig_reset(&t);
        ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "zz", 2), XR_FILTER_PASS);
        ASSERT_EQ(sig_feed(&t, XR_DIR_UP, pat, i), XR_FILTER_PASS);
        ASSERT_EQ(sig_feed(&t, XR_DIR_UP, pat + i, 1024 - i), XR_FILTER_CLOSE);
        /* The label is cut in the reason, not overflowed. */
        ASSERT_EQ(strlen(t.s.close_reason), strlen("signature \"\" matched") + 60);
    }
    sig_reset(&t);

    char long_yaml[2300];
    snprintf(long_yaml, sizeof(long_yaml),
             REL "    filters:\n      - signature: {patterns: [%sx]}\n", pat);
    LOAD_ERR(long_yaml, "<buffer>:5:32: \"patterns\": pattern longer than 1024 bytes");
}

TEST(signature_hex_patterns)
{
    static const char *const forms[] = {"deadbeef",    "DEADBEEF",          "de ad be ef",
                                        "de:ad:be:ef", " d e a d b e e f ", "De:Ad BE:ef"};
    for (size_t i = 0; i < XR_ARRAY_SIZE(forms); i++) {
        char yaml[256];
        snprintf(yaml, sizeof(yaml), "      - signature: {patterns: [{hex: \"%s\"}]}\n", forms[i]);
        sigtest_t t;
        sig_setup(&t, yaml);
        ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "\xde\xad\xbe", 3), XR_FILTER_PASS);
        ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "\xee", 1), XR_FILTER_PASS);
        ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "\xde\xad\xbe\xef", 4), XR_FILTER_CLOSE);
        char want[128];
        snprintf(want, sizeof(want), "signature \"hex:%s\" matched", forms[i]);
        ASSERT_STREQ(t.s.close_reason, want);
        sig_reset(&t);
        xr_gen_free(t.g);
    }
    /* A name replaces the hex label. */
    sigtest_t n;
    sig_setup(&n, "      - signature: {patterns: [{hex: \"00\", name: nul}]}\n");
    ASSERT_EQ(sig_feed(&n, XR_DIR_UP, "a\0b", 3), XR_FILTER_CLOSE);
    ASSERT_STREQ(n.s.close_reason, "signature \"nul\" matched");
    sig_reset(&n);
}

#define SIG_ONE(item)                                                                              \
    REL "    filters:\n      - signature:\n          patterns:\n            - " item "\n"

TEST(signature_bad_patterns)
{
    LOAD_ERR(SIG_ONE("{hex: \"zz\"}"), "<buffer>:7:21: \"hex\": invalid hex digit 'z'");
    LOAD_ERR(SIG_ONE("{hex: \"abc\"}"), "<buffer>:7:21: \"hex\": odd number of hex digits");
    LOAD_ERR(SIG_ONE("{hex: \"0x41\"}"), "<buffer>:7:21: \"hex\": invalid hex digit 'x'");
    LOAD_ERR(SIG_ONE("{hex: \"\"}"), "<buffer>:7:15: \"patterns\": empty pattern");
    LOAD_ERR(SIG_ONE("{hex: \" : \"}"), "<buffer>:7:15: \"patterns\": empty pattern");
    LOAD_ERR(SIG_ONE("''"), "<buffer>:7:15: \"patterns\": empty pattern");
    LOAD_ERR(SIG_ONE("{hex: \"41\", literal: A}"),
             "<buffer>:7:15: \"patterns\": a pattern has exactly one of hex or literal");
    LOAD_ERR(SIG_ONE("{name: x}"),
             "<buffer>:7:15: \"patterns\": a pattern has exactly one of hex or literal");
    LOAD_ERR(SIG_ONE("{foo: x}"),
             "<buffer>:7:16: \"foo\": unknown pattern key (use hex, literal or name)");
    LOAD_ERR(SIG_ONE("{hex: [41]}"), "<buffer>:7:21: \"hex\": expected a string");
    LOAD_ERR(SIG_ONE("[a]"),
             "<buffer>:7:15: \"patterns\": a pattern is a string or {hex: ...} / {literal: ...}");
    LOAD_ERR(REL "    filters:\n      - signature: {patterns: []}\n",
             "<buffer>:5:31: \"patterns\": expected a non-empty sequence of patterns");
    LOAD_ERR(REL "    filters:\n      - signature: {patterns: abc}\n",
             "<buffer>:5:31: \"patterns\": expected a non-empty sequence of patterns");
    LOAD_ERR(REL "    filters:\n      - signature: {patterns: [a], direction: sideways}\n",
             "<buffer>:5:47: \"direction\": \"sideways\" is not one of: up, down, both");
    LOAD_ERR(REL "    filters:\n      - signature: {patterns: [a], bogus: 1}\n",
             "<buffer>:5:36: \"bogus\": unknown directive");
}

TEST(signature_literal_with_nul)
{
    /* A double-quoted literal may hold a NUL byte ("\0"); the pattern is
     * then the whole string, not the part before the NUL. */
    sigtest_t t;
    sig_setup(&t, "      - signature: {patterns: [{literal: \"ab\\0cd\"}]}\n");
    xr_filter_rc_t rc = sig_feed(&t, XR_DIR_UP, "xxab", 4);
    ASSERT_EQ(rc, XR_FILTER_PASS);
    sig_reset(&t);
    ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "ab\0cd", 5), XR_FILTER_CLOSE);
    sig_reset(&t);
}

TEST(signature_close_frees_tails)
{
    sigtest_t t;
    sig_setup(&t, SIG_THREE);
    ASSERT_EQ(sig_feed(&t, XR_DIR_UP, "0123456789abcdef", 16), XR_FILTER_PASS);
    ASSERT_EQ(sig_feed(&t, XR_DIR_DOWN, "x", 1), XR_FILTER_PASS);
    t.m->close(t.conf, t.state, &t.s);
    /* Twice is harmless (the pointers were cleared). */
    t.m->close(t.conf, t.state, &t.s);
    xr_gen_free(t.g);
}
