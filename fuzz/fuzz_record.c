/*
 * fuzz_record.c: libFuzzer target for the TLS 1.2 record layer
 * (src/common/record.c), fed as a relay feeds it: bytes arrive in chunks,
 * are appended after the unopened tail, and xr_rec_open runs again.
 *
 * Input layout:
 *   byte 0      bit 0: AEAD (0 AES-256-GCM, 1 ChaCha20-Poly1305; GCM
 *               becomes ChaCha on a CPU without AES-NI)
 *               bit 1: 0 = open the stream as received bytes,
 *                      1 = round trip: seal the stream as application
 *                          data, then open what was sealed (streams
 *                          up to 2^14 bytes; longer ones are skipped)
 *   byte 1      k = byte % 16, the number of chunk-size bytes that follow
 *   k bytes     chunk sizes, used in turn and cycled: b < 128 is b + 1
 *               bytes, else (b - 127) * 256 (1 byte by default)
 *   the rest    the stream
 *
 * The keys are fixed (xr_fuzz_keyblock) and both sequence numbers start
 * at 1, as after a handshake, so sealed seeds open and the fuzzer can
 * mutate past the MAC check only by finding its way around the header.
 *
 * Invariants checked on every call: plain <= used <= len; used ends on a
 * record boundary and covers exactly the records the receive sequence
 * number moved by; a trailing partial record is left as it arrived; an OK
 * status leaves no complete record behind; a round trip gives back the
 * bytes it sealed, then close_notify.
 *
 * Building with -DXR_FUZZ_RECORD_SEEDS and no libFuzzer gives a program
 * that writes the seed corpus: `fuzz_record_seeds fuzz/corpus/record`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define XR_FUZZ_MAX (1u << 18)

#define XR_FUZZ_CHECK(c)                                                                           \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_record.c:%d: invariant failed: %s\n", __LINE__, #c);             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void xr_fuzz_keyblock(unsigned char kb[88])
{
    for (int i = 0; i < 88; i++)
        kb[i] = (unsigned char) (i * 7 + 1);
}

/* The receiving end (the server) and, for sealing, its peer. */
static int xr_fuzz_setup(xr_rec_t *srv, xr_rec_t *cli, int chacha)
{
    unsigned char kb[88];
    xr_aead_t aead = XR_AEAD_AES256GCM;
    if (chacha || !xr_rec_available(aead))
        aead = XR_AEAD_CHACHA20;
    size_t ivlen = aead == XR_AEAD_AES256GCM ? 4 : 12;
    xr_fuzz_keyblock(kb);
    if (xr_rec_init(srv, aead, 1, kb, 32, ivlen, 1, 1) < 0)
        return -1;
    if (xr_rec_init(cli, aead, 0, kb, 32, ivlen, 1, 1) < 0) {
        xr_rec_free(srv);
        return -1;
    }
    return 0;
}

typedef struct {
    const uint8_t *sizes;
    size_t n, next;
} xr_fuzz_chunks_t;

static size_t xr_fuzz_chunk(xr_fuzz_chunks_t *c)
{
    if (c->n == 0)
        return 1;
    uint8_t b = c->sizes[c->next++ % c->n];
    return b < 128 ? (size_t) b + 1 : (size_t) (b - 127) * 256;
}

/* Feed s[0..n) to r in chunks, checking the contract each call.  The
 * opened plaintext goes to out (if not NULL).  Returns the last status;
 * stops at close_notify and at errors, goes on after other alerts and
 * handshake records as a caller may. */
static xr_rec_status_t xr_fuzz_open(xr_rec_t *r, const uint8_t *s, size_t n,
                                    xr_fuzz_chunks_t *chunks, unsigned char *out, size_t *outlen)
{
    static unsigned char buf[XR_FUZZ_MAX + XR_REC_MAX_CIPHER];
    size_t have = 0, fed = 0, extra = r->overhead - XR_REC_HEADER;
    xr_rec_status_t st = XR_REC_OK;
    *outlen = 0;
    while (fed < n) {
        size_t c = xr_fuzz_chunk(chunks);
        if (c > n - fed)
            c = n - fed;
        memcpy(buf + have, s + fed, c);
        have += c;
        fed += c;
        for (;;) {
            /* The bytes in buf as they arrived. */
            const uint8_t *orig = s + fed - have;
            size_t plain = (size_t) -1, used = (size_t) -1;
            uint8_t alert[2] = {0xee, 0xee};
            uint64_t seq0 = r->rx.seq;
            st = xr_rec_open(r, buf, have, &plain, &used, alert);
            XR_FUZZ_CHECK(plain <= used);
            XR_FUZZ_CHECK(used <= have);

            /* used covers whole records, one sequence number each, and the
             * plaintext is what their lengths say. */
            size_t pos = 0, nrec = 0, want_plain = 0;
            while (pos < used) {
                XR_FUZZ_CHECK(used - pos >= XR_REC_HEADER);
                size_t body = (size_t) orig[pos + 3] << 8 | orig[pos + 4];
                XR_FUZZ_CHECK(body >= extra && body - extra <= XR_REC_MAX_PLAIN);
                if (orig[pos] == XR_REC_TYPE_APPDATA)
                    want_plain += body - extra;
                else
                    XR_FUZZ_CHECK(pos + XR_REC_HEADER + body == used); /* it ended the call */
                pos += XR_REC_HEADER + body;
                nrec++;
            }
            XR_FUZZ_CHECK(pos == used);
            XR_FUZZ_CHECK(r->rx.seq - seq0 == nrec);
            XR_FUZZ_CHECK(plain == want_plain);
            if (out != NULL)
                memcpy(out + *outlen, buf, plain);
            *outlen += plain;

            switch (st) {
            case XR_REC_OK:
                /* What is left is a partial record, untouched. */
                XR_FUZZ_CHECK(memcmp(buf + used, orig + used, have - used) == 0);
                if (have - used >= XR_REC_HEADER) {
                    size_t body = (size_t) buf[used + 3] << 8 | buf[used + 4];
                    XR_FUZZ_CHECK(have - used < XR_REC_HEADER + body);
                }
                break;
            case XR_REC_ALERT:
                XR_FUZZ_CHECK(alert[1] != 0);
                XR_FUZZ_CHECK(orig[used - r->overhead - 2] == XR_REC_TYPE_ALERT);
                break;
            case XR_REC_HANDSHAKE: XR_FUZZ_CHECK(used > 0 && alert[0] == 0xee); break;
            case XR_REC_CLOSE_NOTIFY: XR_FUZZ_CHECK(alert[1] == 0); return st;
            default: return st;
            }
            memmove(buf, buf + used, have - used);
            have -= used;
            /* A caller goes on after a warning or a refused renegotiation
             * with what is already buffered. */
            if (st == XR_REC_OK)
                break;
        }
    }
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A round trip of 2^14 bytes in 1-byte records is 30 times longer. */
    static unsigned char sealed[30 * XR_REC_MAX_PLAIN + 64], out[XR_FUZZ_MAX + XR_REC_MAX_CIPHER];
    xr_rec_t srv, cli;
    if (size < 2 || size > XR_FUZZ_MAX)
        return 0;
    xr_fuzz_chunks_t chunks = {data + 2, data[1] % 16, 0};
    if (size < 2 + chunks.n)
        return 0;
    const uint8_t *s = data + 2 + chunks.n;
    size_t n = size - 2 - chunks.n, outlen;
    if (xr_fuzz_setup(&srv, &cli, data[0] & 1) < 0)
        abort();

    if (!(data[0] & 2)) {
        xr_fuzz_open(&srv, s, n, &chunks, NULL, &outlen);
    } else if (n <= XR_REC_MAX_PLAIN) {
        /* Seal in pieces into buffers of varying room, so short records
         * are made too, then open it all and compare. */
        size_t done = 0, w = 0;
        while (done < n) {
            size_t c, cap = xr_fuzz_chunk(&chunks) + cli.overhead;
            w += xr_rec_seal(&cli, XR_REC_TYPE_APPDATA, s + done, n - done, sealed + w, cap, &c);
            XR_FUZZ_CHECK(c > 0);
            done += c;
        }
        size_t a = xr_rec_alert(&cli, 1, 0, sealed + w, cli.overhead + 2);
        XR_FUZZ_CHECK(a == cli.overhead + 2);
        w += a;
        chunks.next = 0;
        XR_FUZZ_CHECK(xr_fuzz_open(&srv, sealed, w, &chunks, out, &outlen) == XR_REC_CLOSE_NOTIFY);
        XR_FUZZ_CHECK(outlen == n);
        XR_FUZZ_CHECK(memcmp(out, s, n) == 0);
        XR_FUZZ_CHECK(srv.rx.seq == cli.tx.seq);
    }
    xr_rec_free(&srv);
    xr_rec_free(&cli);
    return 0;
}

#ifdef XR_FUZZ_RECORD_SEEDS

/* ---- the seed corpus ----------------------------------------------------- */

static void xr_seed_write(const char *dir, const char *name, const unsigned char *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    if (fp == NULL || fwrite(p, 1, n, fp) != n || fclose(fp) != 0) {
        perror(path);
        exit(1);
    }
}

/* What a seed is built from: a prefix (mode, chunk sizes), then records. */
typedef struct {
    unsigned char b[XR_FUZZ_MAX];
    size_t n;
    xr_rec_t cli, srv;
} xr_seed_t;

static void xr_seed_start(xr_seed_t *s, int chacha, int roundtrip, const uint8_t *chunks,
                          size_t nchunks)
{
    memset(s, 0, sizeof(*s));
    if (xr_fuzz_setup(&s->srv, &s->cli, chacha) < 0)
        exit(1);
    s->b[0] = (unsigned char) (chacha | roundtrip << 1);
    s->b[1] = (unsigned char) nchunks;
    if (nchunks > 0)
        memcpy(s->b + 2, chunks, nchunks);
    s->n = 2 + nchunks;
}

static size_t xr_seed_rec(xr_seed_t *s, uint8_t type, const char *text, size_t len)
{
    size_t c, at = s->n;
    s->n += xr_rec_seal(&s->cli, type, (const unsigned char *) text, len, s->b + s->n,
                        sizeof(s->b) - s->n, &c);
    return at;
}

static void xr_seed_raw(xr_seed_t *s, const void *p, size_t n)
{
    memcpy(s->b + s->n, p, n);
    s->n += n;
}

static void xr_seed_done(xr_seed_t *s, const char *dir, const char *name)
{
    xr_seed_write(dir, name, s->b, s->n);
    xr_rec_free(&s->cli);
    xr_rec_free(&s->srv);
}

int main(int argc, char **argv)
{
    static xr_seed_t s;
    static char big[XR_REC_MAX_PLAIN + 100];
    static const uint8_t whole[] = {255, 255, 255}, odd[] = {0, 4, 12, 200, 1, 130};
    static const uint8_t alert_close[] = {1, 0}, alert_warn[] = {1, 100}, alert_fatal[] = {2, 40};
    static const char *const aname[] = {"gcm", "chacha"};
    char name[256];
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char) ('a' + i % 26);

    for (int ch = 0; ch < 2; ch++) {
        const char *an = aname[ch];
#define XR_SEED(label) (snprintf(name, sizeof(name), "%s-%s", label, an), name)

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        xr_seed_rec(&s, 23, "hello, world\n", 13);
        xr_seed_done(&s, dir, XR_SEED("valid-one-record"));

        xr_seed_start(&s, ch, 0, odd, sizeof(odd));
        xr_seed_rec(&s, 23, "a", 1);
        xr_seed_rec(&s, 23, big, 100);
        xr_seed_rec(&s, 23, "", 0);
        xr_seed_rec(&s, 23, big, 2000);
        xr_seed_rec(&s, 21, (const char *) alert_close, 2);
        xr_seed_done(&s, dir, XR_SEED("valid-records-then-close-notify"));

        xr_seed_start(&s, ch, 0, NULL, 0); /* byte by byte */
        xr_seed_rec(&s, 23, big, 300);
        xr_seed_rec(&s, 21, (const char *) alert_warn, 2);
        xr_seed_rec(&s, 23, big, 30);
        xr_seed_rec(&s, 22, "\0\0\0\0", 4); /* a HelloRequest */
        xr_seed_rec(&s, 23, big, 3);
        xr_seed_rec(&s, 21, (const char *) alert_fatal, 2);
        xr_seed_done(&s, dir, XR_SEED("valid-alert-handshake-fatal"));

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        xr_seed_rec(&s, 23, big, XR_REC_MAX_PLAIN);
        xr_seed_rec(&s, 23, big, 7);
        xr_seed_done(&s, dir, XR_SEED("valid-full-record"));

        xr_seed_start(&s, ch, 0, odd, sizeof(odd));
        xr_seed_rec(&s, 23, big, 50);
        size_t at = xr_seed_rec(&s, 23, big, 50);
        s.b[s.n - 3] ^= 0x20;
        xr_seed_done(&s, dir, XR_SEED("bad-mac-in-tag"));

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        at = xr_seed_rec(&s, 23, big, 50);
        s.b[at + XR_REC_HEADER + 1] ^= 1;
        xr_seed_done(&s, dir, XR_SEED("bad-mac-in-body"));

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        at = xr_seed_rec(&s, 23, big, 50);
        s.b[at] = 22; /* the type is authenticated */
        xr_seed_done(&s, dir, XR_SEED("bad-mac-type-changed"));

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        xr_seed_rec(&s, 23, big, 20);
        at = xr_seed_rec(&s, 23, big, 20);
        s.b[at + 2] = 1; /* TLS 1.0 */
        xr_seed_done(&s, dir, XR_SEED("bad-version"));

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        xr_seed_rec(&s, 23, big, 20);
        xr_seed_raw(&s, "\x14\x03\x03\x00\x01\x01", 6); /* change_cipher_spec */
        xr_seed_done(&s, dir, XR_SEED("bad-change-cipher-spec"));

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        xr_seed_raw(&s, "\x17\x03\x03\x48\x01", 5); /* 2^14 + 2048 + 1 */
        xr_seed_done(&s, dir, XR_SEED("bad-oversize"));

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        xr_seed_raw(&s, "\x17\x03\x03\x40\x19", 5); /* 2^14 + 25: too much plaintext */
        xr_seed_done(&s, dir, XR_SEED("bad-oversize-plaintext"));

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        xr_seed_raw(&s, "\x17\x03\x03\x00\x0f", 5); /* shorter than a tag */
        xr_seed_done(&s, dir, XR_SEED("bad-too-short"));

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        xr_seed_raw(&s, "\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x03\x03", 11); /* a ClientHello */
        xr_seed_done(&s, dir, XR_SEED("bad-plaintext-hello"));

        xr_seed_start(&s, ch, 0, whole, sizeof(whole));
        xr_seed_rec(&s, 23, big, 40);
        s.n -= 10; /* truncated: stays a partial record */
        xr_seed_done(&s, dir, XR_SEED("partial-record"));

        xr_seed_start(&s, ch, 1, odd, sizeof(odd));
        xr_seed_raw(&s, big, 5000);
        xr_seed_done(&s, dir, XR_SEED("roundtrip"));

        xr_seed_start(&s, ch, 1, NULL, 0);
        xr_seed_raw(&s, "GET / HTTP/1.1\r\n\r\n", 18);
        xr_seed_done(&s, dir, XR_SEED("roundtrip-bytewise"));
#undef XR_SEED
    }
    return 0;
}

#endif
