/*
 * test_record.c: the TLS 1.2 record layer (src/common/record.c).
 *
 * The reference is mbedTLS's own record layer: each interop test runs a
 * real ECDHE-ECDSA handshake in memory between an mbedTLS client and
 * server, takes the key block from the export callback and the sequence
 * numbers from the finished context, as xrayd does, and then replaces one
 * side with xr_rec_t.  Whatever mbedTLS writes must open here, and
 * whatever is sealed here must read there, in both roles and both AEADs.
 */
#include "core/xrayd.h"
#include "common/gcm.h"
#include "common/record.h"

#include <time.h>

#include <sodium.h>
#include <mbedtls/ecp.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/x509_crt.h>

#include "unit.h"

/* ---- fixtures ------------------------------------------------------------ */

/* One direction of the in-memory wire. */
typedef struct {
    unsigned char *data;
    size_t len, cap;
} wire_t;

static void wire_put(wire_t *w, const unsigned char *p, size_t n)
{
    if (w->len + n > w->cap) {
        w->cap = (w->len + n) * 2 + 1024;
        w->data = realloc(w->data, w->cap);
        if (w->data == NULL)
            FAIL("out of memory");
    }
    memcpy(w->data + w->len, p, n);
    w->len += n;
}

static size_t wire_get(wire_t *w, unsigned char *p, size_t n)
{
    if (n > w->len)
        n = w->len;
    memcpy(p, w->data, n);
    memmove(w->data, w->data + n, w->len - n);
    w->len -= n;
    return n;
}

typedef struct {
    wire_t *out, *in;
} bio_t;

static int bio_send(void *ctx, const unsigned char *p, size_t n)
{
    wire_put(((bio_t *) ctx)->out, p, n);
    return (int) n;
}

static int bio_recv(void *ctx, unsigned char *p, size_t n)
{
    wire_t *w = ((bio_t *) ctx)->in;
    if (w->len == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    return (int) wire_get(w, p, n);
}

static int rng(void *ctx, unsigned char *p, size_t n)
{
    randombytes_buf(p, n);
    return 0;
}

typedef struct {
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    bio_t bio;
    unsigned char kb[256];
    size_t keylen, ivlen;
    int exported;
} peer_t;

static int export_keys(void *ctx, const unsigned char *ms, const unsigned char *kb, size_t maclen,
                       size_t keylen, size_t ivlen, const unsigned char crand[32],
                       const unsigned char srand[32], mbedtls_tls_prf_types prf)
{
    peer_t *p = ctx;
    size_t n = 2 * maclen + 2 * keylen + 2 * ivlen;
    if (maclen != 0 || n > sizeof(p->kb))
        return -1;
    memcpy(p->kb, kb, n);
    p->keylen = keylen;
    p->ivlen = ivlen;
    p->exported++;
    return 0;
}

/* A handshaken pair, and xr_rec_t standing in for one of its ends. */
typedef struct {
    wire_t c2s, s2c;
    peer_t cli, srv;
    mbedtls_pk_context pk;
    mbedtls_x509_crt crt;
    int suites[2];
    xr_aead_t aead;
    int xr_is_server;
    peer_t *mb;      /* the end still on mbedTLS records */
    wire_t *to_xr;   /* what mb writes */
    wire_t *from_xr; /* what mb reads */
    xr_rec_t x;
} link_t;

static uint64_t be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void make_cert(link_t *l)
{
    mbedtls_pk_init(&l->pk);
    mbedtls_x509_crt_init(&l->crt);
    ASSERT_EQ(mbedtls_pk_setup(&l->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)), 0);
    ASSERT_EQ(mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(l->pk), rng, NULL), 0);

    mbedtls_x509write_cert w;
    mbedtls_mpi serial;
    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi_init(&serial);
    ASSERT_EQ(mbedtls_mpi_lset(&serial, 1), 0);
    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    ASSERT_EQ(mbedtls_x509write_crt_set_serial(&w, &serial), 0);
    ASSERT_EQ(mbedtls_x509write_crt_set_validity(&w, "20200101000000", "20491231235959"), 0);
    ASSERT_EQ(mbedtls_x509write_crt_set_subject_name(&w, "CN=xrayd record test"), 0);
    ASSERT_EQ(mbedtls_x509write_crt_set_issuer_name(&w, "CN=xrayd record test"), 0);
    mbedtls_x509write_crt_set_subject_key(&w, &l->pk);
    mbedtls_x509write_crt_set_issuer_key(&w, &l->pk);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    unsigned char der[2048];
    int n = mbedtls_x509write_crt_der(&w, der, sizeof(der), rng, NULL);
    ASSERT_GT(n, 0);
    /* The DER is written at the end of the buffer. */
    ASSERT_EQ(mbedtls_x509_crt_parse_der(&l->crt, der + sizeof(der) - (size_t) n, (size_t) n), 0);
    mbedtls_x509write_crt_free(&w);
    mbedtls_mpi_free(&serial);
}

static void peer_setup(link_t *l, peer_t *p, int endpoint)
{
    mbedtls_ssl_config_init(&p->conf);
    mbedtls_ssl_init(&p->ssl);
    ASSERT_EQ(mbedtls_ssl_config_defaults(&p->conf, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
                                          MBEDTLS_SSL_PRESET_DEFAULT),
              0);
    mbedtls_ssl_conf_rng(&p->conf, rng, NULL);
    mbedtls_ssl_conf_min_version(&p->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&p->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(&p->conf, l->suites);
    mbedtls_ssl_conf_export_keys_ext_cb(&p->conf, export_keys, p);
    /* Enabled only so that a test can make mbedTLS start one. */
    mbedtls_ssl_conf_renegotiation(&p->conf, MBEDTLS_SSL_RENEGOTIATION_ENABLED);
    if (endpoint == MBEDTLS_SSL_IS_SERVER)
        ASSERT_EQ(mbedtls_ssl_conf_own_cert(&p->conf, &l->crt, &l->pk), 0);
    else
        mbedtls_ssl_conf_authmode(&p->conf, MBEDTLS_SSL_VERIFY_NONE);
    ASSERT_EQ(mbedtls_ssl_setup(&p->ssl, &p->conf), 0);
    mbedtls_ssl_set_bio(&p->ssl, &p->bio, bio_send, bio_recv, NULL);
}

static int hs_step(mbedtls_ssl_context *ssl)
{
    if (ssl->state == MBEDTLS_SSL_HANDSHAKE_OVER)
        return 1;
    int rc = mbedtls_ssl_handshake(ssl);
    if (rc != 0 && rc != MBEDTLS_ERR_SSL_WANT_READ && rc != MBEDTLS_ERR_SSL_WANT_WRITE)
        FAIL("mbedtls_ssl_handshake: -0x%04x", (unsigned) -rc);
    return rc == 0;
}

/* Handshake with `aead`'s suite, then hand one end over to xr_rec_t. */
static void link_open(link_t *l, xr_aead_t aead, int xr_is_server)
{
    if (sodium_init() < 0)
        FAIL("sodium_init");
    if (!xr_rec_available(aead))
        SKIP("AEAD not available on this CPU");
    memset(l, 0, sizeof(*l));
    l->aead = aead;
    l->xr_is_server = xr_is_server;
    l->suites[0] = aead == XR_AEAD_AES256GCM
                       ? MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                       : MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256;
    make_cert(l);
    l->cli.bio = (bio_t){&l->c2s, &l->s2c};
    l->srv.bio = (bio_t){&l->s2c, &l->c2s};
    peer_setup(l, &l->cli, MBEDTLS_SSL_IS_CLIENT);
    peer_setup(l, &l->srv, MBEDTLS_SSL_IS_SERVER);

    int done = 0;
    for (int i = 0; i < 100 && !done; i++)
        done = hs_step(&l->cli.ssl) & hs_step(&l->srv.ssl);
    ASSERT_TRUE(done);
    ASSERT_EQ(mbedtls_ssl_get_ciphersuite_id(mbedtls_ssl_get_ciphersuite(&l->srv.ssl)),
              l->suites[0]);
    ASSERT_EQ(l->c2s.len, 0);
    ASSERT_EQ(l->s2c.len, 0);
    ASSERT_EQ(mbedtls_ssl_get_bytes_avail(&l->cli.ssl), 0);
    ASSERT_EQ(mbedtls_ssl_get_bytes_avail(&l->srv.ssl), 0);

    /* Both ends derive the same key block, in the layout record.h says. */
    ASSERT_EQ(l->cli.exported, 1);
    ASSERT_EQ(l->srv.exported, 1);
    ASSERT_EQ(l->srv.keylen, 32);
    ASSERT_EQ(l->srv.ivlen, aead == XR_AEAD_AES256GCM ? 4 : 12);
    ASSERT_EQ(l->cli.ivlen, l->srv.ivlen);
    ASSERT_MEMEQ(l->cli.kb, l->srv.kb, 64 + 2 * l->srv.ivlen);

    peer_t *xp = xr_is_server ? &l->srv : &l->cli;
    l->mb = xr_is_server ? &l->cli : &l->srv;
    l->to_xr = xr_is_server ? &l->c2s : &l->s2c;
    l->from_xr = xr_is_server ? &l->s2c : &l->c2s;
    uint64_t rx = be64(xp->ssl.in_ctr), tx = be64(xp->ssl.cur_out_ctr);
    ASSERT_EQ(rx, 1); /* Finished took sequence number 0 each way */
    ASSERT_EQ(tx, 1);
    ASSERT_EQ(xr_rec_init(&l->x, aead, xr_is_server, xp->kb, xp->keylen, xp->ivlen, rx, tx), 0);
    ASSERT_EQ(l->x.overhead, aead == XR_AEAD_AES256GCM ? 29 : 21);
    sodium_memzero(l->cli.kb, sizeof(l->cli.kb));
    sodium_memzero(l->srv.kb, sizeof(l->srv.kb));
}

static void link_close(link_t *l)
{
    xr_rec_free(&l->x);
    mbedtls_ssl_free(&l->cli.ssl);
    mbedtls_ssl_free(&l->srv.ssl);
    mbedtls_ssl_config_free(&l->cli.conf);
    mbedtls_ssl_config_free(&l->srv.conf);
    mbedtls_x509_crt_free(&l->crt);
    mbedtls_pk_free(&l->pk);
    free(l->c2s.data);
    free(l->s2c.data);
}

/* Both counters agree with mbedTLS's after an exchange. */
static void link_check_seq(link_t *l)
{
    ASSERT_EQ(l->x.rx.seq, be64(l->mb->ssl.cur_out_ctr));
    ASSERT_EQ(l->x.tx.seq, be64(l->mb->ssl.in_ctr));
}

static void mb_write(link_t *l, const unsigned char *p, size_t n)
{
    while (n > 0) {
        int rc = mbedtls_ssl_write(&l->mb->ssl, p, n);
        if (rc <= 0)
            FAIL("mbedtls_ssl_write: -0x%04x", (unsigned) -rc);
        p += rc;
        n -= (size_t) rc;
    }
}

static void mb_read(link_t *l, unsigned char *p, size_t n)
{
    while (n > 0) {
        int rc = mbedtls_ssl_read(&l->mb->ssl, p, n);
        if (rc <= 0)
            FAIL("mbedtls_ssl_read: -0x%04x", (unsigned) -rc);
        p += rc;
        n -= (size_t) rc;
    }
}

/* Seal everything into the wire mbedTLS reads from. */
static void xr_write(link_t *l, uint8_t type, const unsigned char *p, size_t n)
{
    size_t cap = n + (n / XR_REC_MAX_PLAIN + 1) * l->x.overhead, used;
    unsigned char *out = malloc(cap);
    ASSERT_NOT_NULL(out);
    size_t w = xr_rec_seal(&l->x, type, p, n, out, cap, &used);
    ASSERT_EQ(used, n);
    ASSERT_EQ(w, n + (n + XR_REC_MAX_PLAIN - 1) / XR_REC_MAX_PLAIN * l->x.overhead);
    wire_put(l->from_xr, out, w);
    free(out);
}

/* Take everything mbedTLS wrote so far. */
static unsigned char *take(wire_t *w, size_t *n)
{
    *n = w->len;
    unsigned char *p = malloc(w->len + 1);
    ASSERT_NOT_NULL(p);
    wire_get(w, p, w->len);
    return p;
}

static unsigned char *pattern(size_t n, unsigned seed)
{
    unsigned char *p = malloc(n + 1);
    ASSERT_NOT_NULL(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char) (i * 131 + seed + (i >> 8));
    return p;
}

/* Open a stream as a relay would: chunks of the given sizes (cycled)
 * arrive and are appended to a buffer holding the unopened tail.  Checks
 * the contract on every call and returns the final status; the opened
 * plaintext is appended to out. */
static xr_rec_status_t open_stream(xr_rec_t *x, const unsigned char *s, size_t n,
                                   const size_t *chunks, size_t nchunks, unsigned char *out,
                                   size_t *outlen, uint8_t alert[2])
{
    unsigned char *buf = malloc(n + 1);
    ASSERT_NOT_NULL(buf);
    size_t have = 0, fed = 0, k = 0;
    xr_rec_status_t st = XR_REC_OK;
    *outlen = 0;
    while (fed < n) {
        size_t c = chunks[k++ % nchunks];
        if (c > n - fed)
            c = n - fed;
        memcpy(buf + have, s + fed, c);
        have += c;
        fed += c;
        size_t plain, used;
        st = xr_rec_open(x, buf, have, &plain, &used, alert);
        ASSERT_LE(plain, used);
        ASSERT_LE(used, have);
        memcpy(out + *outlen, buf, plain);
        *outlen += plain;
        if (st != XR_REC_OK)
            break;
        /* The tail is a partial record, exactly as it arrived. */
        ASSERT_MEMEQ(buf + used, s + fed - (have - used), have - used);
        if (have - used >= XR_REC_HEADER) {
            size_t body = (size_t) buf[used + 3] << 8 | buf[used + 4];
            ASSERT_LT(have - used, XR_REC_HEADER + body);
        }
        memmove(buf, buf + used, have - used);
        have -= used;
    }
    if (st == XR_REC_OK)
        ASSERT_EQ(have, 0);
    free(buf);
    return st;
}

static const size_t whole[] = {SIZE_MAX};

/* ---- xr_rec_t on its own ------------------------------------------------- */

static void fixed_keyblock(unsigned char kb[88])
{
    for (int i = 0; i < 88; i++)
        kb[i] = (unsigned char) (i * 7 + 1);
}

TEST(init_rejects_what_it_cannot_do)
{
    unsigned char kb[88];
    xr_rec_t r;
    fixed_keyblock(kb);
    ASSERT_EQ(xr_rec_init(&r, XR_AEAD_NONE, 1, kb, 32, 12, 0, 0), -1);
    ASSERT_EQ(xr_rec_init(&r, XR_AEAD_CHACHA20, 1, kb, 16, 12, 0, 0), -1);
    ASSERT_EQ(xr_rec_init(&r, XR_AEAD_CHACHA20, 1, kb, 32, 4, 0, 0), -1);
    ASSERT_EQ(xr_rec_init(&r, XR_AEAD_AES256GCM, 1, kb, 32, 12, 0, 0), -1);
    ASSERT_EQ(xr_rec_init(&r, (xr_aead_t) 99, 1, kb, 32, 12, 0, 0), -1);
    ASSERT_EQ(r.aead, XR_AEAD_NONE);
    ASSERT_NULL(r.rx.gcm);
    ASSERT_FALSE(xr_rec_available(XR_AEAD_NONE));
    ASSERT_TRUE(xr_rec_available(XR_AEAD_CHACHA20));

    /* Freeing a zeroed struct, or one twice, is harmless. */
    memset(&r, 0, sizeof(r));
    xr_rec_free(&r);
    ASSERT_EQ(xr_rec_init(&r, XR_AEAD_CHACHA20, 0, kb, 32, 12, 5, 6), 0);
    ASSERT_EQ(r.rx.seq, 5);
    ASSERT_EQ(r.tx.seq, 6);
    ASSERT_MEMEQ(r.tx.key, kb, 32);      /* client writes with the client key */
    ASSERT_MEMEQ(r.rx.key, kb + 32, 32); /* and reads with the server's */
    ASSERT_MEMEQ(r.tx.iv, kb + 64, 12);
    ASSERT_MEMEQ(r.rx.iv, kb + 76, 12);
    xr_rec_free(&r);
    xr_rec_free(&r);
    static const unsigned char zero[32];
    ASSERT_MEMEQ(r.rx.key, zero, 32); /* the keys are wiped */
    ASSERT_MEMEQ(r.tx.key, zero, 32);

    /* An unset record layer seals nothing and opens nothing. */
    unsigned char buf[64] = {23, 3, 3, 0, 20};
    size_t c, p, u;
    uint8_t a[2];
    ASSERT_EQ(xr_rec_seal(&r, 23, buf, 1, buf + 32, 32, &c), 0);
    ASSERT_EQ(c, 0);
    ASSERT_EQ(xr_rec_alert(&r, 1, 0, buf, sizeof(buf)), 0);
    ASSERT_EQ(xr_rec_open(&r, buf, 25, &p, &u, a), XR_REC_ERR_FORMAT);

    if (xr_rec_available(XR_AEAD_AES256GCM)) {
        ASSERT_EQ(xr_rec_init(&r, XR_AEAD_AES256GCM, 1, kb, 32, 4, 0, 0), 0);
        /* One of the two implementations holds the expanded key. */
        ASSERT_TRUE((r.rx.gcm != NULL) != (r.rx.vgcm != NULL));
        ASSERT_EQ((uintptr_t) r.rx.gcm % 16, 0);
        ASSERT_MEMEQ(r.rx.iv, kb + 64, 4);
        ASSERT_MEMEQ(r.tx.iv, kb + 68, 4);
        xr_rec_free(&r);
        ASSERT_NULL(r.rx.gcm);
        ASSERT_NULL(r.tx.gcm);
        ASSERT_NULL(r.rx.vgcm);
    }
}

/* A client-side and a server-side xr_rec_t over the same key block. */
static int pair_init(xr_rec_t *cli, xr_rec_t *srv, xr_aead_t aead)
{
    unsigned char kb[88];
    size_t ivlen = aead == XR_AEAD_AES256GCM ? 4 : 12;
    fixed_keyblock(kb);
    if (!xr_rec_available(aead))
        return -1;
    ASSERT_EQ(xr_rec_init(cli, aead, 0, kb, 32, ivlen, 1, 1), 0);
    ASSERT_EQ(xr_rec_init(srv, aead, 1, kb, 32, ivlen, 1, 1), 0);
    return 0;
}

static void self_roundtrip(xr_aead_t aead)
{
    xr_rec_t cli, srv;
    if (pair_init(&cli, &srv, aead) < 0)
        SKIP("AEAD not available on this CPU");
    static const size_t sizes[] = {0, 1, 2, 100, 16383, 16384, 16385, 32768, 100000};
    static const size_t chunks[] = {1, 7, 5, 4096, 3, 16413, 29, 65536, 2};
    for (size_t i = 0; i < XR_ARRAY_SIZE(sizes); i++) {
        size_t n = sizes[i], w, c, got;
        unsigned char *in = pattern(n, (unsigned) i);
        size_t cap = n + (n / XR_REC_MAX_PLAIN + 1) * cli.overhead;
        unsigned char *wire = malloc(cap), *out = malloc(n + 1);
        uint64_t seq0 = cli.tx.seq;
        w = xr_rec_seal(&cli, XR_REC_TYPE_APPDATA, in, n, wire, cap, &c);
        ASSERT_EQ(c, n);
        size_t nrec = (n + XR_REC_MAX_PLAIN - 1) / XR_REC_MAX_PLAIN;
        ASSERT_EQ(w, n + nrec * cli.overhead);
        ASSERT_EQ(cli.tx.seq, seq0 + nrec);
        uint8_t a[2];
        ASSERT_EQ(
            open_stream(&srv, wire, w, chunks + i % 3, XR_ARRAY_SIZE(chunks) - i % 3, out, &got, a),
            XR_REC_OK);
        ASSERT_EQ(got, n);
        ASSERT_MEMEQ(out, in, n);
        ASSERT_EQ(srv.rx.seq, cli.tx.seq);
        free(in);
        free(wire);
        free(out);
    }
    xr_rec_free(&cli);
    xr_rec_free(&srv);
}

TEST(self_roundtrip_gcm)
{
    self_roundtrip(XR_AEAD_AES256GCM);
}

TEST(self_roundtrip_chacha)
{
    self_roundtrip(XR_AEAD_CHACHA20);
}

static void seal_limits(xr_aead_t aead)
{
    xr_rec_t cli, srv;
    if (pair_init(&cli, &srv, aead) < 0)
        SKIP("AEAD not available on this CPU");
    size_t ov = cli.overhead, c;
    unsigned char *in = pattern(40000, 1), *out = malloc(40000 + 8 * ov);

    /* Not one byte's record fits: nothing is written, no sequence used. */
    ASSERT_EQ(xr_rec_seal(&cli, 23, in, 10, out, ov, &c), 0);
    ASSERT_EQ(c, 0);
    ASSERT_EQ(cli.tx.seq, 1);
    ASSERT_EQ(xr_rec_alert(&cli, 1, 0, out, ov + 1), 0);
    ASSERT_EQ(cli.tx.seq, 1);
    /* Nothing to seal seals nothing. */
    ASSERT_EQ(xr_rec_seal(&cli, 23, in, 0, out, 1000, &c), 0);
    ASSERT_EQ(c, 0);

    /* A short buffer gets a short record. */
    ASSERT_EQ(xr_rec_seal(&cli, 23, in, 10, out, ov + 1, &c), ov + 1);
    ASSERT_EQ(c, 1);
    ASSERT_EQ(out[0], 23);
    ASSERT_EQ(out[1], 3);
    ASSERT_EQ(out[2], 3);
    ASSERT_EQ((out[3] << 8 | out[4]) + XR_REC_HEADER, ov + 1);
    ASSERT_EQ(cli.tx.seq, 2);
    if (aead == XR_AEAD_AES256GCM) {
        /* The explicit nonce is the sequence number the record used. */
        static const unsigned char one[8] = {0, 0, 0, 0, 0, 0, 0, 1};
        ASSERT_MEMEQ(out + 5, one, 8);
    }

    /* Whole records while they fit, then a partial one for the rest of
     * the space; then the next call goes on from there. */
    size_t cap = 2 * (XR_REC_MAX_PLAIN + ov) + 100 + ov;
    size_t w = xr_rec_seal(&cli, 23, in + 1, 39999, out + ov + 1, cap, &c);
    ASSERT_EQ(w, cap);
    ASSERT_EQ(c, 2 * XR_REC_MAX_PLAIN + 100);
    size_t c2, w2 = xr_rec_seal(&cli, 23, in + 1 + c, 39999 - c, out + ov + 1 + w, 40000, &c2);
    ASSERT_EQ(c2, 39999 - c);
    ASSERT_EQ(w2, c2 + ov);
    ASSERT_EQ(cli.tx.seq, 6);

    /* An exact fit for two full records. */
    unsigned char *o2 = malloc(2 * (XR_REC_MAX_PLAIN + ov));
    ASSERT_EQ(xr_rec_seal(&cli, 23, in, 40000, o2, 2 * (XR_REC_MAX_PLAIN + ov), &c),
              2 * (XR_REC_MAX_PLAIN + ov));
    ASSERT_EQ(c, 2 * XR_REC_MAX_PLAIN);

    size_t total = ov + 1 + w + w2, plain, used;
    uint8_t a[2];
    ASSERT_EQ(xr_rec_open(&srv, out, total, &plain, &used, a), XR_REC_OK);
    ASSERT_EQ(used, total);
    ASSERT_EQ(plain, 40000);
    ASSERT_MEMEQ(out, in, 40000);
    ASSERT_EQ(xr_rec_open(&srv, o2, 2 * (XR_REC_MAX_PLAIN + ov), &plain, &used, a), XR_REC_OK);
    ASSERT_EQ(plain, 2 * XR_REC_MAX_PLAIN);
    ASSERT_MEMEQ(o2, in, plain);
    free(in);
    free(out);
    free(o2);
    xr_rec_free(&cli);
    xr_rec_free(&srv);
}

/* A record layer exported mid-stream and imported elsewhere (a worker
 * taking over a connection) seals and opens exactly as the original
 * would have: same bytes out, same records accepted. */
static void export_import(xr_aead_t aead)
{
    xr_rec_t cli, srv, moved;
    if (pair_init(&cli, &srv, aead) < 0)
        SKIP("AEAD not available on this CPU");
    unsigned char *in = pattern(5000, 7), wire[6000], again[6000], out[6000];
    size_t c, w, w2, plain, used;
    uint8_t a[2];
    w = xr_rec_seal(&cli, XR_REC_TYPE_APPDATA, in, 1000, wire, sizeof(wire), &c);
    ASSERT_EQ(xr_rec_open(&srv, wire, w, &plain, &used, a), XR_REC_OK);

    xr_rec_state_t st;
    xr_rec_export(&cli, &st);
    ASSERT_EQ(xr_rec_import(&moved, &st), 0);
    ASSERT_EQ(moved.overhead, cli.overhead);
    w = xr_rec_seal(&cli, XR_REC_TYPE_APPDATA, in + 1000, 4000, wire, sizeof(wire), &c);
    w2 = xr_rec_seal(&moved, XR_REC_TYPE_APPDATA, in + 1000, 4000, again, sizeof(again), &c);
    ASSERT_EQ(w2, w);
    ASSERT_MEMEQ(again, wire, w);

    xr_rec_export(&srv, &st);
    xr_rec_free(&srv);
    ASSERT_EQ(xr_rec_import(&srv, &st), 0);
    memcpy(out, wire, w);
    ASSERT_EQ(xr_rec_open(&srv, out, w, &plain, &used, a), XR_REC_OK);
    ASSERT_EQ(plain, 4000);
    ASSERT_MEMEQ(out, in + 1000, 4000);

    st.aead = 99;
    ASSERT_EQ(xr_rec_import(&moved, &st), -1);
    free(in);
    xr_rec_free(&cli);
    xr_rec_free(&srv);
    xr_rec_free(&moved);
}

TEST(export_import_gcm)
{
    export_import(XR_AEAD_AES256GCM);
}

TEST(export_import_chacha)
{
    export_import(XR_AEAD_CHACHA20);
}

/* Opening out of place gives what opening in place gives, leaves the
 * records as they were, and stops where it is told to. */
static void open_to(xr_aead_t aead)
{
    xr_rec_t cli, srv, cli2, srv2; /* srv2: a second reader of the same stream */
    if (pair_init(&cli, &srv, aead) < 0 || pair_init(&cli2, &srv2, aead) < 0)
        SKIP("AEAD not available on this CPU");
    xr_rec_free(&cli2);
    unsigned char *in = pattern(40000, 3);
    size_t cap = 40000 + 4 * cli.overhead + 64, c, plain, used;
    unsigned char *wire = malloc(cap), *copy = malloc(cap), *out = malloc(40000);
    size_t w = xr_rec_seal(&cli, XR_REC_TYPE_APPDATA, in, 40000, wire, cap, &c);
    w += xr_rec_alert(&cli, 1, 0, wire + w, cap - w);
    memcpy(copy, wire, w);
    /* room for the first two records only */
    ASSERT_EQ(xr_rec_open_to(&srv, wire, w, out, 2 * XR_REC_MAX_PLAIN + 5, &plain, &used),
              XR_REC_OK);
    ASSERT_EQ(plain, 2 * XR_REC_MAX_PLAIN);
    ASSERT_MEMEQ(out, in, plain);
    ASSERT_MEMEQ(wire, copy, w);
    /* the rest, up to the close_notify, which it leaves to xr_rec_open */
    size_t p2, u2;
    ASSERT_EQ(xr_rec_open_to(&srv, wire + used, w - used, out + plain, 40000 - plain, &p2, &u2),
              XR_REC_OK);
    ASSERT_EQ(plain + p2, 40000);
    ASSERT_MEMEQ(out, in, 40000);
    uint8_t a[2];
    size_t p3, u3;
    ASSERT_EQ(xr_rec_open(&srv, wire + used + u2, w - used - u2, &p3, &u3, a), XR_REC_CLOSE_NOTIFY);
    /* a flipped bit: the bad record MAC, the good cleartext before it */
    copy[XR_REC_HEADER + XR_REC_MAX_PLAIN + cli.overhead + 20] ^= 1;
    ASSERT_EQ(xr_rec_open_to(&srv2, copy, w, out, 40000, &plain, &used), XR_REC_ERR_MAC);
    ASSERT_EQ(plain, XR_REC_MAX_PLAIN);
    free(in);
    free(wire);
    free(copy);
    free(out);
    xr_rec_free(&cli);
    xr_rec_free(&srv);
    xr_rec_free(&srv2);
}

TEST(open_to_gcm)
{
    open_to(XR_AEAD_AES256GCM);
}

TEST(open_to_chacha)
{
    open_to(XR_AEAD_CHACHA20);
}

TEST(seal_fills_the_buffer_gcm)
{
    seal_limits(XR_AEAD_AES256GCM);
}

TEST(seal_fills_the_buffer_chacha)
{
    seal_limits(XR_AEAD_CHACHA20);
}

/* Records that are refused by their header alone, before a body. */
static void header_errors(xr_aead_t aead)
{
    xr_rec_t cli, srv;
    if (pair_init(&cli, &srv, aead) < 0)
        SKIP("AEAD not available on this CPU");
    size_t extra = srv.overhead - XR_REC_HEADER, plain, used;
    uint8_t a[2];
    struct {
        unsigned char h[5];
        xr_rec_status_t want;
    } cases[] = {
        {{23, 3, 1, 0, 40}, XR_REC_ERR_FORMAT},                          /* TLS 1.0 */
        {{23, 3, 4, 0, 40}, XR_REC_ERR_FORMAT},                          /* "TLS 1.3" */
        {{23, 2, 3, 0, 40}, XR_REC_ERR_FORMAT},                          /* SSL 2 */
        {{20, 3, 3, 0, 40}, XR_REC_ERR_FORMAT},                          /* change_cipher_spec */
        {{24, 3, 3, 0, 40}, XR_REC_ERR_FORMAT},                          /* heartbeat */
        {{0, 3, 3, 0, 40}, XR_REC_ERR_FORMAT},                           /* nothing */
        {{0x16, 3, 1, 0, 40}, XR_REC_ERR_FORMAT},                        /* a ClientHello */
        {{23, 3, 3, 0x48, 0x01}, XR_REC_ERR_OVERSIZE},                   /* 2^14 + 2048 + 1 */
        {{23, 3, 3, 0xff, 0xff}, XR_REC_ERR_OVERSIZE},                   /* 64 KiB - 1 */
        {{23, 3, 3, 0, (unsigned char) (extra - 1)}, XR_REC_ERR_FORMAT}, /* no room for the tag */
        {{23, 3, 3, 0, 0}, XR_REC_ERR_FORMAT},                           /* empty */
        {{21, 3, 3, 0, (unsigned char) (extra + 1)}, XR_REC_ERR_FORMAT}, /* alert of one byte */
        {{21, 3, 3, 0, (unsigned char) (extra + 3)}, XR_REC_ERR_FORMAT}, /* and of three */
    };
    for (size_t i = 0; i < XR_ARRAY_SIZE(cases); i++) {
        unsigned char buf[8];
        memcpy(buf, cases[i].h, 5);
        ASSERT_EQ(xr_rec_open(&srv, buf, 5, &plain, &used, a), cases[i].want);
        ASSERT_EQ(plain, 0);
        ASSERT_EQ(used, 0);
    }
    /* Plaintext over 2^14 is record_overflow even inside 2^14 + 2048. */
    unsigned char h[5] = {23, 3, 3, (unsigned char) ((XR_REC_MAX_PLAIN + extra + 1) >> 8),
                          (unsigned char) (XR_REC_MAX_PLAIN + extra + 1)};
    ASSERT_EQ(xr_rec_open(&srv, h, 5, &plain, &used, a), XR_REC_ERR_OVERSIZE);
    /* Exactly 2^14 of garbage is a well-formed record that fails its MAC. */
    unsigned char *big = calloc(1, XR_REC_MAX_CIPHER + XR_REC_HEADER);
    size_t body = XR_REC_MAX_PLAIN + extra;
    memcpy(big, (unsigned char[]){23, 3, 3, (unsigned char) (body >> 8), (unsigned char) body}, 5);
    ASSERT_EQ(xr_rec_open(&srv, big, 4, &plain, &used, a), XR_REC_OK); /* too short to judge */
    ASSERT_EQ(used, 0);
    ASSERT_EQ(xr_rec_open(&srv, big, 5 + body - 1, &plain, &used, a), XR_REC_OK);
    ASSERT_EQ(used, 0);
    ASSERT_EQ(xr_rec_open(&srv, big, 5 + body, &plain, &used, a), XR_REC_ERR_MAC);
    ASSERT_EQ(used, 0);
    ASSERT_EQ(srv.rx.seq, 1);
    free(big);
    xr_rec_free(&cli);
    xr_rec_free(&srv);
}

TEST(header_errors_gcm)
{
    header_errors(XR_AEAD_AES256GCM);
}

TEST(header_errors_chacha)
{
    header_errors(XR_AEAD_CHACHA20);
}

/* ---- against mbedTLS ----------------------------------------------------- */

static const size_t sizes[] = {1, 100, 16383, 16384, 16385, 100000};

/* Every size each way one at a time, then many records per buffer, then
 * a stream arriving in odd pieces and byte by byte. */
static void interop(xr_aead_t aead, int xr_is_server)
{
    link_t l;
    link_open(&l, aead, xr_is_server);
    uint8_t a[2];
    size_t total = 0, wn, gn;
    for (size_t i = 0; i < XR_ARRAY_SIZE(sizes); i++)
        total += sizes[i];
    unsigned char *all = pattern(total, 7), *got = malloc(total + 1), *w;

    for (size_t i = 0; i < XR_ARRAY_SIZE(sizes); i++) {
        size_t n = sizes[i];
        mb_write(&l, all, n);
        w = take(l.to_xr, &wn);
        ASSERT_EQ(open_stream(&l.x, w, wn, whole, 1, got, &gn, a), XR_REC_OK);
        ASSERT_EQ(gn, n);
        ASSERT_MEMEQ(got, all, n);
        free(w);

        memset(got, 0, n);
        xr_write(&l, XR_REC_TYPE_APPDATA, all, n);
        mb_read(&l, got, n);
        ASSERT_MEMEQ(got, all, n);
        ASSERT_EQ(l.from_xr->len, 0);
        ASSERT_FALSE(mbedtls_ssl_check_pending(&l.mb->ssl));
        link_check_seq(&l);
    }

    /* Many records in one buffer, each way. */
    static const size_t odd[] = {1, 2, 3, 4, 5, 6, 13, 4000, 16000, 17, 16421, 100, 29, 30};
    static const size_t one[] = {1};
    for (int pass = 0; pass < 3; pass++) {
        size_t off = 0;
        for (size_t i = 0; i < XR_ARRAY_SIZE(sizes); i++) {
            /* Byte by byte only over the first 34 KB, to stay quick. */
            if (pass == 2 && i == 4)
                break;
            mb_write(&l, all + off, sizes[i]);
            off += sizes[i];
        }
        w = take(l.to_xr, &wn);
        ASSERT_GT(wn, off);
        memset(got, 0, total);
        if (pass == 0)
            ASSERT_EQ(open_stream(&l.x, w, wn, whole, 1, got, &gn, a), XR_REC_OK);
        else if (pass == 1)
            ASSERT_EQ(open_stream(&l.x, w, wn, odd, XR_ARRAY_SIZE(odd), got, &gn, a), XR_REC_OK);
        else
            ASSERT_EQ(open_stream(&l.x, w, wn, one, 1, got, &gn, a), XR_REC_OK);
        ASSERT_EQ(gn, off);
        ASSERT_MEMEQ(got, all, off);
        free(w);
        link_check_seq(&l);

        memset(got, 0, total);
        xr_write(&l, XR_REC_TYPE_APPDATA, all, off);
        mb_read(&l, got, off);
        ASSERT_MEMEQ(got, all, off);
        link_check_seq(&l);
    }
    free(all);
    free(got);
    link_close(&l);
}

TEST(interop_gcm_xr_server)
{
    interop(XR_AEAD_AES256GCM, 1);
}

TEST(interop_gcm_xr_client)
{
    interop(XR_AEAD_AES256GCM, 0);
}

TEST(interop_chacha_xr_server)
{
    interop(XR_AEAD_CHACHA20, 1);
}

TEST(interop_chacha_xr_client)
{
    interop(XR_AEAD_CHACHA20, 0);
}

/* close_notify and other alerts, each way; alerts use sequence numbers. */
static void alerts(xr_aead_t aead, int xr_is_server)
{
    link_t l;
    uint8_t a[2];
    size_t wn, plain, used;
    unsigned char *data = pattern(300, 3), got[300], *w;
    link_open(&l, aead, xr_is_server);

    /* A warning that is not close_notify is reported, and opening goes on
     * after it. */
    mb_write(&l, data, 10);
    ASSERT_EQ(mbedtls_ssl_send_alert_message(&l.mb->ssl, MBEDTLS_SSL_ALERT_LEVEL_WARNING,
                                             MBEDTLS_SSL_ALERT_MSG_NO_RENEGOTIATION),
              0);
    mb_write(&l, data + 10, 20);
    w = take(l.to_xr, &wn);
    ASSERT_EQ(xr_rec_open(&l.x, w, wn, &plain, &used, a), XR_REC_ALERT);
    ASSERT_EQ(plain, 10);
    ASSERT_MEMEQ(w, data, 10);
    ASSERT_EQ(a[0], 1);
    ASSERT_EQ(a[1], 100);
    ASSERT_EQ(used, wn - (20 + l.x.overhead));
    size_t rest = wn - used;
    memmove(w, w + used, rest);
    ASSERT_EQ(xr_rec_open(&l.x, w, rest, &plain, &used, a), XR_REC_OK);
    ASSERT_EQ(plain, 20);
    ASSERT_EQ(used, rest);
    ASSERT_MEMEQ(w, data + 10, 20);
    free(w);
    link_check_seq(&l);

    /* A fatal alert from xrayd: mbedTLS reads the data before it, then
     * the alert. */
    unsigned char out[64];
    xr_write(&l, XR_REC_TYPE_APPDATA, data, 5);
    size_t an = xr_rec_alert(&l.x, 2, MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE, out, sizeof(out));
    ASSERT_EQ(an, l.x.overhead + 2);
    wire_put(l.from_xr, out, an);
    mb_read(&l, got, 5);
    ASSERT_MEMEQ(got, data, 5);
    ASSERT_EQ(mbedtls_ssl_read(&l.mb->ssl, got, sizeof(got)), MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE);
    link_close(&l);

    /* close_notify from mbedTLS, after data in the same buffer. */
    link_open(&l, aead, xr_is_server);
    mb_write(&l, data, 300);
    ASSERT_EQ(mbedtls_ssl_close_notify(&l.mb->ssl), 0);
    w = take(l.to_xr, &wn);
    a[0] = a[1] = 0xff;
    ASSERT_EQ(xr_rec_open(&l.x, w, wn, &plain, &used, a), XR_REC_CLOSE_NOTIFY);
    ASSERT_EQ(plain, 300);
    ASSERT_MEMEQ(w, data, 300);
    ASSERT_EQ(used, wn);
    ASSERT_EQ(a[0], 1);
    ASSERT_EQ(a[1], 0);
    free(w);
    link_check_seq(&l);

    /* close_notify from xrayd: data, then a clean end for mbedTLS. */
    xr_write(&l, XR_REC_TYPE_APPDATA, data, 300);
    an = xr_rec_alert(&l.x, 1, 0, out, sizeof(out));
    ASSERT_EQ(an, l.x.overhead + 2);
    wire_put(l.from_xr, out, an);
    mb_read(&l, got, 300);
    ASSERT_MEMEQ(got, data, 300);
    ASSERT_EQ(mbedtls_ssl_read(&l.mb->ssl, got, sizeof(got)), MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY);
    link_check_seq(&l);
    free(data);
    link_close(&l);
}

TEST(alerts_gcm)
{
    alerts(XR_AEAD_AES256GCM, 1);
    alerts(XR_AEAD_AES256GCM, 0);
}

TEST(alerts_chacha)
{
    alerts(XR_AEAD_CHACHA20, 1);
    alerts(XR_AEAD_CHACHA20, 0);
}

/* Tampering: every changed bit of a record body fails its MAC, the
 * plaintext before it is still delivered, and a bad header is a format
 * or size error. */
static void tamper(xr_aead_t aead, int xr_is_server)
{
    link_t l;
    uint8_t a[2];
    size_t wn, plain, used;
    unsigned char *data = pattern(300, 9), got[300];
    link_open(&l, aead, xr_is_server);

    mb_write(&l, data, 100);
    size_t first = l.to_xr->len;
    mb_write(&l, data + 100, 200);
    unsigned char *w = take(l.to_xr, &wn), *t = malloc(wn);
    ASSERT_EQ(wn, first + 200 + l.x.overhead);
    uint64_t seq = l.x.rx.seq;

    for (size_t pos = 0; pos < wn - first; pos++) {
        memcpy(t, w, wn);
        xr_rec_status_t want;
        if (pos == 0) {
            t[first] ^= 1; /* 23 becomes 22: authenticated as a type */
            want = XR_REC_ERR_MAC;
        } else if (pos < 3) {
            t[first + pos] ^= 0x10;
            want = XR_REC_ERR_FORMAT;
        } else if (pos == 3) {
            t[first + pos] = 0x48; /* 2^14 + 2048 + 1 at most */
            t[first + 4] |= 1;
            want = XR_REC_ERR_OVERSIZE;
        } else if (pos == 4) {
            continue;
        } else {
            t[first + pos] ^= (unsigned char) (1u << (pos % 8));
            want = XR_REC_ERR_MAC;
        }
        l.x.rx.seq = seq;
        ASSERT_EQ(xr_rec_open(&l.x, t, wn, &plain, &used, a), want);
        ASSERT_EQ(plain, 100);
        ASSERT_MEMEQ(t, data, 100);
        ASSERT_EQ(used, first);
        ASSERT_EQ(l.x.rx.seq, seq + 1);
    }
    /* Untouched, the same bytes open. */
    l.x.rx.seq = seq;
    ASSERT_EQ(xr_rec_open(&l.x, w, wn, &plain, &used, a), XR_REC_OK);
    ASSERT_EQ(plain, 300);
    ASSERT_MEMEQ(w, data, 300);

    /* A replayed record fails: the sequence number is in the AAD. */
    free(w);
    mb_write(&l, data, 50);
    w = take(l.to_xr, &wn);
    memcpy(t, w, wn);
    ASSERT_EQ(xr_rec_open(&l.x, w, wn, &plain, &used, a), XR_REC_OK);
    ASSERT_EQ(xr_rec_open(&l.x, t, wn, &plain, &used, a), XR_REC_ERR_MAC);
    ASSERT_EQ(used, 0);
    ASSERT_EQ(plain, 0);
    free(w);
    free(t);
    link_close(&l);

    /* One flipped bit in what xrayd seals: mbedTLS refuses it too. */
    link_open(&l, aead, xr_is_server);
    xr_write(&l, XR_REC_TYPE_APPDATA, data, 300);
    l.from_xr->data[XR_REC_HEADER + 150] ^= 4;
    ASSERT_EQ(mbedtls_ssl_read(&l.mb->ssl, got, sizeof(got)), MBEDTLS_ERR_SSL_INVALID_MAC);
    free(data);
    link_close(&l);
}

TEST(tamper_gcm)
{
    tamper(XR_AEAD_AES256GCM, 1);
    tamper(XR_AEAD_AES256GCM, 0);
}

TEST(tamper_chacha)
{
    tamper(XR_AEAD_CHACHA20, 1);
    tamper(XR_AEAD_CHACHA20, 0);
}

/* mbedTLS starting a renegotiation (a ClientHello from a client, a
 * HelloRequest from a server) arrives as an encrypted handshake record. */
static void renegotiation(xr_aead_t aead, int xr_is_server)
{
    link_t l;
    uint8_t a[2];
    size_t wn, plain, used;
    unsigned char *data = pattern(50, 1);
    link_open(&l, aead, xr_is_server);
    mb_write(&l, data, 50);
    int rc = mbedtls_ssl_renegotiate(&l.mb->ssl);
    ASSERT_TRUE(rc == 0 || rc == MBEDTLS_ERR_SSL_WANT_READ);
    unsigned char *w = take(l.to_xr, &wn);
    ASSERT_EQ(w[50 + l.x.overhead], XR_REC_TYPE_HANDSHAKE);
    ASSERT_EQ(xr_rec_open(&l.x, w, wn, &plain, &used, a), XR_REC_HANDSHAKE);
    ASSERT_EQ(plain, 50);
    ASSERT_MEMEQ(w, data, 50);
    ASSERT_EQ(used, wn);
    link_check_seq(&l);
    free(w);
    free(data);
    link_close(&l);
}

TEST(renegotiation_gcm)
{
    renegotiation(XR_AEAD_AES256GCM, 1);
    renegotiation(XR_AEAD_AES256GCM, 0);
}

TEST(renegotiation_chacha)
{
    renegotiation(XR_AEAD_CHACHA20, 1);
    renegotiation(XR_AEAD_CHACHA20, 0);
}

/* ---- speed (printed, not asserted) --------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void speed(xr_aead_t aead, const char *name)
{
    xr_rec_t cli, srv;
    if (pair_init(&cli, &srv, aead) < 0) {
        printf("# %s: not available on this CPU\n", name);
        return;
    }
    enum { NREC = 256 };
    size_t n = NREC * (size_t) XR_REC_MAX_PLAIN, cap = NREC * (XR_REC_MAX_PLAIN + cli.overhead);
    unsigned char *in = pattern(n, 0), *wire = malloc(cap);
    double ts = 0, to = 0, bytes = 0;
    while (ts + to < 1.0) {
        size_t c, plain, used;
        uint8_t a[2];
        double t0 = now();
        size_t w = xr_rec_seal(&cli, XR_REC_TYPE_APPDATA, in, n, wire, cap, &c);
        double t1 = now();
        ASSERT_EQ(xr_rec_open(&srv, wire, w, &plain, &used, a), XR_REC_OK);
        double t2 = now();
        ASSERT_EQ(plain, n);
        ts += t1 - t0;
        to += t2 - t1;
        bytes += (double) n;
    }
    printf("# %s, 16 KiB records: seal %.0f MB/s, open %.0f MB/s\n", name, bytes / ts / 1e6,
           bytes / to / 1e6);
    free(in);
    free(wire);
    xr_rec_free(&cli);
    xr_rec_free(&srv);
}

/* AES-256-GCM is named with the implementation the record layer chose
 * (XRAYD_AES=sodium or avx2 picks another), so runs compare. */
TEST(speed)
{
    char gcm[64];
    snprintf(gcm, sizeof(gcm), "AES-256-GCM (%s)", xr_gcm_impl_name(xr_gcm_impl()));
    speed(XR_AEAD_AES256GCM, gcm);
    speed(XR_AEAD_CHACHA20, "ChaCha20-Poly1305");
}
