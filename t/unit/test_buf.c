/*
 * test_buf.c: the relay buffer pool: capacity rounding, reuse, the
 * spare-buffer limit, trimming, statistics and compaction.
 */
#include "core/xrayd.h"
#include "relay/buf.h"

#include "unit.h"

/* What xr_buf_get(n) gives: the whole of the page-rounded mapping. */
static size_t want_cap(size_t n)
{
    return ((sizeof(xr_buf_t) + n + 4095) & ~(size_t) 4095) - sizeof(xr_buf_t);
}

static size_t map_size(size_t cap)
{
    return (sizeof(xr_buf_t) + cap + 4095) & ~(size_t) 4095;
}

TEST(cap_rounding)
{
    static const size_t in[] = {
        0,    1,     100,     4000, 4096 - sizeof(xr_buf_t), 4096 - sizeof(xr_buf_t) + 1,
        4096, 65536, 16 << 20};
    for (size_t i = 0; i < XR_ARRAY_SIZE(in); i++) {
        xr_buf_t *b = xr_buf_get(in[i]);
        ASSERT_NOT_NULL(b);
        ASSERT_EQ(b->cap, want_cap(in[i]));
        ASSERT_GE(b->cap, in[i]);
        ASSERT_EQ((sizeof(xr_buf_t) + b->cap) % 4096, 0);
        ASSERT_EQ(b->start, 0);
        ASSERT_EQ(b->filt, 0);
        ASSERT_EQ(b->end, 0);
        ASSERT_NULL(b->next);
        /* Every byte up to cap is usable. */
        memset(b->data, 0xa5, b->cap);
        xr_buf_put(b);
    }
    ASSERT_EQ(want_cap(1), 4096 - sizeof(xr_buf_t));
    ASSERT_EQ(want_cap(65536), 69632 - sizeof(xr_buf_t));
}

TEST(same_class_for_rounded_sizes)
{
    /* 1 and 4000 round to the same capacity, so they share a class. */
    xr_buf_t *a = xr_buf_get(1), *b = xr_buf_get(4000);
    ASSERT_EQ(a->cap, b->cap);
    xr_buf_stats_t st;
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 2);
    ASSERT_EQ(st.bytes, 2 * 4096);
    xr_buf_put(a);
    xr_buf_put(b);
}

TEST(reuse_is_lifo_and_reset)
{
    xr_buf_t *a = xr_buf_get(65536);
    a->start = 1;
    a->filt = 2;
    a->end = 3;
    a->data[0] = 'x';
    xr_buf_put(a);
    xr_buf_stats_t st;
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 0);
    ASSERT_EQ(st.pooled, 1);
    ASSERT_EQ(st.bytes, map_size(a->cap));

    xr_buf_t *b = xr_buf_get(65536);
    ASSERT_PTR_EQ(b, a);
    ASSERT_EQ(b->start, 0);
    ASSERT_EQ(b->filt, 0);
    ASSERT_EQ(b->end, 0);
    ASSERT_NULL(b->next);
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 1);
    ASSERT_EQ(st.pooled, 0);

    xr_buf_t *c = xr_buf_get(65536);
    ASSERT_PTR_NE(c, b);
    xr_buf_put(b);
    xr_buf_put(c);
    /* Last in, first out: c comes back first. */
    ASSERT_PTR_EQ(xr_buf_get(65536), c);
    ASSERT_PTR_EQ(xr_buf_get(65536), b);
}

TEST(put_null_is_harmless)
{
    xr_buf_put(NULL);
    xr_buf_stats_t st;
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 0);
    ASSERT_EQ(st.pooled, 0);
    ASSERT_EQ(st.bytes, 0);
}

TEST(spare_limit_follows_use)
{
    enum { N = 40 };
    xr_buf_t *b[N];
    for (int i = 0; i < N; i++)
        b[i] = xr_buf_get(16384);
    xr_buf_stats_t st;
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, N);
    ASSERT_EQ(st.pooled, 0);
    ASSERT_EQ(st.bytes, N * map_size(b[0]->cap));

    /* A buffer is kept while fewer than max(8, in_use / 2) are spare:
     * after the 13th put, 27 are in use and 13 spare, and from then on
     * the limit (at most 13) is reached, so the rest are unmapped. */
    for (int i = 0; i < N; i++) {
        xr_buf_put(b[i]);
        xr_buf_stats(&st);
        ASSERT_EQ(st.in_use, N - 1 - i);
        if (i < 13)
            ASSERT_EQ(st.pooled, i + 1);
        else
            ASSERT_EQ(st.pooled, 13);
    }
    ASSERT_EQ(st.bytes, 13 * map_size(b[0]->cap));

    /* A small population keeps up to 8 spare. */
    xr_buf_trim();
    for (int i = 0; i < 3; i++)
        b[i] = xr_buf_get(16384);
    for (int i = 0; i < 3; i++)
        xr_buf_put(b[i]);
    xr_buf_stats(&st);
    ASSERT_EQ(st.pooled, 3);
    for (int i = 0; i < 12; i++)
        b[i] = xr_buf_get(16384);
    for (int i = 0; i < 12; i++)
        xr_buf_put(b[i]);
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 0);
    ASSERT_EQ(st.pooled, 8);
}

TEST(trim_returns_everything)
{
    xr_buf_t *b[10];
    for (int i = 0; i < 10; i++)
        b[i] = xr_buf_get(i < 5 ? 4096 : 65536);
    for (int i = 0; i < 10; i++)
        xr_buf_put(b[i]);
    xr_buf_stats_t st;
    xr_buf_stats(&st);
    ASSERT_EQ(st.pooled, 10);
    ASSERT_EQ(st.bytes, 5 * map_size(want_cap(4096)) + 5 * map_size(want_cap(65536)));
    xr_buf_trim();
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 0);
    ASSERT_EQ(st.pooled, 0);
    ASSERT_EQ(st.bytes, 0);
    /* Buffers in use are untouched by a trim. */
    xr_buf_t *x = xr_buf_get(4096);
    x->data[0] = 'k';
    xr_buf_trim();
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 1);
    ASSERT_EQ(x->data[0], 'k');
    xr_buf_put(x);
    /* The pool works after a trim. */
    ASSERT_PTR_EQ(xr_buf_get(4096), x);
}

TEST(classes_are_reused_when_empty)
{
    /* Four size classes; a class whose buffers are all gone (unmapped or
     * trimmed) may take a new size. */
    xr_buf_t *b[4];
    for (int i = 0; i < 4; i++)
        b[i] = xr_buf_get((size_t) (i + 1) * 8192);
    for (int i = 0; i < 4; i++)
        xr_buf_put(b[i]);
    xr_buf_trim();
    xr_buf_t *n = xr_buf_get(200000);
    ASSERT_EQ(n->cap, want_cap(200000));
    xr_buf_stats_t st;
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 1);
    ASSERT_EQ(st.bytes, map_size(n->cap));
    xr_buf_put(n);
    xr_buf_stats(&st);
    ASSERT_EQ(st.pooled, 1);
}

TEST(fifth_size_is_unpooled)
{
    /* With four sizes in use, a fifth gets a working but unpooled buffer
     * that goes straight back to the system. */
    xr_buf_t *b[4];
    for (int i = 0; i < 4; i++)
        b[i] = xr_buf_get((size_t) (i + 1) * 8192);
    xr_buf_t *odd = xr_buf_get(100000);
    ASSERT_NOT_NULL(odd);
    ASSERT_EQ(odd->cap, want_cap(100000));
    memset(odd->data, 1, odd->cap);
    xr_buf_put(odd);
    xr_buf_stats_t st;
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 4);
    ASSERT_EQ(st.pooled, 0);
    for (int i = 0; i < 4; i++)
        xr_buf_put(b[i]);
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 0);
    ASSERT_EQ(st.pooled, 4);
}

TEST(unpooled_buffer_put_after_class_takes_its_size)
{
    /* A buffer got while every class was busy with other sizes is not
     * counted; if a class later takes its size, putting it back must not
     * disturb that class's count of buffers in use. */
    xr_buf_t *b[4];
    for (int i = 0; i < 4; i++)
        b[i] = xr_buf_get((size_t) (i + 1) * 8192);
    xr_buf_t *odd = xr_buf_get(100000); /* unpooled, uncounted */
    xr_buf_put(b[0]);
    xr_buf_trim();                       /* b[0]'s class is now empty */
    xr_buf_t *odd2 = xr_buf_get(100000); /* the class takes this size */
    xr_buf_stats_t st;
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 5); /* b[1..3], odd (unpooled) and odd2 */
    xr_buf_put(odd);
    xr_buf_put(odd2);
    xr_buf_stats(&st);
    ASSERT_EQ(st.in_use, 3);
}

TEST(compact_moves_pending_and_held)
{
    xr_buf_t *b = xr_buf_get(4096);
    for (uint32_t i = 0; i < 100; i++)
        b->data[i] = (unsigned char) i;
    b->start = 10;
    b->filt = 25;
    b->end = 40;
    ASSERT_EQ(xr_buf_compact(b), 10);
    ASSERT_EQ(b->start, 0);
    ASSERT_EQ(b->filt, 15);
    ASSERT_EQ(b->end, 30);
    for (uint32_t i = 0; i < 30; i++)
        ASSERT_EQ(b->data[i], i + 10);

    /* Already at the front: nothing moves. */
    ASSERT_EQ(xr_buf_compact(b), 0);
    ASSERT_EQ(b->filt, 15);
    ASSERT_EQ(b->end, 30);

    /* Everything written: an empty buffer at the front. */
    b->start = b->filt = b->end = 30;
    ASSERT_EQ(xr_buf_compact(b), 30);
    ASSERT_EQ(b->start, 0);
    ASSERT_EQ(b->filt, 0);
    ASSERT_EQ(b->end, 0);

    /* A full buffer with one byte written. */
    for (uint32_t i = 0; i < b->cap; i++)
        b->data[i] = (unsigned char) (i * 7);
    b->start = 1;
    b->filt = b->cap;
    b->end = b->cap;
    ASSERT_EQ(xr_buf_compact(b), 1);
    ASSERT_EQ(b->end, b->cap - 1);
    ASSERT_EQ(b->data[0], (unsigned char) 7);
    ASSERT_EQ(b->data[b->cap - 2], (unsigned char) ((b->cap - 1) * 7));
    xr_buf_put(b);
}
