/*
 * test_upstream.c: choosing an upstream server: round robin, least_conn,
 * source_hash, the tried mask, passive health (max_fails, fail_timeout)
 * and the all-down fallback.
 */
#include "core/xrayd.h"
#include "core/gen.h"
#include "relay/upstream.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "unit.h"

static char err[1024];

/* A relay block with n upstream servers 127.0.0.1:1..n and extra
 * directives; its per-worker state in rt, round robin starting at 0. */
static void setup(xr_relay_rt_t *rt, int n, const char *extra)
{
    char yaml[8192];
    size_t off = (size_t) snprintf(yaml, sizeof(yaml),
                                   "relay:\n  - listen: 127.0.0.1:8080\n    upstream:\n");
    for (int i = 1; i <= n; i++)
        off += (size_t) snprintf(yaml + off, sizeof(yaml) - off, "      - 127.0.0.1:%d\n", i);
    snprintf(yaml + off, sizeof(yaml) - off, "%s", extra);
    xr_gen_t *g = xr_gen_load_buffer((const unsigned char *) yaml, strlen(yaml), err, sizeof(err));
    if (g == NULL)
        FAIL("%s", err);
    ASSERT_EQ(g->relays[0]->upstream.n, n);
    xr_relay_rt_init(rt, g->relays[0]);
    ASSERT_NOT_NULL(rt->peers);
    rt->rr = 0; /* workers start at a clock-dependent server */
}

static struct sockaddr_storage client4(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *) &ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(40000);
    ASSERT_EQ(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage client6(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) &ss;
    sin6->sin6_family = AF_INET6;
    ASSERT_EQ(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
    return ss;
}

TEST(init_state)
{
    xr_relay_rt_t rt;
    setup(&rt, 3, "    filters: [{signature: {patterns: [x]}}, {log: {path: /tmp/x}}]\n");
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(rt.peers[i].down_until, 0);
        ASSERT_EQ(rt.peers[i].fails, 0);
        ASSERT_EQ(rt.peers[i].active, 0);
    }
    ASSERT_EQ(rt.has_data_filters, 1); /* signature has a data hook */
    ASSERT_EQ(rt.state_off[0], 0);
    ASSERT_EQ(rt.state_off[1] % 16, 0);
    ASSERT_GE(rt.state_total, rt.state_off[1]);
    xr_relay_rt_free(&rt);
    ASSERT_NULL(rt.peers);
    ASSERT_NULL(rt.state_off);

    setup(&rt, 1, "    filters: [{log: {path: /tmp/x}}]\n");
    ASSERT_EQ(rt.has_data_filters, 0);
    xr_relay_rt_free(&rt);
}

TEST(round_robin_order)
{
    xr_relay_rt_t rt;
    setup(&rt, 3, "");
    static const int want[] = {0, 1, 2, 0, 1, 2, 0};
    for (size_t k = 0; k < XR_ARRAY_SIZE(want); k++)
        ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), want[k]);
    /* It continues from wherever the counter stands, with wrap-around. */
    rt.rr = SIZE_MAX;
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), (int) (SIZE_MAX % 3));
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 0);
    xr_relay_rt_free(&rt);

    /* One server: always that one. */
    setup(&rt, 1, "");
    for (int k = 0; k < 5; k++)
        ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 0);
    xr_relay_rt_free(&rt);
}

TEST(tried_mask)
{
    xr_relay_rt_t rt;
    setup(&rt, 4, "");
    /* The rotation skips servers already tried for this connection. */
    rt.rr = 1;
    ASSERT_EQ(xr_upstream_pick(&rt, 1u << 1, NULL), 2);
    rt.rr = 1;
    ASSERT_EQ(xr_upstream_pick(&rt, (1u << 1) | (1u << 2) | (1u << 3), NULL), 0);
    /* A connection's retries walk every server once, then give up. */
    uint64_t tried = 0;
    rt.rr = 2;
    int seen[4] = {0};
    for (int k = 0; k < 4; k++) {
        int p = xr_upstream_pick(&rt, tried, NULL);
        ASSERT_GE(p, 0);
        ASSERT_LT(p, 4);
        ASSERT_EQ(seen[p], 0);
        seen[p] = 1;
        tried |= (uint64_t) 1 << p;
    }
    ASSERT_EQ(xr_upstream_pick(&rt, tried, NULL), -1);
    ASSERT_EQ(xr_upstream_pick(&rt, ~(uint64_t) 0, NULL), -1);
    xr_relay_rt_free(&rt);
}

TEST(tried_mask_past_64_servers)
{
    /* Only servers 0..63 can be marked tried; with every one of those
     * tried, the pick falls to the servers beyond. */
    xr_relay_rt_t rt;
    setup(&rt, 70, "");
    rt.rr = 0;
    int p = xr_upstream_pick(&rt, ~(uint64_t) 0, NULL);
    ASSERT_GE(p, 64);
    ASSERT_LT(p, 70);
    xr_relay_rt_free(&rt);
}

TEST(skip_failed_until_fail_timeout)
{
    xr_relay_rt_t rt;
    setup(&rt, 3, "    upstream_fail_timeout: 10s\n");
    int64_t now = xr_mono_ms();
    xr_upstream_result(&rt, 1, 0, now);
    ASSERT_EQ(rt.peers[1].down_until, now + 10000);
    ASSERT_EQ(rt.peers[1].fails, 0); /* reset when it goes down */
    /* Round robin now goes 0, 2, 0, 2 ... */
    static const int want[] = {0, 2, 2, 0, 2, 2};
    for (size_t k = 0; k < XR_ARRAY_SIZE(want); k++)
        ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), want[k]);
    /* Once fail_timeout has passed it is back in the rotation: report the
     * failure as if it had happened 10.001 s ago. */
    xr_upstream_result(&rt, 1, 0, xr_mono_ms() - 10001);
    rt.rr = 0;
    for (int k = 0; k < 3; k++)
        ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), k);
    xr_relay_rt_free(&rt);
}

TEST(fail_timeout_really_expires)
{
    xr_relay_rt_t rt;
    setup(&rt, 2, "    upstream_fail_timeout: 50ms\n");
    xr_upstream_result(&rt, 0, 0, xr_mono_ms());
    rt.rr = 0;
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 1);
    usleep(120 * 1000);
    rt.rr = 0;
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 0);
    xr_relay_rt_free(&rt);
}

TEST(max_fails_counts_and_success_resets)
{
    xr_relay_rt_t rt;
    setup(&rt, 2, "    upstream_max_fails: 3\n");
    int64_t now = xr_mono_ms();
    xr_upstream_result(&rt, 0, 0, now);
    xr_upstream_result(&rt, 0, 0, now);
    ASSERT_EQ(rt.peers[0].fails, 2);
    ASSERT_EQ(rt.peers[0].down_until, 0);
    rt.rr = 0;
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 0); /* still up */
    /* A success forgets the failures. */
    xr_upstream_result(&rt, 0, 1, now);
    ASSERT_EQ(rt.peers[0].fails, 0);
    xr_upstream_result(&rt, 0, 0, now);
    xr_upstream_result(&rt, 0, 0, now);
    ASSERT_EQ(rt.peers[0].down_until, 0);
    xr_upstream_result(&rt, 0, 0, now);
    ASSERT_EQ(rt.peers[0].down_until, now + 10000); /* the default fail_timeout */
    rt.rr = 0;
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 1);
    /* A success also brings a down server straight back. */
    xr_upstream_result(&rt, 0, 1, now);
    ASSERT_EQ(rt.peers[0].down_until, 0);
    rt.rr = 0;
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 0);
    xr_relay_rt_free(&rt);
}

TEST(all_down_fallback)
{
    xr_relay_rt_t rt;
    setup(&rt, 3, "");
    int64_t now = xr_mono_ms();
    for (int i = 0; i < 3; i++)
        xr_upstream_result(&rt, i, 0, now);
    /* Every server is down: try the next in the rotation anyway rather
     * than fail the client. */
    rt.rr = 1;
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 1);
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 2);
    /* The fallback still respects the tried mask ... */
    rt.rr = 1;
    ASSERT_EQ(xr_upstream_pick(&rt, 1u << 1, NULL), 2);
    ASSERT_EQ(xr_upstream_pick(&rt, 7, NULL), -1);
    /* ... and prefers a live untried server over a dead one. */
    xr_upstream_result(&rt, 2, 1, now);
    rt.rr = 0;
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 2);
    ASSERT_EQ(xr_upstream_pick(&rt, 1u << 2, NULL), 1); /* rr is now 1: fallback = 1 */
    xr_relay_rt_free(&rt);
}

TEST(least_conn)
{
    xr_relay_rt_t rt;
    setup(&rt, 4, "    balance: least_conn\n");
    rt.peers[0].active = 3;
    rt.peers[1].active = 1;
    rt.peers[2].active = 2;
    rt.peers[3].active = 5;
    for (int k = 0; k < 4; k++)
        ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 1);
    /* Tried servers are out even when least loaded. */
    ASSERT_EQ(xr_upstream_pick(&rt, 1u << 1, NULL), 2);
    /* Down servers are out too. */
    xr_upstream_result(&rt, 1, 0, xr_mono_ms());
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 2);
    /* Ties go round: with equal load, the rotation decides. */
    xr_relay_rt_free(&rt);
    setup(&rt, 3, "    balance: least_conn\n");
    for (int k = 0; k < 6; k++)
        ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), k % 3);
    /* Everyone down: the first untried in rotation order. */
    for (int i = 0; i < 3; i++)
        xr_upstream_result(&rt, i, 0, xr_mono_ms());
    rt.rr = 2;
    ASSERT_EQ(xr_upstream_pick(&rt, 0, NULL), 2);
    xr_relay_rt_free(&rt);
}

TEST(source_hash_stable)
{
    xr_relay_rt_t rt;
    setup(&rt, 5, "    balance: source_hash\n");
    struct sockaddr_storage a = client4("192.0.2.10"), b = client4("192.0.2.10");
    ((struct sockaddr_in *) &b)->sin_port = htons(1); /* the port does not count */
    int first = xr_upstream_pick(&rt, 0, &a);
    ASSERT_GE(first, 0);
    for (int k = 0; k < 10; k++) {
        ASSERT_EQ(xr_upstream_pick(&rt, 0, &a), first);
        ASSERT_EQ(xr_upstream_pick(&rt, 0, &b), first);
    }
    /* A fresh worker (another rr) agrees. */
    xr_relay_rt_t rt2;
    setup(&rt2, 5, "    balance: source_hash\n");
    rt2.rr = 12345;
    ASSERT_EQ(xr_upstream_pick(&rt2, 0, &a), first);

    /* The server down or tried: the next one after it, for this client. */
    ASSERT_EQ(xr_upstream_pick(&rt, 1u << first, &a), (first + 1) % 5);
    xr_upstream_result(&rt, first, 0, xr_mono_ms());
    ASSERT_EQ(xr_upstream_pick(&rt, 0, &a), (first + 1) % 5);
    xr_upstream_result(&rt, first, 1, xr_mono_ms());
    ASSERT_EQ(xr_upstream_pick(&rt, 0, &a), first);

    /* Clients spread over the servers; IPv6 clients hash too. */
    int hits[5] = {0};
    char ip[32];
    for (int i = 0; i < 250; i++) {
        snprintf(ip, sizeof(ip), "10.0.%d.%d", i / 16, i % 16 * 7);
        struct sockaddr_storage c = client4(ip);
        hits[xr_upstream_pick(&rt, 0, &c)]++;
    }
    for (int i = 0; i < 5; i++)
        ASSERT_GT(hits[i], 10);
    struct sockaddr_storage v6 = client6("2001:db8::1");
    int p6 = xr_upstream_pick(&rt, 0, &v6);
    ASSERT_GE(p6, 0);
    ASSERT_EQ(xr_upstream_pick(&rt, 0, &v6), p6);
    xr_relay_rt_free(&rt);
    xr_relay_rt_free(&rt2);
}

TEST(random_stays_in_range)
{
    xr_relay_rt_t rt;
    setup(&rt, 3, "    balance: random\n");
    int hits[3] = {0};
    for (int k = 0; k < 300; k++) {
        int p = xr_upstream_pick(&rt, 1u << 0, NULL);
        ASSERT_TRUE(p == 1 || p == 2);
        hits[p]++;
    }
    ASSERT_GT(hits[1], 0);
    ASSERT_GT(hits[2], 0);
    xr_relay_rt_free(&rt);
}
