/*
 * test_filter.c: the filter chain every front door runs (relay/filter.c):
 * pass, modify (shrink and grow), hold across reads, drop, close, deny
 * at open, and the order of the hooks.
 */
#include "unit.h"

#include "core/xrayd.h"
#include "relay/filter.h"

/* A scripted filter: what it answers is set per test. */
typedef struct {
    int opened, closed, logged;
    size_t seen; /* bytes its data hook was shown, in total */
} fake_state_t;

static xr_filter_rc_t upper_data(void *conf, void *st, xr_session_t *s, int dir, xr_chunk_t *c)
{
    fake_state_t *fs = st;
    fs->seen += c->len;
    for (size_t i = 0; i < c->len; i++)
        if (c->data[i] >= 'a' && c->data[i] <= 'z')
            c->data[i] = (unsigned char) (c->data[i] - 32);
    return XR_FILTER_PASS;
}

/* Holds until it has seen a newline, then passes the whole line. */
static xr_filter_rc_t line_data(void *conf, void *st, xr_session_t *s, int dir, xr_chunk_t *c)
{
    ((fake_state_t *) st)->seen += c->len;
    return memchr(c->data, '\n', c->len) ? XR_FILTER_PASS : XR_FILTER_HOLD;
}

/* Drops every chunk that starts with '#'. */
static xr_filter_rc_t drop_data(void *conf, void *st, xr_session_t *s, int dir, xr_chunk_t *c)
{
    return c->len > 0 && c->data[0] == '#' ? XR_FILTER_DROP : XR_FILTER_PASS;
}

/* Closes on "BAD". */
static xr_filter_rc_t close_data(void *conf, void *st, xr_session_t *s, int dir, xr_chunk_t *c)
{
    if (memmem(c->data, c->len, "BAD", 3) != NULL) {
        snprintf(s->close_reason, sizeof(s->close_reason), "BAD seen");
        return XR_FILTER_CLOSE;
    }
    return XR_FILTER_PASS;
}

/* Doubles every byte (grows the chunk up to its cap). */
static xr_filter_rc_t double_data(void *conf, void *st, xr_session_t *s, int dir, xr_chunk_t *c)
{
    size_t n = c->len;
    if (n * 2 > c->cap)
        return XR_FILTER_CLOSE;
    for (size_t i = n; i-- > 0;) {
        c->data[2 * i] = c->data[i];
        c->data[2 * i + 1] = c->data[i];
    }
    c->len = 2 * n;
    return XR_FILTER_PASS;
}

/* Writes past its cap: the chain must refuse it. */
static xr_filter_rc_t overrun_data(void *conf, void *st, xr_session_t *s, int dir, xr_chunk_t *c)
{
    c->len = c->cap + 1;
    return XR_FILTER_PASS;
}

/* Answers "NO\n" to a chunk holding '!'. */
static xr_filter_rc_t answer_data(void *conf, void *st, xr_session_t *s, int dir, xr_chunk_t *c)
{
    if (memchr(c->data, '!', c->len) == NULL)
        return XR_FILTER_PASS;
    memcpy(c->data, "NO\n", 3);
    c->len = 3;
    return XR_FILTER_ANSWER;
}

static int order[16], norder;

static int deny_open(void *conf, void *st, xr_session_t *s)
{
    order[norder++] = 100;
    snprintf(s->close_reason, sizeof(s->close_reason), "not today");
    return XR_DECLINED;
}

static int count_open(void *conf, void *st, xr_session_t *s)
{
    ((fake_state_t *) st)->opened++;
    order[norder++] = 1;
    return XR_OK;
}

static void count_close(void *conf, void *st, xr_session_t *s)
{
    ((fake_state_t *) st)->closed++;
    order[norder++] = 2;
}

static void count_log(void *conf, void *st, xr_session_t *s)
{
    ((fake_state_t *) st)->logged++;
    order[norder++] = 3;
}

#define FAKE(nm, dat)                                                                              \
    static const xr_module_t nm = {.name = #nm,                                                    \
                                   .state_size = sizeof(fake_state_t),                             \
                                   .open = count_open,                                             \
                                   .data = dat,                                                    \
                                   .close = count_close,                                           \
                                   .log = count_log}
FAKE(m_upper, upper_data);
FAKE(m_line, line_data);
FAKE(m_drop, drop_data);
FAKE(m_close, close_data);
FAKE(m_double, double_data);
FAKE(m_overrun, overrun_data);
FAKE(m_answer, answer_data);
static const xr_module_t m_deny = {.name = "m_deny", .open = deny_open};

typedef struct {
    xr_relay_conf_t rc;
    xr_filter_conf_t f[4];
    xr_relay_rt_t rt;
    unsigned char *fstate;
    xr_session_t s;
    xr_chain_t ch;
    xr_buf_t *b;
} chain_t;

static void chain_setup(chain_t *c, const xr_module_t *m0, const xr_module_t *m1)
{
    memset(c, 0, sizeof(*c));
    const xr_module_t *ms[2] = {m0, m1};
    for (int i = 0; i < 2 && ms[i]; i++) {
        c->f[i].module = ms[i];
        c->rc.nfilters++;
    }
    c->rc.filters = c->f;
    xr_relay_rt_init(&c->rt, &c->rc);
    c->fstate = xr_chain_state_new(&c->rt);
    c->b = xr_buf_get(4096);
}

static void chain_teardown(chain_t *c)
{
    xr_chain_release(&c->ch);
    xr_buf_put(c->b);
    free(c->fstate);
    xr_relay_rt_free(&c->rt);
}

static fake_state_t *fs(chain_t *c, int i)
{
    return (fake_state_t *) (c->fstate + c->rt.state_off[i]);
}

/* Append bytes as a read would and run the chain over them. */
static int feed(chain_t *c, const char *p)
{
    uint32_t off = c->b->end;
    memcpy(c->b->data + off, p, strlen(p));
    c->b->end += (uint32_t) strlen(p);
    return xr_chain_run(&c->rt, c->fstate, &c->s, XR_DIR_UP, &c->ch, c->b, off);
}

/* What may be sent now, taken out of the buffer as a write would. */
static const char *sent(chain_t *c)
{
    static char out[4096];
    size_t n = c->b->filt - c->b->start;
    memcpy(out, c->b->data + c->b->start, n);
    out[n] = '\0';
    c->b->start = c->b->filt;
    return out;
}

TEST(pass_and_modify)
{
    chain_t c;
    chain_setup(&c, &m_upper, NULL);
    ASSERT_EQ(feed(&c, "hello"), XR_OK);
    ASSERT_STREQ(sent(&c), "HELLO");
    ASSERT_EQ(fs(&c, 0)->seen, 5);
    chain_teardown(&c);
}

TEST(hold_across_reads_then_pass)
{
    chain_t c;
    chain_setup(&c, &m_upper, &m_line);
    ASSERT_EQ(feed(&c, "one "), XR_OK);
    ASSERT_STREQ(sent(&c), "");
    ASSERT_EQ(feed(&c, "two "), XR_OK);
    ASSERT_STREQ(sent(&c), "");
    ASSERT_EQ(feed(&c, "three\nfour"), XR_OK);
    /* The filter before the holder saw each byte once. */
    ASSERT_EQ(fs(&c, 0)->seen, 18);
    ASSERT_STREQ(sent(&c), "ONE TWO THREE\nFOUR");
    chain_teardown(&c);
}

TEST(held_bytes_never_pass_at_eof)
{
    chain_t c;
    chain_setup(&c, &m_line, NULL);
    ASSERT_EQ(feed(&c, "a\n"), XR_OK);
    ASSERT_STREQ(sent(&c), "a\n");
    ASSERT_EQ(feed(&c, "no newline"), XR_OK);
    ASSERT_EQ(xr_chain_eof(&c.ch, c.b), 10);
    ASSERT_STREQ(sent(&c), "");
    ASSERT_EQ(c.b->end, c.b->filt);
    chain_teardown(&c);
}

TEST(drop)
{
    chain_t c;
    chain_setup(&c, &m_drop, &m_upper);
    ASSERT_EQ(feed(&c, "#secret"), XR_OK);
    ASSERT_STREQ(sent(&c), "");
    ASSERT_EQ(fs(&c, 1)->seen, 0); /* a dropped chunk goes no further */
    ASSERT_EQ(feed(&c, "ok"), XR_OK);
    ASSERT_STREQ(sent(&c), "OK");
    chain_teardown(&c);
}

TEST(close_sets_reason)
{
    chain_t c;
    chain_setup(&c, &m_close, NULL);
    ASSERT_EQ(feed(&c, "fine "), XR_OK);
    ASSERT_EQ(feed(&c, "xxBADxx"), XR_ERROR);
    ASSERT_STREQ(c.s.close_reason, "BAD seen");
    chain_teardown(&c);
}

TEST(close_after_hold_sees_whole_pattern)
{
    /* "BA" and "D" arrive in two reads: a holder in front of the closer
     * hands it the whole line, so the split pattern is seen. */
    chain_t c;
    chain_setup(&c, &m_line, &m_close);
    ASSERT_EQ(feed(&c, "xxBA"), XR_OK);
    ASSERT_EQ(feed(&c, "D\n"), XR_ERROR);
    ASSERT_STREQ(c.s.close_reason, "BAD seen");
    chain_teardown(&c);
}

TEST(grow_within_cap)
{
    chain_t c;
    chain_setup(&c, &m_double, NULL);
    ASSERT_EQ(feed(&c, "ab"), XR_OK);
    ASSERT_STREQ(sent(&c), "aabb");
    chain_teardown(&c);
}

TEST(overrun_is_refused)
{
    chain_t c;
    chain_setup(&c, &m_overrun, NULL);
    ASSERT_EQ(feed(&c, "x"), XR_ERROR);
    ASSERT_STREQ(c.s.close_reason, "filter m_overrun failed");
    chain_teardown(&c);
}

TEST(open_deny_runs_close_of_opened_only)
{
    chain_t c;
    chain_setup(&c, &m_upper, &m_deny);
    int opened = 0;
    norder = 0;
    ASSERT_EQ(xr_chain_open(&c.rt, c.fstate, &c.s, &opened), XR_ERROR);
    ASSERT_EQ(opened, 2);
    ASSERT_STREQ(c.s.close_reason, "not today");
    xr_chain_close(&c.rt, c.fstate, &c.s, opened);
    /* open upper, deny, close upper, log upper (deny has no hooks). */
    ASSERT_EQ(norder, 4);
    ASSERT_EQ(order[0], 1);
    ASSERT_EQ(order[1], 100);
    ASSERT_EQ(order[2], 2);
    ASSERT_EQ(order[3], 3);
    ASSERT_EQ(fs(&c, 0)->closed, 1);
    chain_teardown(&c);
}

TEST(compaction_moves_holds)
{
    chain_t c;
    chain_setup(&c, &m_line, NULL);
    ASSERT_EQ(feed(&c, "abc\n"), XR_OK);
    ASSERT_STREQ(sent(&c), "abc\n");
    ASSERT_EQ(feed(&c, "de"), XR_OK);
    xr_chain_moved(&c.ch, xr_buf_compact(c.b));
    ASSERT_EQ(c.b->start, 0);
    ASSERT_EQ(feed(&c, "f\n"), XR_OK);
    ASSERT_STREQ(sent(&c), "def\n");
    chain_teardown(&c);
}

TEST(answer_replaces_the_chunk)
{
    chain_t c;
    chain_setup(&c, &m_upper, &m_answer);
    ASSERT_EQ(feed(&c, "fine "), XR_OK);
    ASSERT_STREQ(sent(&c), "FINE ");
    ASSERT_EQ(feed(&c, "stop!"), XR_CHAIN_ANSWER);
    /* Nothing of the answering chunk is sent on; the answer is after filt. */
    ASSERT_EQ(c.b->filt, c.b->start);
    ASSERT_EQ(c.b->end - c.b->filt, 3);
    ASSERT_EQ(memcmp(c.b->data + c.b->filt, "NO\n", 3), 0);
    ASSERT_STREQ(c.s.close_reason, "answered by m_answer");
    chain_teardown(&c);
}

TEST(answer_drops_what_a_holder_kept)
{
    chain_t c;
    chain_setup(&c, &m_line, &m_answer);
    ASSERT_EQ(feed(&c, "a\n"), XR_OK);
    ASSERT_STREQ(sent(&c), "a\n");
    ASSERT_EQ(feed(&c, "held "), XR_OK);
    ASSERT_EQ(feed(&c, "now!\n"), XR_CHAIN_ANSWER);
    ASSERT_EQ(c.b->filt, c.b->start); /* "held " never passed the holder */
    ASSERT_EQ(c.b->end - c.b->filt, 3);
    ASSERT_EQ(c.ch.nholds, 0);
    chain_teardown(&c);
}
