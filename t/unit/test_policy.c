/*
 * test_policy.c: the agent's applications (src/agent/policy.c): outbound
 * rules, parsing with positions, matching identities, and the closed
 * defaults around destinations that would make a relay an attack tool.
 */
#include "agent/policy.h"
#include "core/pool.h"

#include <arpa/inet.h>

#include "unit.h"

static char err[1024];
static xr_gen_t gen;

static int parse_policy(const char *yaml, xr_policy_t *p)
{
    static xr_conf_t cf;
    xr_conf_init(&cf, xr_pool_create());
    cf.user = &gen; /* filters register with the generation */
    memset(p, 0, sizeof(*p));
    err[0] = '\0';
    const xr_node_t *root =
        xr_conf_parse_buffer(&cf, "<t>", (const unsigned char *) yaml, strlen(yaml));
    int rc = XR_ERROR;
    if (root != NULL) {
        const xr_node_t *apps = xr_node_get(root, "applications");
        if (apps == NULL)
            FAIL("no applications key");
        rc = xr_policy_parse(&cf, apps, p);
    }
    snprintf(err, sizeof(err), "%s", cf.err);
    return rc;
}

static xr_paddr_t addr(const char *host, uint16_t port)
{
    xr_paddr_t a = {0};
    if (inet_pton(AF_INET, host, a.addr) == 1)
        a.family = 4;
    else if (inet_pton(AF_INET6, host, a.addr) == 1)
        a.family = 6;
    else
        FAIL("bad address %s", host);
    a.port = port;
    return a;
}

static xr_identity_t ident(const char *subject, const char *sans, const char *key)
{
    xr_identity_t id;
    memset(&id, 0, sizeof(id));
    snprintf(id.subject, sizeof(id.subject), "%s", subject);
    snprintf(id.sans, sizeof(id.sans), "%s", sans);
    snprintf(id.pubkey_sha256, sizeof(id.pubkey_sha256), "%s", key);
    return id;
}

/* ---- rules ------------------------------------------------------------ */

TEST(rules_parse)
{
    xr_net_rule_t r;
    char why[160];
    ASSERT_EQ(xr_net_rule_parse("198.18.2.0/24", &r, why, sizeof(why)), XR_OK);
    ASSERT_EQ(r.family, 4);
    ASSERT_EQ(r.prefix, 24);
    ASSERT_EQ(r.port_lo, 1);
    ASSERT_EQ(r.port_hi, 65535);
    ASSERT_EQ(xr_net_rule_parse("198.18.2.7:8000-8100", &r, why, sizeof(why)), XR_OK);
    ASSERT_EQ(r.prefix, 32);
    ASSERT_EQ(r.port_lo, 8000);
    ASSERT_EQ(r.port_hi, 8100);
    ASSERT_EQ(xr_net_rule_parse("198.18.0.0/15:443", &r, why, sizeof(why)), XR_OK);
    ASSERT_EQ(r.prefix, 15);
    ASSERT_EQ(r.port_lo, 443);
    ASSERT_EQ(r.port_hi, 443);
    ASSERT_EQ(xr_net_rule_parse("[2001:db8::]/32:443", &r, why, sizeof(why)), XR_OK);
    ASSERT_EQ(r.family, 6);
    ASSERT_EQ(r.prefix, 32);
    ASSERT_EQ(xr_net_rule_parse("[::1]:22", &r, why, sizeof(why)), XR_OK);
    ASSERT_EQ(r.prefix, 128);
    ASSERT_EQ(xr_net_rule_parse("*:80", &r, why, sizeof(why)), XR_OK);
    ASSERT_EQ(r.family, 0);
    ASSERT_EQ(xr_net_rule_parse("*", &r, why, sizeof(why)), XR_OK);
    ASSERT_EQ(r.port_hi, 65535);

    static const char *const bad[] = {"198.18.2.1/24",  "198.18.2.0/33", "198.18.2.0/",
                                      "300.1.1.1",      "198.18.2.0:0",  "198.18.2.0:70000",
                                      "198.18.2.0:9-8", "[::1",          "[::1]x",
                                      "example.com:80", "198.18.2.0:*x", ""};
    for (size_t i = 0; i < XR_ARRAY_SIZE(bad); i++)
        if (xr_net_rule_parse(bad[i], &r, why, sizeof(why)) != XR_ERROR)
            FAIL("\"%s\" was accepted", bad[i]);
    ASSERT_EQ(xr_net_rule_parse("198.18.2.1/24", &r, why, sizeof(why)), XR_ERROR);
    ASSERT_TRUE(strstr(why, "host bits") != NULL);
}

/* ---- configuration ------------------------------------------------------ */

static const char *const conf_ok =
    "applications:\n"
    "  - name: web\n"
    "    match: [\"CN=web-*\"]\n"
    "    inbound: on\n"
    "    max_registrations: 4\n"
    "    filters:\n"
    "      - signature:\n"
    "          patterns: [\"/etc/passwd\"]\n"
    "  - name: client\n"
    "    match: [\"DNS:client.example\", \"sha256:00112233445566778899\"]\n"
    "    outbound: [\"198.18.2.0/24:80\", \"*:443\", \"127.0.0.1:9000\"]\n";

TEST(policy_parses_and_defaults)
{
    xr_policy_t p;
    if (parse_policy(conf_ok, &p) != XR_OK)
        FAIL("%s", err);
    ASSERT_EQ(p.napps, 2);
    ASSERT_STREQ(p.apps[0]->name, "web");
    ASSERT_EQ(p.apps[0]->inbound, 1);
    ASSERT_EQ(p.apps[0]->noutbound, 0); /* closed: no rule, no connection */
    ASSERT_EQ(p.apps[0]->max_registrations, 4);
    ASSERT_EQ(p.apps[0]->max_relays, 1000);
    ASSERT_EQ(p.apps[0]->nfilters, 1);
    ASSERT_STREQ(p.apps[0]->filters[0].module->name, "signature");
    ASSERT_EQ(p.apps[1]->inbound, 0);
    ASSERT_EQ(p.apps[1]->noutbound, 3);
}

TEST(policy_errors_say_where)
{
    static const struct {
        const char *yaml, *want;
    } cases[] = {
        {"applications:\n  - match: [\"CN=x\"]\n", "<t>:2:5: "},
        {"applications:\n  - name: a\n", "match"},
        {"applications:\n  - name: a\n    match: x\n    outbound: [\"10.0.0.1/8\"]\n",
         "<t>:4:16: \"outbound\": 10.0.0.1 has host bits set beyond /8"},
        {"applications:\n  - name: a\n    match: x\n    inbound: maybe\n", "<t>:4:14: "},
        {"applications:\n  - name: a\n    match: x\n    outbund: []\n", "did you mean"},
        {"applications:\n  - name: a\n    match: x\n  - name: a\n    match: y\n",
         "already defined at line 2"},
        {"applications:\n  - name: a\n    match: x\n    filters: [nosuch]\n",
         "unknown filter module"},
        {"applications: {name: a}\n", "expected a sequence of applications"},
    };
    for (size_t i = 0; i < XR_ARRAY_SIZE(cases); i++) {
        xr_policy_t p;
        if (parse_policy(cases[i].yaml, &p) != XR_ERROR)
            FAIL("case %zu was accepted", i);
        if (strstr(err, cases[i].want) == NULL)
            FAIL("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].want);
    }
}

/* ---- decisions ----------------------------------------------------------- */

TEST(identities_find_their_application)
{
    xr_policy_t p;
    if (parse_policy(conf_ok, &p) != XR_OK)
        FAIL("%s", err);
    xr_identity_t web = ident("CN=web-1,O=x", "", "ffff");
    xr_identity_t cli = ident("CN=other", "DNS:client.example", "aaaa");
    xr_identity_t key = ident("CN=zzz", "", "00112233445566778899aabbccddeeff");
    xr_identity_t nobody = ident("CN=nobody", "DNS:evil.example", "0011");
    ASSERT_STREQ(xr_policy_find(&p, &web)->name, "web");
    ASSERT_STREQ(xr_policy_find(&p, &cli)->name, "client");
    ASSERT_STREQ(xr_policy_find(&p, &key)->name, "client");
    ASSERT_NULL(xr_policy_find(&p, &nobody));
}

static int outbound(const xr_app_conf_t *app, const char *host, uint16_t port, char *why)
{
    xr_paddr_t dst = addr(host, port);
    xr_paddr_t self[] = {addr("198.19.0.2", 0), addr("2001:db8::2", 0)};
    return xr_policy_outbound(app, &dst, self, XR_ARRAY_SIZE(self), why, 256);
}

TEST(outbound_rules_and_dangerous_destinations)
{
    xr_policy_t p;
    char why[256];
    if (parse_policy(conf_ok, &p) != XR_OK)
        FAIL("%s", err);
    const xr_app_conf_t *web = p.apps[0], *cli = p.apps[1];

    ASSERT_EQ(outbound(cli, "198.18.2.9", 80, why), XR_OK);
    ASSERT_STREQ(why, "outbound rule \"198.18.2.0/24:80\"");
    ASSERT_EQ(outbound(cli, "198.18.3.9", 443, why), XR_OK); /* *:443 */
    ASSERT_EQ(outbound(cli, "2001:db8::9", 443, why), XR_OK);
    ASSERT_EQ(outbound(cli, "198.18.2.9", 81, why), XR_DECLINED);
    ASSERT_STREQ(why, "application \"client\": no outbound rule allows 198.18.2.9:81");
    ASSERT_EQ(outbound(web, "198.18.2.9", 80, why), XR_DECLINED); /* no rules at all */

    /* *:443 covers these but does not name them. */
    static const struct {
        const char *host, *what;
    } danger[] = {
        {"127.0.0.1", "loopback"},
        {"127.9.9.9", "loopback"},
        {"0.0.0.0", "unspecified"},
        {"169.254.169.254", "link-local"},
        {"224.0.0.1", "multicast"},
        {"255.255.255.255", "broadcast"},
        {"::1", "loopback"},
        {"::", "unspecified"},
        {"fe80::1", "link-local"},
        {"ff02::1", "multicast"},
        {"::ffff:127.0.0.1", "loopback"}, /* IPv4-mapped */
        {"198.19.0.2", "agent's own"},
        {"2001:db8::2", "agent's own"},
    };
    for (size_t i = 0; i < XR_ARRAY_SIZE(danger); i++) {
        if (outbound(cli, danger[i].host, 443, why) != XR_DECLINED)
            FAIL("%s:443 was allowed", danger[i].host);
        if (strstr(why, danger[i].what) == NULL || strstr(why, "\"*:443\" only covers it") == NULL)
            FAIL("%s: reason \"%s\"", danger[i].host, why);
    }
    /* A rule that names the destination allows it. */
    ASSERT_EQ(outbound(cli, "127.0.0.1", 9000, why), XR_OK);
    ASSERT_STREQ(why, "outbound rule \"127.0.0.1:9000\"");
    ASSERT_EQ(outbound(cli, "127.0.0.1", 9001, why), XR_DECLINED);
}

TEST(own_address_named_by_a_host_rule)
{
    xr_policy_t p;
    char why[256];
    if (parse_policy("applications:\n"
                     "  - name: admin\n"
                     "    match: x\n"
                     "    outbound: [\"198.19.0.0/24\", \"198.19.0.2/32:22\"]\n",
                     &p) != XR_OK)
        FAIL("%s", err);
    ASSERT_EQ(outbound(p.apps[0], "198.19.0.2", 22, why), XR_OK);
    ASSERT_STREQ(why, "outbound rule \"198.19.0.2/32:22\"");
    ASSERT_EQ(outbound(p.apps[0], "198.19.0.2", 80, why), XR_DECLINED);
    ASSERT_EQ(outbound(p.apps[0], "198.19.0.3", 80, why), XR_OK);
}

static int reg(const xr_app_conf_t *app, const char *host, uint16_t port, const char *from,
               char *why)
{
    xr_paddr_t local = addr(host, port), peer = addr(from, 40000);
    xr_paddr_t self[] = {addr("198.19.0.2", 0), addr("2001:db8::2", 0)};
    return xr_policy_register(app, &local, &peer, self, XR_ARRAY_SIZE(self), why, 256);
}

TEST(register_own_address_or_a_servers_rule)
{
    xr_policy_t p;
    char why[256];
    if (parse_policy("applications:\n"
                     "  - name: web\n"
                     "    match: x\n"
                     "    inbound: on\n"
                     "  - name: farm\n"
                     "    match: y\n"
                     "    inbound: on\n"
                     "    servers: [\"198.18.2.0/24:8000-8099\", \"*:443\", \"127.0.0.1:9000\"]\n",
                     &p) != XR_OK)
        FAIL("%s", err);
    const xr_app_conf_t *web = p.apps[0], *farm = p.apps[1];
    ASSERT_EQ(web->nservers, 0);
    ASSERT_EQ(farm->nservers, 3);

    /* The address it connects from, any port; IPv4-mapped is the same. */
    ASSERT_EQ(reg(web, "198.18.2.2", 8080, "198.18.2.2", why), XR_OK);
    ASSERT_STREQ(why, "the address it connects from");
    ASSERT_EQ(reg(web, "198.18.2.2", 22, "::ffff:198.18.2.2", why), XR_OK);
    ASSERT_EQ(reg(web, "2001:db8::9", 80, "2001:db8::9", why), XR_OK);
    /* Another host, in its network or not. */
    ASSERT_EQ(reg(web, "198.18.2.3", 8080, "198.18.2.2", why), XR_DECLINED);
    ASSERT_STREQ(why, "application \"web\": 198.18.2.3:8080 is not the address it connects "
                      "from (198.18.2.2) and no servers rule allows it");
    ASSERT_EQ(reg(web, "198.19.2.20", 22, "198.18.2.2", why), XR_DECLINED);

    /* Refused even as the address it connects from. */
    static const struct {
        const char *host, *what;
    } danger[] = {
        {"127.0.0.1", "loopback"},
        {"0.0.0.0", "unspecified"},
        {"169.254.1.1", "link-local"},
        {"224.0.0.1", "multicast"},
        {"255.255.255.255", "broadcast"},
        {"::1", "loopback"},
        {"::", "unspecified"},
        {"ff02::1", "multicast"},
        {"::ffff:127.0.0.1", "loopback"},
        {"198.19.0.2", "agent's own"},
        {"2001:db8::2", "agent's own"},
    };
    for (size_t i = 0; i < XR_ARRAY_SIZE(danger); i++) {
        if (reg(web, danger[i].host, 443, danger[i].host, why) != XR_DECLINED)
            FAIL("%s:443 from itself was allowed", danger[i].host);
        if (strstr(why, danger[i].what) == NULL ||
            strstr(why, "refused unless a servers rule names it") == NULL)
            FAIL("%s: reason \"%s\"", danger[i].host, why);
        /* *:443 covers it, which is not enough. */
        if (reg(farm, danger[i].host, 443, "198.18.2.2", why) != XR_DECLINED)
            FAIL("%s:443 was allowed by a rule that only covers it", danger[i].host);
    }

    /* Servers rules: addresses and ports. */
    ASSERT_EQ(reg(farm, "198.18.2.3", 8080, "198.18.2.2", why), XR_OK);
    ASSERT_STREQ(why, "servers rule \"198.18.2.0/24:8000-8099\"");
    ASSERT_EQ(reg(farm, "198.18.2.3", 8100, "198.18.2.2", why), XR_DECLINED);
    ASSERT_EQ(reg(farm, "198.19.2.20", 443, "198.18.2.2", why), XR_OK);
    ASSERT_EQ(reg(farm, "127.0.0.1", 9000, "127.0.0.1", why), XR_OK);
    ASSERT_STREQ(why, "servers rule \"127.0.0.1:9000\"");
    ASSERT_EQ(reg(farm, "127.0.0.1", 9001, "127.0.0.1", why), XR_DECLINED);
}
