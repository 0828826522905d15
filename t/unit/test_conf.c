/*
 * test_conf.c: the YAML node tree (positions, limits), the directive
 * framework (dispatch, hints, duplicates, required keys) and every generic
 * setter, through a private directive table and through whole
 * configurations loaded with xr_gen_load_buffer().
 */
#include "core/xrayd.h"
#include "core/conf.h"
#include "core/gen.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>

#include "unit.h"

/* ---- helpers ------------------------------------------------------------- */

/* A block with one slot of every generic type. */
typedef struct {
    int flag;
    int64_t num;
    int64_t size;
    int64_t rsize;
    int64_t dur;
    int64_t rdur;
    int colour;
    char *str;
    char *path;
    xr_addr_t addr;
    xr_addr_list_t addrs;
    xr_str_list_t strs;
    int64_t relay_only;
} tconf_t;

static const char *const colours[] = {"red", "green", "blue", NULL};

#define TO(f) offsetof(tconf_t, f)
#define M     XR_CTX_MAIN
static const xr_directive_t ttable[] = {
    {"flag", M, XR_T_FLAG, TO(flag), "on", 0, 0, NULL, NULL, 0, "a flag"},
    {"num", M, XR_T_INT, TO(num), "7", -5, 100, NULL, NULL, 0, "a number in -5..100"},
    {"size", M, XR_T_SIZE, TO(size), "64k", 0, 0, NULL, NULL, 0, "a size"},
    {"rsize", M, XR_T_SIZE, TO(rsize), NULL, 1024, 1 << 20, NULL, NULL, 0, "a bounded size"},
    {"dur", M, XR_T_DURATION, TO(dur), "5s", 0, 0, NULL, NULL, 0, "a duration"},
    {"rdur", M, XR_T_DURATION, TO(rdur), NULL, 1, 60000, NULL, NULL, 0, "a bounded duration"},
    {"colour", M, XR_T_ENUM, TO(colour), "blue", 0, 0, colours, NULL, 0, "an enum"},
    {"str", M, XR_T_STRING, TO(str), NULL, 0, 0, NULL, NULL, 0, "a string"},
    {"path", M, XR_T_PATH, TO(path), NULL, 0, 0, NULL, NULL, 0, "a path"},
    {"addr", M, XR_T_ADDR, TO(addr), NULL, 0, 0, NULL, NULL, 0, "an address"},
    {"addrs", M, XR_T_ADDR_LIST, TO(addrs), NULL, 0, 0, NULL, NULL, 0, "addresses"},
    {"strs", M, XR_T_STR_LIST, TO(strs), NULL, 0, 0, NULL, NULL, 0, "strings"},
    {"relay_only", XR_CTX_RELAY, XR_T_INT, TO(relay_only), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "required in relay context"},
    XR_DIRECTIVES_END};
#undef M

static char err[1024];

/* Parse yaml (named "<t>") and dispatch it to ttable at ctx.  Returns the
 * status; the error, if any, is in err. */
static int tset_ctx(const char *yaml, tconf_t *out, unsigned ctx)
{
    xr_pool_t *p = xr_pool_create();
    xr_conf_t cf;
    xr_conf_init(&cf, p);
    memset(out, 0, sizeof(*out));
    err[0] = '\0';
    /* The pool is not destroyed: results point into it, and each test
     * runs in its own process. */
    xr_node_t *root = xr_conf_parse_buffer(&cf, "<t>", (const unsigned char *) yaml, strlen(yaml));
    int rc = root == NULL ? XR_ERROR : xr_conf_block(&cf, root, ttable, ctx, out, NULL, NULL);
    ASSERT_EQ(rc != XR_OK, cf.failed);
    snprintf(err, sizeof(err), "%s", cf.err);
    return rc;
}

static int tset(const char *yaml, tconf_t *out)
{
    return tset_ctx(yaml, out, XR_CTX_MAIN);
}

/* Expect one setter error for a one-line document. */
#define TSET_ERR(yaml, want)                                                                       \
    do {                                                                                           \
        tconf_t c_;                                                                                \
        ASSERT_EQ(tset(yaml, &c_), XR_ERROR);                                                      \
        ASSERT_STREQ(err, want);                                                                   \
    } while (0)

#define REL "relay:\n  - listen: 127.0.0.1:8080\n    upstream: 127.0.0.1:9090\n"

static xr_gen_t *gen;

/* Load a whole configuration; NULL and the error in err on failure. */
static xr_gen_t *load(const char *yaml)
{
    err[0] = '\0';
    gen = xr_gen_load_buffer((const unsigned char *) yaml, strlen(yaml), err, sizeof(err));
    return gen;
}

#define LOAD_ERR(yaml, want)                                                                       \
    do {                                                                                           \
        ASSERT_NULL(load(yaml));                                                                   \
        ASSERT_STREQ(err, want);                                                                   \
    } while (0)

#define LOAD_OK(yaml)                                                                              \
    do {                                                                                           \
        if (load(yaml) == NULL)                                                                    \
            FAIL("load failed: %s", err);                                                          \
    } while (0)

static const xr_node_t *parse(const char *yaml)
{
    static xr_conf_t cf;
    xr_conf_init(&cf, xr_pool_create());
    const xr_node_t *root =
        xr_conf_parse_buffer(&cf, "<t>", (const unsigned char *) yaml, strlen(yaml));
    snprintf(err, sizeof(err), "%s", cf.err);
    return root;
}

/* ---- node tree ----------------------------------------------------------- */

TEST(positions_of_nodes)
{
    const xr_node_t *r = parse("a: 1\n"
                               "b:\n"
                               "  - x\n"
                               "  - {c: 'two'}\n"
                               "\"q k\": |\n"
                               "  text\n");
    ASSERT_NOT_NULL(r);
    ASSERT_EQ(r->type, XR_NODE_MAP);
    ASSERT_EQ(r->n, 3);
    ASSERT_EQ(r->line, 1);
    ASSERT_EQ(r->col, 1);

    const xr_node_t *k = xr_node_key(r, 0), *v = xr_node_value(r, 0);
    ASSERT_STREQ(k->str, "a");
    ASSERT_EQ(k->line, 1);
    ASSERT_EQ(k->col, 1);
    ASSERT_STREQ(k->key, "a"); /* an error about a key names the key */
    ASSERT_STREQ(v->str, "1");
    ASSERT_EQ(v->line, 1);
    ASSERT_EQ(v->col, 4);
    ASSERT_STREQ(v->key, "a");
    ASSERT_EQ(v->quoted, 0);
    ASSERT_STREQ(v->file, "<t>");

    const xr_node_t *seq = xr_node_get(r, "b");
    ASSERT_NOT_NULL(seq);
    ASSERT_EQ(xr_node_type(seq), XR_NODE_SEQ);
    ASSERT_EQ(xr_node_len(seq), 2);
    ASSERT_EQ(seq->line, 3);
    ASSERT_EQ(seq->col, 3);
    const xr_node_t *x = xr_node_item(seq, 0);
    ASSERT_STREQ(xr_node_str(x), "x");
    ASSERT_EQ(x->line, 3);
    ASSERT_EQ(x->col, 5);
    ASSERT_STREQ(x->key, "b"); /* sequence items inherit the key */
    const xr_node_t *fm = xr_node_item(seq, 1);
    ASSERT_EQ(xr_node_type(fm), XR_NODE_MAP);
    ASSERT_EQ(fm->line, 4);
    ASSERT_EQ(fm->col, 5);
    ASSERT_NULL(xr_node_item(seq, 2));
    const xr_node_t *c = xr_node_get(fm, "c");
    ASSERT_STREQ(xr_node_str(c), "two");
    ASSERT_EQ(c->line, 4);
    ASSERT_EQ(c->col, 9);
    ASSERT_EQ(c->quoted, 1);
    ASSERT_STREQ(c->key, "c");

    const xr_node_t *lit = xr_node_get(r, "q k");
    ASSERT_NOT_NULL(lit);
    ASSERT_STREQ(lit->str, "text\n");
    ASSERT_EQ(lit->slen, 5);
    ASSERT_EQ(lit->line, 5);
    ASSERT_EQ(lit->col, 8);

    /* Accessors refuse the wrong node type. */
    ASSERT_NULL(xr_node_str(seq));
    ASSERT_NULL(xr_node_key(seq, 0));
    ASSERT_NULL(xr_node_item(r, 0));
    ASSERT_NULL(xr_node_get(seq, "x"));
    ASSERT_NULL(xr_node_get(r, "zz"));
    ASSERT_EQ(xr_node_len(x), 0);
}

TEST(scalar_with_nul_keeps_length)
{
    const xr_node_t *r = parse("a: \"x\\0y\"\n");
    ASSERT_NOT_NULL(r);
    const xr_node_t *v = xr_node_get(r, "a");
    ASSERT_EQ(v->slen, 3);
    ASSERT_MEMEQ(v->str, "x\0y", 4);
}

TEST(empty_document_is_empty_mapping)
{
    const xr_node_t *r = parse("");
    ASSERT_NOT_NULL(r);
    ASSERT_EQ(r->type, XR_NODE_MAP);
    ASSERT_EQ(r->n, 0);
    r = parse("# only a comment\n");
    ASSERT_NOT_NULL(r);
    ASSERT_EQ(r->type, XR_NODE_MAP);
}

TEST(syntax_error_has_position)
{
    ASSERT_NULL(parse("a: 1\nb: [1, 2\n"));
    ASSERT_TRUE(strncmp(err, "<t>:", 4) == 0);
    ASSERT_NOT_NULL(strstr(err, ": YAML syntax error: "));

    ASSERT_NULL(parse("a: 1\n  b: 2\n"));
    ASSERT_STREQ(err, "<t>:2:4: YAML syntax error: mapping values are not allowed in this context");
}

TEST(aliases_refused)
{
    ASSERT_NULL(parse("a: &x 1\nb: *x\n"));
    ASSERT_STREQ(err, "<t>:2:4: YAML aliases are not supported");
    /* An anchor alone is harmless. */
    ASSERT_NOT_NULL(parse("a: &x 1\n"));
    /* Through the whole loader, too. */
    LOAD_ERR("daemon: &d off\n" REL "    tcp_nodelay: *d\n",
             "<buffer>:5:18: YAML aliases are not supported");
}

TEST(one_document_only)
{
    ASSERT_NULL(parse("a: 1\n---\nb: 2\n"));
    ASSERT_STREQ(err, "<t>:2:1: a configuration file holds one YAML document");
}

TEST(mapping_keys_are_scalars)
{
    ASSERT_NULL(parse("? [a]\n: 1\n"));
    ASSERT_STREQ(err, "<t>:1:3: mapping keys must be plain names");
    ASSERT_NULL(parse("{a: 1}: 2\n"));
    ASSERT_STREQ(err, "<t>:1:1: mapping keys must be plain names");
}

static char *nest(const char *open, const char *close, int depth)
{
    size_t lo = strlen(open), lc = strlen(close);
    char *s = malloc((size_t) depth * (lo + lc) + 1), *p = s;
    for (int i = 0; i < depth; i++, p += lo)
        memcpy(p, open, lo);
    for (int i = 0; i < depth; i++, p += lc)
        memcpy(p, close, lc);
    *p = '\0';
    return s;
}

TEST(depth_limit)
{
    /* 64 levels of collections are fine ... */
    ASSERT_NOT_NULL(parse(nest("[", "]", 64)));
    /* ... the 65th is refused where it opens. */
    ASSERT_NULL(parse(nest("[", "]", 65)));
    ASSERT_STREQ(err, "<t>:1:65: nesting deeper than 64 levels");
    /* Mappings count the same; the error names the enclosing key. */
    ASSERT_NULL(parse(nest("{a: ", "}", 65)));
    ASSERT_STREQ(err, "<t>:1:257: \"a\": nesting deeper than 64 levels");
    /* Far deeper input stops at the same place, without recursion. */
    ASSERT_NULL(parse(nest("[", "]", 100000)));
    ASSERT_STREQ(err, "<t>:1:65: nesting deeper than 64 levels");
    /* And through the loader. */
    char *deep = nest("{a: ", "}", 70);
    char *doc = malloc(strlen(deep) + 8);
    sprintf(doc, "x: %s\n", deep);
    LOAD_ERR(doc, "<buffer>:1:256: \"a\": nesting deeper than 64 levels");
}

TEST(node_count_limit)
{
    /* 200000 nodes at most: a flat sequence of 200001 scalars is refused
     * with a position at the start of the file. */
    size_t n = 200001;
    char *s = malloc(n * 2 + 4), *p = s;
    *p++ = '[';
    for (size_t i = 0; i < n; i++) {
        *p++ = '1';
        *p++ = ',';
    }
    p[-1] = ']';
    *p = '\0';
    ASSERT_NULL(parse(s));
    ASSERT_STREQ(err, "<t>:1:1: configuration too large (over 200000 nodes)");
}

/* ---- the directive framework --------------------------------------------- */

TEST(defaults_apply)
{
    xr_conf_t cf;
    xr_conf_init(&cf, xr_pool_create());
    tconf_t c;
    memset(&c, 0, sizeof(c));
    ASSERT_EQ(xr_conf_defaults(&cf, ttable, XR_CTX_MAIN, &c, NULL), XR_OK);
    ASSERT_EQ(c.flag, 1);
    ASSERT_EQ(c.num, 7);
    ASSERT_EQ(c.size, 65536);
    ASSERT_EQ(c.dur, 5000);
    ASSERT_EQ(c.colour, 2);
    ASSERT_NULL(c.str);
    ASSERT_EQ(cf.ctx, 0); /* restored */
}

TEST(unknown_key_did_you_mean)
{
    TSET_ERR("flga: on\n", "<t>:1:1: \"flga\": unknown directive (did you mean \"flag\"?)");
    TSET_ERR("colur: red\n", "<t>:1:1: \"colur\": unknown directive (did you mean \"colour\"?)");
    TSET_ERR("zzzzzz: 1\n", "<t>:1:1: \"zzzzzz\": unknown directive");
    /* A key of another level is unknown without hint tables ... */
    TSET_ERR("relay_only: 1\n", "<t>:1:1: \"relay_only\": unknown directive");
    /* ... and is reported before any value is looked at. */
    TSET_ERR("num: bad\nnumm: 1\n", "<t>:2:1: \"numm\": unknown directive (did you mean \"num\"?)");

    LOAD_ERR("relya: []\n", "<buffer>:1:1: \"relya\": unknown directive (did you mean \"relay\"?)");
    LOAD_ERR(
        REL "    upstream_trise: 3\n",
        "<buffer>:4:5: \"upstream_trise\": unknown directive (did you mean \"upstream_tries\"?)");
    LOAD_ERR(REL "    frobnicate: 3\n", "<buffer>:4:5: \"frobnicate\": unknown directive");
}

TEST(wrong_level)
{
    LOAD_ERR(
        "listen: 127.0.0.1:80\n" REL,
        "<buffer>:1:1: \"listen\": not allowed in the top level (it belongs in a relay block)");
    LOAD_ERR(
        REL "    daemon: on\n",
        "<buffer>:4:5: \"daemon\": not allowed in a relay block (it belongs in the top level)");
    LOAD_ERR(REL "    filters:\n      - signature: {patterns: [x], upstream: 1.2.3.4:5}\n",
             "<buffer>:5:36: \"upstream\": not allowed in a filter's options (it belongs in a "
             "relay block)");
    /* Directives allowed at both levels are fine at both. */
    LOAD_OK("buffer_size: 8k\n" REL "    buffer_size: 16k\n");
}

TEST(duplicate_key)
{
    TSET_ERR("flag: on\nnum: 1\nflag: off\n",
             "<t>:3:1: \"flag\": duplicate directive (first at <t>:1:1)");
    LOAD_ERR("daemon: off\ndaemon: on\n" REL,
             "<buffer>:2:1: \"daemon\": duplicate directive (first at <buffer>:1:1)");
    LOAD_ERR(REL "    backlog: 5\n    backlog: 6\n",
             "<buffer>:5:5: \"backlog\": duplicate directive (first at <buffer>:4:5)");
    /* relay may repeat: the blocks add up. */
    LOAD_OK(REL "relay:\n  - listen: 127.0.0.1:8081\n    upstream: 127.0.0.1:9090\n");
    ASSERT_EQ(gen->nrelays, 2);
}

TEST(required_directive)
{
    tconf_t c;
    ASSERT_EQ(tset_ctx("", &c, XR_CTX_RELAY), XR_ERROR);
    ASSERT_STREQ(err, "<t>:1:1: missing required directive \"relay_only\"");
    ASSERT_EQ(tset_ctx("relay_only: 3\n", &c, XR_CTX_RELAY), XR_OK);
    ASSERT_EQ(c.relay_only, 3);
    /* Required only where it is allowed. */
    ASSERT_EQ(tset("", &c), XR_OK);

    LOAD_ERR("relay:\n  - listen: 127.0.0.1:8080\n",
             "<buffer>:2:5: \"relay\": missing required directive \"upstream\"");
    LOAD_ERR("relay:\n  - upstream: 127.0.0.1:8080\n",
             "<buffer>:2:5: \"relay\": missing required directive \"listen\"");
    LOAD_ERR(REL "    filters: [signature]\n",
             "<buffer>:4:15: \"filters\": filter \"signature\" needs \"patterns\"");
    LOAD_ERR(REL "    filters:\n      - log: {}\n",
             "<buffer>:5:14: \"log\": missing required directive \"path\"");
}

TEST(set_bits_and_multiple_tables)
{
    xr_conf_t cf;
    xr_conf_init(&cf, xr_pool_create());
    const char *y = "num: 3\ncolour: red\n";
    const xr_node_t *r = xr_conf_parse_buffer(&cf, "<t>", (const unsigned char *) y, strlen(y));
    tconf_t c;
    memset(&c, 0, sizeof(c));
    uint64_t set = 0;
    ASSERT_EQ(xr_conf_block(&cf, r, ttable, XR_CTX_MAIN, &c, NULL, &set), XR_OK);
    ASSERT_EQ(set, (1u << 1) | (1u << 6));
}

TEST(block_must_be_mapping)
{
    tconf_t c;
    ASSERT_EQ(tset("- a\n", &c), XR_ERROR);
    ASSERT_STREQ(err, "<t>:1:1: expected a mapping of directives");
    LOAD_ERR("- a\n", "<buffer>:1:1: the top level of a configuration file must be a mapping");
    LOAD_ERR("just text\n",
             "<buffer>:1:1: the top level of a configuration file must be a mapping");
}

TEST(first_error_wins)
{
    xr_conf_t cf;
    xr_conf_init(&cf, xr_pool_create());
    xr_node_t n = {.type = XR_NODE_SCALAR, .file = "f.yaml", .line = 3, .col = 7, .key = "k"};
    ASSERT_EQ(xr_conf_error(&cf, &n, "first %d", 1), XR_ERROR);
    ASSERT_EQ(xr_conf_error(&cf, &n, "second"), XR_ERROR);
    ASSERT_STREQ(cf.err, "f.yaml:3:7: \"k\": first 1");
    /* Without a node, just the message. */
    xr_conf_init(&cf, cf.pool);
    xr_conf_error(&cf, NULL, "plain");
    ASSERT_STREQ(cf.err, "plain");
}

TEST(long_error_is_truncated_safely)
{
    char key[2000];
    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    xr_conf_t cf;
    xr_conf_init(&cf, xr_pool_create());
    xr_node_t n = {.type = XR_NODE_SCALAR, .file = key, .line = 1, .col = 1, .key = key};
    xr_conf_error(&cf, &n, "%s", key);
    ASSERT_EQ(strlen(cf.err), sizeof(cf.err) - 1);
}

/* ---- generic setters ------------------------------------------------------ */

TEST(set_flag)
{
    static const char *const yes[] = {"on", "yes", "true", "ON", "Yes", "TRUE"};
    static const char *const no[] = {"off", "no", "false", "OFF", "No", "False"};
    char y[64];
    tconf_t c;
    for (size_t i = 0; i < XR_ARRAY_SIZE(yes); i++) {
        snprintf(y, sizeof(y), "flag: %s\n", yes[i]);
        ASSERT_EQ(tset(y, &c), XR_OK);
        ASSERT_EQ(c.flag, 1);
        snprintf(y, sizeof(y), "flag: %s\n", no[i]);
        c.flag = 5;
        ASSERT_EQ(tset(y, &c), XR_OK);
        ASSERT_EQ(c.flag, 0);
    }
    TSET_ERR("flag: maybe\n", "<t>:1:7: \"flag\": expected on or off, got \"maybe\"");
    TSET_ERR("flag: 1\n", "<t>:1:7: \"flag\": expected on or off, got \"1\"");
    TSET_ERR("flag: [on]\n", "<t>:1:7: \"flag\": expected on or off, got a sequence");
    TSET_ERR("flag: {a: b}\n", "<t>:1:7: \"flag\": expected on or off, got a mapping");

    LOAD_OK("daemon: yes\n" REL "    tcp_nodelay: off\n");
    ASSERT_EQ(gen->main.daemon, 1);
    ASSERT_EQ(gen->relays[0]->tcp_nodelay, 0);
}

TEST(set_int_range)
{
    tconf_t c;
    ASSERT_EQ(tset("num: 42\n", &c), XR_OK);
    ASSERT_EQ(c.num, 42);
    ASSERT_EQ(tset("num: -5\n", &c), XR_OK);
    ASSERT_EQ(c.num, -5);
    ASSERT_EQ(tset("num: 100\n", &c), XR_OK);
    ASSERT_EQ(c.num, 100);
    ASSERT_EQ(tset("num: 007\n", &c), XR_OK); /* decimal, not octal */
    ASSERT_EQ(c.num, 7);
    TSET_ERR("num: -6\n", "<t>:1:6: \"num\": -6 is out of range (-5..100)");
    TSET_ERR("num: 101\n", "<t>:1:6: \"num\": 101 is out of range (-5..100)");
    TSET_ERR("num: 4x\n", "<t>:1:6: \"num\": expected a number, got \"4x\"");
    TSET_ERR("num: 0x10\n", "<t>:1:6: \"num\": expected a number, got \"0x10\"");
    TSET_ERR("num: 1.5\n", "<t>:1:6: \"num\": expected a number, got \"1.5\"");
    TSET_ERR("num: ''\n", "<t>:1:6: \"num\": expected a number, got \"\"");
    TSET_ERR("num: 99999999999999999999\n",
             "<t>:1:6: \"num\": expected a number, got \"99999999999999999999\"");
    TSET_ERR("num: [1]\n", "<t>:1:6: \"num\": expected a number, got a sequence");

    LOAD_ERR(REL "    backlog: 0\n", "<buffer>:4:14: \"backlog\": 0 is out of range (1..65535)");
    LOAD_ERR(REL "    upstream_tries: 101\n",
             "<buffer>:4:21: \"upstream_tries\": 101 is out of range (0..100)");
    LOAD_OK(REL "    upstream_tries: 0\n");
}

TEST(set_workers)
{
    LOAD_OK("workers: auto\n" REL);
    ASSERT_EQ(gen->main.workers, 0);
    ASSERT_GE(xr_gen_workers(gen), 1);
    LOAD_OK("workers: 4\n" REL);
    ASSERT_EQ(gen->main.workers, 4);
    ASSERT_EQ(xr_gen_workers(gen), 4);
    LOAD_ERR("workers: 0\n" REL, "<buffer>:1:10: \"workers\": 0 is out of range (1..512)");
    LOAD_ERR("workers: 513\n" REL, "<buffer>:1:10: \"workers\": 513 is out of range (1..512)");
    LOAD_ERR("workers: lots\n" REL,
             "<buffer>:1:10: \"workers\": expected auto or a number of workers, got \"lots\"");
    LOAD_ERR("workers: [1]\n" REL, "<buffer>:1:10: \"workers\": expected a number, got a sequence");
}

TEST(set_size_suffixes)
{
    static const struct {
        const char *in;
        int64_t want;
    } ok[] = {
        {"0", 0},
        {"4096", 4096},
        {"64k", 65536},
        {"64K", 65536},
        {"2kb", 2048},
        {"2KiB", 2048},
        {"1m", 1048576},
        {"3M", 3 * 1048576},
        {"1mb", 1048576},
        {"1g", 1073741824},
        {"2G", 2147483648LL},
        {"8589934591g", 8589934591LL * 1073741824LL}, /* the largest in gigabytes */
        {"9007199254740991k", 9007199254740991LL * 1024},
        {"9223372036854775807", INT64_MAX},
    };
    char y[96];
    tconf_t c;
    for (size_t i = 0; i < XR_ARRAY_SIZE(ok); i++) {
        snprintf(y, sizeof(y), "size: %s\n", ok[i].in);
        if (tset(y, &c) != XR_OK)
            FAIL("size %s: %s", ok[i].in, err);
        ASSERT_EQ(c.size, ok[i].want);
    }
    static const char *const bad[] = {"k",
                                      "-1",
                                      "+1",
                                      "1t",
                                      "1 k",
                                      "1kk",
                                      "1.5k",
                                      "0x10",
                                      "1b",
                                      "1kbb",
                                      "",
                                      " 1",
                                      "99999999999999999999"};
    for (size_t i = 0; i < XR_ARRAY_SIZE(bad); i++) {
        char want[160];
        snprintf(y, sizeof(y), "size: '%s'\n", bad[i]);
        snprintf(want, sizeof(want),
                 "<t>:1:7: \"size\": invalid size \"%s\" (use e.g. 4096, 64k, 1m, 1g)", bad[i]);
        TSET_ERR(y, want);
    }
    TSET_ERR("size: 8589934592g\n", "<t>:1:7: \"size\": size \"8589934592g\" is too large");
    TSET_ERR("size: 9007199254740992k\n",
             "<t>:1:7: \"size\": size \"9007199254740992k\" is too large");
    TSET_ERR("size: 8796093022208m\n", "<t>:1:7: \"size\": size \"8796093022208m\" is too large");
    TSET_ERR("size: [1k]\n", "<t>:1:7: \"size\": expected a size such as 64k, got a sequence");
    /* Range in bytes, after the suffix. */
    ASSERT_EQ(tset("rsize: 1k\n", &c), XR_OK);
    ASSERT_EQ(c.rsize, 1024);
    ASSERT_EQ(tset("rsize: 1m\n", &c), XR_OK);
    TSET_ERR("rsize: 1023\n", "<t>:1:8: \"rsize\": 1023 is out of range (1024..1048576 bytes)");
    TSET_ERR("rsize: 2m\n", "<t>:1:8: \"rsize\": 2m is out of range (1024..1048576 bytes)");

    LOAD_ERR("buffer_size: 17m\n" REL,
             "<buffer>:1:14: \"buffer_size\": 17m is out of range (1024..16777216 bytes)");
}

TEST(set_duration_units)
{
    static const struct {
        const char *in;
        int64_t want;
    } ok[] = {
        {"0", 0},
        {"5", 5000},
        {"5s", 5000},
        {"500ms", 500},
        {"2m", 120000},
        {"1h", 3600000},
        {"1d", 86400000},
        {"106751991167d", 106751991167LL * 86400000LL},
        {"9223372036854775807ms", INT64_MAX},
    };
    char y[96];
    tconf_t c;
    for (size_t i = 0; i < XR_ARRAY_SIZE(ok); i++) {
        snprintf(y, sizeof(y), "dur: %s\n", ok[i].in);
        if (tset(y, &c) != XR_OK)
            FAIL("duration %s: %s", ok[i].in, err);
        ASSERT_EQ(c.dur, ok[i].want);
    }
    static const char *const bad[] = {"s",    "ms",  "-1s", "+1s", "1.5s",
                                      "5x",   "5 s", "5S",  "5MS", "5sec",
                                      "5mss", "",    " 5",  "1w",  "99999999999999999999"};
    for (size_t i = 0; i < XR_ARRAY_SIZE(bad); i++) {
        char want[160];
        snprintf(y, sizeof(y), "dur: '%s'\n", bad[i]);
        snprintf(want, sizeof(want),
                 "<t>:1:6: \"dur\": invalid duration \"%s\" (use e.g. 500ms, 5s, 2m, 1h, 1d)",
                 bad[i]);
        TSET_ERR(y, want);
    }
    TSET_ERR("dur: 106751991168d\n", "<t>:1:6: \"dur\": duration \"106751991168d\" is too large");
    TSET_ERR("dur: 9223372036854775807s\n",
             "<t>:1:6: \"dur\": duration \"9223372036854775807s\" is too large");
    TSET_ERR("dur: {a: 1}\n", "<t>:1:6: \"dur\": expected a duration such as 5s, got a mapping");
    TSET_ERR("rdur: 0\n", "<t>:1:7: \"rdur\": 0 is out of range (1ms..60000ms)");
    TSET_ERR("rdur: 2m\n", "<t>:1:7: \"rdur\": 2m is out of range (1ms..60000ms)");
    ASSERT_EQ(tset("rdur: 1m\n", &c), XR_OK);
    ASSERT_EQ(c.rdur, 60000);

    LOAD_OK("drain_timeout: 90s\n" REL "    connect_timeout: 250ms\n    idle_timeout: 1h\n");
    ASSERT_EQ(gen->main.drain_timeout, 90000);
    ASSERT_EQ(gen->relays[0]->connect_timeout, 250);
    ASSERT_EQ(gen->relays[0]->idle_timeout, 3600000);
    LOAD_ERR("drain_timeout: 2d\n" REL,
             "<buffer>:1:16: \"drain_timeout\": 2d is out of range (0ms..86400000ms)");
}

TEST(set_enum)
{
    tconf_t c;
    ASSERT_EQ(tset("colour: red\n", &c), XR_OK);
    ASSERT_EQ(c.colour, 0);
    ASSERT_EQ(tset("colour: green\n", &c), XR_OK);
    ASSERT_EQ(c.colour, 1);
    TSET_ERR("colour: Green\n", "<t>:1:9: \"colour\": \"Green\" is not one of: red, green, blue");
    TSET_ERR("colour: [red]\n", "<t>:1:9: \"colour\": expected a name, got a sequence");

    LOAD_OK("log_level: debug\n" REL "    balance: source_hash\n");
    ASSERT_EQ(gen->main.log_level, XR_LOG_DEBUG);
    ASSERT_EQ(gen->relays[0]->balance, XR_BALANCE_SOURCE_HASH);
    LOAD_ERR("log_level: loud\n" REL,
             "<buffer>:1:12: \"log_level\": \"loud\" is not one of: emerg, alert, crit, error, "
             "warn, notice, info, debug");
    LOAD_ERR(REL "    balance: fastest\n",
             "<buffer>:4:14: \"balance\": \"fastest\" is not one of: round_robin, least_conn, "
             "random, source_hash");
}

TEST(set_string_and_path)
{
    tconf_t c;
    ASSERT_EQ(tset("str: hello world\n", &c), XR_OK);
    ASSERT_STREQ(c.str, "hello world");
    TSET_ERR("str: ''\n", "<t>:1:6: \"str\": must not be empty");
    TSET_ERR("str: [a]\n", "<t>:1:6: \"str\": expected a string, got a sequence");
    ASSERT_EQ(tset("path: /abs/x\n", &c), XR_OK);
    ASSERT_STREQ(c.path, "/abs/x");
    /* Relative to a buffer: left alone. */
    ASSERT_EQ(tset("path: rel/x\n", &c), XR_OK);
    ASSERT_STREQ(c.path, "rel/x");
    TSET_ERR("path: \"\"\n", "<t>:1:7: \"path\": must not be empty");

    /* Relative to a file: against the file's directory. */
    xr_conf_t cf;
    xr_conf_init(&cf, xr_pool_create());
    const char *y = "path: rel/x\n";
    const xr_node_t *r =
        xr_conf_parse_buffer(&cf, "/etc/xrayd/main.yaml", (const unsigned char *) y, strlen(y));
    memset(&c, 0, sizeof(c));
    ASSERT_EQ(xr_conf_block(&cf, r, ttable, XR_CTX_MAIN, &c, NULL, NULL), XR_OK);
    ASSERT_STREQ(c.path, "/etc/xrayd/rel/x");
    ASSERT_STREQ(xr_conf_path(&cf, xr_node_get(r, "path"), "/x"), "/x");
    r = xr_conf_parse_buffer(&cf, "main.yaml", (const unsigned char *) y, strlen(y));
    ASSERT_STREQ(xr_conf_path(&cf, xr_node_get(r, "path"), "rel/x"), "rel/x");

    LOAD_OK("pid: /tmp/x.pid\nerror_log: /tmp/e.log\n" REL "    name: front\n");
    ASSERT_STREQ(gen->main.pid, "/tmp/x.pid");
    ASSERT_STREQ(gen->main.error_log, "/tmp/e.log");
    ASSERT_STREQ(gen->relays[0]->name, "front");
}

static void check_addr(const char *in, int family, int port, const char *text)
{
    char y[160];
    tconf_t c;
    snprintf(y, sizeof(y), "addr: '%s'\n", in);
    if (tset(y, &c) != XR_OK)
        FAIL("address %s: %s", in, err);
    ASSERT_EQ(c.addr.sa.ss_family, family);
    if (family == AF_INET) {
        ASSERT_EQ(c.addr.len, sizeof(struct sockaddr_in));
        ASSERT_EQ(ntohs(((struct sockaddr_in *) &c.addr.sa)->sin_port), port);
    } else {
        ASSERT_EQ(c.addr.len, sizeof(struct sockaddr_in6));
        ASSERT_EQ(ntohs(((struct sockaddr_in6 *) &c.addr.sa)->sin6_port), port);
    }
    ASSERT_STREQ(c.addr.text, text);
}

TEST(set_address_forms)
{
    check_addr("127.0.0.1:80", AF_INET, 80, "127.0.0.1:80");
    check_addr("10.1.2.3:65535", AF_INET, 65535, "10.1.2.3:65535");
    check_addr("127.0.0.1:1", AF_INET, 1, "127.0.0.1:1");
    check_addr("127.0.0.1:0080", AF_INET, 80, "127.0.0.1:80");
    check_addr("*:80", AF_INET, 80, "0.0.0.0:80");
    check_addr(":8080", AF_INET, 8080, "0.0.0.0:8080");
    check_addr("[::1]:80", AF_INET6, 80, "[::1]:80");
    check_addr("[::]:443", AF_INET6, 443, "[::]:443");
    check_addr("[2001:DB8:0:0::1]:8443", AF_INET6, 8443, "[2001:db8::1]:8443");
    check_addr("[::ffff:127.0.0.1]:80", AF_INET6, 80, "[::ffff:127.0.0.1]:80");
}

TEST(set_address_bad)
{
    static const char *const badport[] = {"127.0.0.1:0",  "127.0.0.1:65536",        "127.0.0.1:",
                                          "127.0.0.1:8x", "127.0.0.1:-1",           "[::1]:",
                                          "[::1]:0",      "*:99999999999999999999", "*:http"};
    char y[160], want[256];
    for (size_t i = 0; i < XR_ARRAY_SIZE(badport); i++) {
        snprintf(y, sizeof(y), "addr: '%s'\n", badport[i]);
        snprintf(want, sizeof(want), "<t>:1:7: \"addr\": invalid port in \"%s\" (1-65535)",
                 badport[i]);
        TSET_ERR(y, want);
    }
    static const char *const badform[] = {"127.0.0.1", "::1:80", "[::1]80",
                                          "[::1",      "",       "[::1]:80:1x"};
    for (size_t i = 0; i < XR_ARRAY_SIZE(badform); i++) {
        snprintf(y, sizeof(y), "addr: '%s'\n", badform[i]);
        snprintf(want, sizeof(want),
                 "<t>:1:7: \"addr\": invalid address \"%s\" (use host:port, [ipv6]:port or "
                 "*:port)",
                 badform[i]);
        if (strcmp(badform[i], "[::1]:80:1x") == 0) /* the port part is "80:1x" */
            snprintf(want, sizeof(want), "<t>:1:7: \"addr\": invalid port in \"%s\" (1-65535)",
                     badform[i]);
        TSET_ERR(y, want);
    }
    /* A host part longer than any name. */
    char longhost[400];
    memset(longhost, 'h', 300);
    strcpy(longhost + 300, ":80");
    char ly[420];
    snprintf(ly, sizeof(ly), "addr: %s\n", longhost);
    tconf_t c;
    ASSERT_EQ(tset(ly, &c), XR_ERROR);
    ASSERT_NOT_NULL(strstr(err, "invalid address"));
    TSET_ERR("addr: [a, b]\n",
             "<t>:1:7: \"addr\": expected an address such as 127.0.0.1:8080, got a sequence");
}

TEST(set_address_list)
{
    tconf_t c;
    ASSERT_EQ(tset("addrs: 127.0.0.1:1\n", &c), XR_OK);
    ASSERT_EQ(c.addrs.n, 1);
    ASSERT_STREQ(c.addrs.items[0].text, "127.0.0.1:1");
    ASSERT_EQ(tset("addrs: [127.0.0.1:1, '[::1]:2', '*:3']\n", &c), XR_OK);
    ASSERT_EQ(c.addrs.n, 3);
    ASSERT_STREQ(c.addrs.items[1].text, "[::1]:2");
    ASSERT_STREQ(c.addrs.items[2].text, "0.0.0.0:3");
    TSET_ERR("addrs: []\n", "<t>:1:8: \"addrs\": needs at least one address");
    TSET_ERR("addrs: {a: b}\n",
             "<t>:1:8: \"addrs\": expected an address or a sequence of addresses");
    TSET_ERR("addrs: [127.0.0.1:1, bad]\n",
             "<t>:1:22: \"addrs\": invalid address \"bad\" (use host:port, [ipv6]:port or *:port)");
    TSET_ERR("addrs:\n  - 127.0.0.1:1\n  - 127.0.0.1:0\n",
             "<t>:3:5: \"addrs\": invalid port in \"127.0.0.1:0\" (1-65535)");
    TSET_ERR("addrs: [[127.0.0.1:1]]\n",
             "<t>:1:9: \"addrs\": expected an address such as 127.0.0.1:8080, got a sequence");

    LOAD_OK("relay:\n  - listen: ['[::1]:8080', 127.0.0.1:8080]\n"
            "    upstream: ['[::1]:9090', 127.0.0.2:9090]\n");
    ASSERT_EQ(gen->relays[0]->listen.n, 2);
    ASSERT_EQ(gen->relays[0]->upstream.n, 2);
    ASSERT_STREQ(gen->relays[0]->name, "[::1]:8080"); /* the first listen address */
    ASSERT_EQ(gen->relays[0]->upstream.items[0].sa.ss_family, AF_INET6);
}

TEST(set_str_list)
{
    tconf_t c;
    ASSERT_EQ(tset("strs: one\n", &c), XR_OK);
    ASSERT_EQ(c.strs.n, 1);
    ASSERT_STREQ(c.strs.items[0], "one");
    ASSERT_EQ(c.strs.lens[0], 3);
    ASSERT_EQ(tset("strs: [a, bb, '', \"n\\0l\"]\n", &c), XR_OK);
    ASSERT_EQ(c.strs.n, 4);
    ASSERT_STREQ(c.strs.items[1], "bb");
    ASSERT_EQ(c.strs.lens[1], 2);
    ASSERT_EQ(c.strs.lens[2], 0);
    ASSERT_EQ(c.strs.lens[3], 3); /* embedded NUL kept by length */
    ASSERT_EQ(tset("strs: []\n", &c), XR_OK);
    ASSERT_EQ(c.strs.n, 0);
    TSET_ERR("strs: [a, [b]]\n", "<t>:1:11: \"strs\": expected a string, got a sequence");
    TSET_ERR("strs: {a: 1}\n", "<t>:1:7: \"strs\": expected a string or a sequence of strings");
}

TEST(directive_slot_sizes_and_names)
{
    ASSERT_EQ(xr_directive_slot_size(&ttable[0]), sizeof(int));
    ASSERT_EQ(xr_directive_slot_size(&ttable[1]), sizeof(int64_t));
    ASSERT_EQ(xr_directive_slot_size(&ttable[9]), sizeof(xr_addr_t));
    ASSERT_EQ(xr_directive_slot_size(&ttable[10]), sizeof(xr_addr_list_t));
    ASSERT_EQ(xr_directive_slot_size(&ttable[11]), sizeof(xr_str_list_t));
    ASSERT_STREQ(xr_dir_type_name(XR_T_DURATION), "duration");
    ASSERT_STREQ(xr_dir_type_name(XR_T_CUSTOM), "block");
    ASSERT_STREQ(xr_dir_type_name((xr_dir_type_t) 99), "?");
}

TEST(distance)
{
    ASSERT_EQ(xr_conf_distance("", ""), 0);
    ASSERT_EQ(xr_conf_distance("abc", "abc"), 0);
    ASSERT_EQ(xr_conf_distance("", "abc"), 3);
    ASSERT_EQ(xr_conf_distance("abc", ""), 3);
    ASSERT_EQ(xr_conf_distance("kitten", "sitting"), 3);
    ASSERT_EQ(xr_conf_distance("flaw", "lawn"), 2);
    ASSERT_EQ(xr_conf_distance("relya", "relay"), 2); /* a swap is two edits */
    ASSERT_EQ(xr_conf_distance("listen", "listne"), 2);
    ASSERT_EQ(xr_conf_distance("backlog", "backlogs"), 1);
    ASSERT_EQ(xr_conf_distance("upstream", "upstream_tries"), 6);
    /* Symmetric. */
    ASSERT_EQ(xr_conf_distance("sitting", "kitten"), 3);
    /* Long names are "far" rather than overflowing the row. */
    char a[100];
    memset(a, 'a', sizeof(a) - 1);
    a[99] = '\0';
    ASSERT_EQ(xr_conf_distance(a, "a"), 64);
    ASSERT_EQ(xr_conf_distance("a", a), 64);
    a[63] = '\0';
    ASSERT_EQ(xr_conf_distance(a, a), 0);
    ASSERT_EQ(xr_conf_distance(a, ""), 63);
}

/* ---- whole configurations ------------------------------------------------ */

TEST(defaults_and_inheritance)
{
    LOAD_OK(REL);
    ASSERT_STREQ(gen->file, "<buffer>");
    ASSERT_EQ(gen->main.daemon, 0);
    ASSERT_EQ(gen->main.workers, 0);
    ASSERT_STREQ(gen->main.pid, "/run/xrayd.pid");
    ASSERT_STREQ(gen->main.error_log, "stderr");
    ASSERT_EQ(gen->main.log_level, XR_LOG_INFO);
    ASSERT_EQ(gen->main.drain_timeout, 60000);
    ASSERT_EQ(gen->nrelays, 1);
    const xr_relay_conf_t *rc = gen->relays[0];
    ASSERT_STREQ(rc->name, "127.0.0.1:8080");
    ASSERT_EQ(rc->balance, XR_BALANCE_ROUND_ROBIN);
    ASSERT_EQ(rc->tcp_nodelay, 1);
    ASSERT_EQ(rc->upstream_tries, 0);
    ASSERT_EQ(rc->upstream_max_fails, 1);
    ASSERT_EQ(rc->upstream_fail_timeout, 10000);
    ASSERT_EQ(rc->buffer_size, 65536);
    ASSERT_EQ(rc->connect_timeout, 5000);
    ASSERT_EQ(rc->idle_timeout, 600000);
    ASSERT_EQ(rc->max_connections, 10000);
    ASSERT_EQ(rc->backlog, 511);
    ASSERT_EQ(rc->nfilters, 0);
    ASSERT_EQ(rc->slot, -1);

    /* Top-level values are inherited unless a block sets its own; the
     * order of the keys does not matter. */
    LOAD_OK("relay:\n"
            "  - listen: 127.0.0.1:8080\n"
            "    upstream: 127.0.0.1:9090\n"
            "  - listen: 127.0.0.1:8081\n"
            "    upstream: 127.0.0.1:9090\n"
            "    buffer_size: 32k\n"
            "    tcp_nodelay: on\n"
            "buffer_size: 16k\n"
            "tcp_nodelay: off\n"
            "idle_timeout: 30s\n");
    ASSERT_EQ(gen->relays[0]->buffer_size, 16384);
    ASSERT_EQ(gen->relays[0]->tcp_nodelay, 0);
    ASSERT_EQ(gen->relays[0]->idle_timeout, 30000);
    ASSERT_EQ(gen->relays[1]->buffer_size, 32768);
    ASSERT_EQ(gen->relays[1]->tcp_nodelay, 1);
    ASSERT_EQ(gen->relays[1]->idle_timeout, 30000);
    ASSERT_EQ(gen->relays[1]->index, 1);
}

TEST(no_relays)
{
    LOAD_ERR("", "<buffer>:1:1: no relay or proxy blocks and no agent: nothing to do (add a "
                 "\"relay:\" list)");
    LOAD_ERR("daemon: off\n", "<buffer>:1:1: no relay or proxy blocks and no agent: nothing to do "
                              "(add a \"relay:\" list)");
    LOAD_ERR("relay: []\n", "<buffer>:1:1: no relay or proxy blocks and no agent: nothing to do "
                            "(add a \"relay:\" list)");
}

TEST(relay_shapes)
{
    LOAD_ERR("relay: {listen: 127.0.0.1:1}\n",
             "<buffer>:1:8: \"relay\": expected a sequence of relay blocks (each item starts with "
             "\"- \")");
    LOAD_ERR("relay: [x]\n",
             "<buffer>:1:9: \"relay\": expected a relay block (a mapping with listen)");
    LOAD_ERR(REL "    filters: signature\n",
             "<buffer>:4:14: \"filters\": expected a sequence of filters (each item starts with "
             "\"- \")");
    LOAD_ERR(REL "    filters: [{a: 1, b: 2}]\n",
             "<buffer>:4:15: \"filters\": a filter is NAME or NAME: {options}");
    LOAD_ERR(REL "    filters: [nope]\n",
             "<buffer>:4:15: \"filters\": unknown filter module \"nope\" (built in: log, "
             "signature; load others with load_module)");
}

TEST(duplicate_listen_and_name)
{
    LOAD_ERR(REL "  - listen: 127.0.0.1:8080\n    upstream: 127.0.0.1:9091\n",
             "<buffer>:4:13: \"listen\": duplicate listen address 127.0.0.1:8080 (already at "
             "<buffer>:2:13)");
    /* A wildcard takes the port on every address. */
    LOAD_ERR(REL "  - listen: '*:8080'\n    upstream: 127.0.0.1:9091\n",
             "<buffer>:4:13: \"listen\": duplicate listen address 0.0.0.0:8080 (already at "
             "<buffer>:2:13)");
    /* Within one block's list. */
    LOAD_ERR("relay:\n  - listen: [127.0.0.1:1, 127.0.0.1:1]\n    upstream: 127.0.0.1:2\n",
             "<buffer>:2:27: \"listen\": duplicate listen address 127.0.0.1:1 (already at "
             "<buffer>:2:14)");
    /* Other families and ports do not conflict. */
    LOAD_OK(REL "  - listen: '[::]:8080'\n    upstream: 127.0.0.1:9091\n"
                "  - listen: 127.0.0.1:8081\n    upstream: 127.0.0.1:9091\n");
    ASSERT_EQ(gen->nrelays, 3);
    LOAD_ERR("relay:\n"
             "  - {name: a, listen: 127.0.0.1:1, upstream: 127.0.0.1:3}\n"
             "  - {name: a, listen: 127.0.0.1:2, upstream: 127.0.0.1:3}\n",
             "<buffer>:3:12: \"name\": duplicate relay name \"a\"");
}

TEST(filters_and_dry_run)
{
    LOAD_OK(REL "    filters:\n"
                "      - signature:\n"
                "          patterns: [\"/etc/passwd\", {hex: \"de ad\"}, {literal: x, name: y}]\n"
                "          direction: up\n"
                "      - log: {path: /nonexistent/dir/access.log}\n");
    const xr_relay_conf_t *rc = gen->relays[0];
    ASSERT_EQ(rc->nfilters, 2);
    ASSERT_STREQ(rc->filters[0].module->name, "signature");
    ASSERT_STREQ(rc->filters[1].module->name, "log");
    /* Dry run: the log's file was not opened (it could not be). */
    ASSERT_NOT_NULL(gen->filters);
    LOAD_ERR(REL "    filters: [log]\n",
             "<buffer>:4:15: \"filters\": filter \"log\" needs \"path\"");
    LOAD_ERR(REL "    filters:\n      - log: ~\n",
             "<buffer>:5:9: \"log\": filter \"log\" needs \"path\"");
}

TEST(includes_fail_cleanly_in_buffer)
{
    LOAD_ERR("include: /nonexistent/x.yaml\n" REL,
             "<buffer>:1:10: \"include\": cannot open \"/nonexistent/x.yaml\": No such file or "
             "directory");
    /* A glob that matches nothing is an empty conf.d ... */
    LOAD_OK("include: /*.xrayd-unit-matches-nothing\n" REL);
    /* ... but a directory that is not there is an error. */
    LOAD_ERR("include: /nonexistent/conf.d/*.yaml\n" REL,
             "<buffer>:1:10: \"include\": cannot read \"/nonexistent/conf.d/*.yaml\"");
    LOAD_ERR("include: {a: b}\n" REL,
             "<buffer>:1:10: \"include\": expected a path or a sequence of paths");
    LOAD_ERR("include: ['']\n" REL, "<buffer>:1:11: \"include\": expected a path");
    LOAD_ERR("include: /dev/null\n" REL,
             "<buffer>:1:10: \"include\": \"/dev/null\" is not a regular file under 16 MiB");
}

static char tmpdir[64];

static void write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *fp = fopen(path, "w");
    ASSERT_NOT_NULL(fp);
    fputs(text, fp);
    fclose(fp);
}

TEST(includes_from_files)
{
    strcpy(tmpdir, "/tmp/xrayd-unit-XXXXXX");
    ASSERT_NOT_NULL(mkdtemp(tmpdir));
    char path[256], sub[256], want[1024];
    snprintf(sub, sizeof(sub), "%s/conf.d", tmpdir);
    ASSERT_EQ(mkdir(sub, 0700), 0);
    write_file("main.yaml", "include: conf.d/*.yaml\nworkers: 2\n");
    write_file("conf.d/a.yaml", REL);
    write_file("conf.d/b.yaml", "relay:\n  - listen: 127.0.0.1:8081\n    upstream: 127.0.0.1:1\n");
    snprintf(path, sizeof(path), "%s/main.yaml", tmpdir);
    xr_gen_t *g = xr_gen_load(path, err, sizeof(err));
    if (g == NULL)
        FAIL("%s", err);
    ASSERT_EQ(g->nrelays, 2); /* relay repeats across files */
    ASSERT_EQ(g->main.workers, 2);
    ASSERT_STREQ(g->file, path);
    xr_gen_free(g);

    /* An error in an included file names that file. */
    write_file("conf.d/c.yaml", "backlog: 5\n");
    g = xr_gen_load(path, err, sizeof(err));
    ASSERT_NULL(g);
    snprintf(want, sizeof(want),
             "%s/conf.d/c.yaml:1:1: \"backlog\": not allowed in the top level (it belongs in a "
             "relay block)",
             tmpdir);
    ASSERT_STREQ(err, want);

    /* A file that includes itself. */
    write_file("loop.yaml", "include: loop.yaml\n");
    snprintf(path, sizeof(path), "%s/loop.yaml", tmpdir);
    ASSERT_NULL(xr_gen_load(path, err, sizeof(err)));
    snprintf(want, sizeof(want),
             "%s/loop.yaml:1:1: \"include\": includes nested deeper than 8 (a loop?)", tmpdir);
    ASSERT_STREQ(err, want);

    /* A missing top file. */
    snprintf(path, sizeof(path), "%s/missing.yaml", tmpdir);
    ASSERT_NULL(xr_gen_load(path, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s/missing.yaml: cannot open: No such file or directory", tmpdir);
    ASSERT_STREQ(err, want);

    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    ASSERT_EQ(system(cmd), 0);
}

TEST(load_module_missing)
{
    ASSERT_NULL(load("load_module: /nonexistent/mod.so\n" REL));
    ASSERT_TRUE(strncmp(err, "<buffer>:1:14: \"load_module\": cannot load module: ", 50) == 0);
    LOAD_ERR("load_module: {a: b}\n" REL,
             "<buffer>:1:14: \"load_module\": expected a path or a sequence of paths");
    LOAD_ERR("load_module: ['']\n" REL,
             "<buffer>:1:15: \"load_module\": expected a path to a module .so");
}

TEST(list_directives)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    xr_gen_list_directives(fp);
    fclose(fp);
    ASSERT_NOT_NULL(strstr(buf, "listen\trelay,proxy\taddresses\t-\t"));
    ASSERT_NOT_NULL(strstr(buf, "buffer_size\tmain,relay,proxy\tsize\t64k\t"));
    ASSERT_NOT_NULL(strstr(buf, "balance\trelay\tround_robin|least_conn|random|source_hash\t"));
    ASSERT_NOT_NULL(strstr(buf, "patterns\tfilter:signature\t"));
    ASSERT_NOT_NULL(strstr(buf, "direction\tfilter:signature\tup|down|both\tboth\t"));
    free(buf);
}
