/*
 * fuzz_proto.c: libFuzzer target for the XRAY control-protocol codec
 * (src/common/proto.c), fed as a connection feeds it: frames back to back,
 * arriving in pieces, decoded from the front of what has arrived.
 *
 * The input is the byte stream itself (no prefix), so a seed is simply
 * frames as they travel.  It is decoded three times:
 *
 *   whole      the entire input at once, frame after frame using *used,
 *              until AGAIN or an error;
 *   bytewise   one byte at a time, decoding from the front of the
 *              unconsumed bytes after each one (every prefix of every
 *              frame is seen);
 *   chunked    in pieces of 1 to 8 bytes, now and then up to 1100, their
 *              sizes drawn from a generator seeded with a hash of the
 *              input (so a given input always splits the same way).
 *
 * Every decode call works on a copy allocated at exactly the length
 * passed, so the sanitizers see a read past len.  Checked on every call:
 * the status agrees with the header (AGAIN only while the header or the
 * body is incomplete, header errors only when the header says so, body
 * errors and OK only with the whole body there); *used is 0 unless OK,
 * and then is exactly the header's length; an error names its field.
 * For every decoded frame, encoding the message succeeds and gives back
 * exactly the bytes consumed (into a buffer of that exact size), and a
 * buffer one byte smaller is refused.  The bytewise and chunked feeds must
 * give the same frames, and end in the same status and reason, as the
 * whole input did.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define XR_FUZZ_MAX (1u << 16)

#define XR_FUZZ_CHECK(c)                                                                           \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_proto.c:%d: invariant failed: %s\n", __LINE__, #c);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The frames the whole input gave, and how it ended. */
typedef struct {
    size_t off[XR_FUZZ_MAX / XR_PROTO_HEADER + 1], len[XR_FUZZ_MAX / XR_PROTO_HEADER + 1];
    size_t n, end;
    xr_proto_status_t st;
    const char *why;
} xr_fuzz_ref_t;

static int xr_fuzz_header_ok(const uint8_t *p)
{
    size_t body = (size_t) p[2] << 8 | p[3];
    return body <= XR_PROTO_MAX_BODY && xr_proto_type_name(p[0])[0] != '?' && p[1] == 0;
}

/* Decode the frame at the front of p[0..n) as a caller would, with all
 * the checks above; p must be allocated at exactly n bytes (or end
 * where the input ends). */
static xr_proto_status_t xr_fuzz_decode(const uint8_t *p, size_t n, size_t *used, const char **why)
{
    xr_msg_t m;
    memset(&m, 0xa5, sizeof(m)); /* nothing may survive from before */
    *used = (size_t) -1;
    *why = "unset";
    xr_proto_status_t st = xr_proto_decode(p, n, &m, used, why);
    size_t body = n >= XR_PROTO_HEADER ? (size_t) p[2] << 8 | p[3] : 0;

    if (st != XR_PROTO_OK)
        XR_FUZZ_CHECK(*used == 0);
    switch (st) {
    case XR_PROTO_AGAIN:
        XR_FUZZ_CHECK(n < XR_PROTO_HEADER || (xr_fuzz_header_ok(p) && n < XR_PROTO_HEADER + body));
        return st;
    case XR_PROTO_E_TOO_BIG: XR_FUZZ_CHECK(n >= XR_PROTO_HEADER && body > XR_PROTO_MAX_BODY); break;
    case XR_PROTO_E_TYPE:
        XR_FUZZ_CHECK(n >= XR_PROTO_HEADER && xr_proto_type_name(p[0])[0] == '?');
        break;
    case XR_PROTO_E_FLAGS: XR_FUZZ_CHECK(n >= XR_PROTO_HEADER && p[1] != 0); break;
    case XR_PROTO_E_LENGTH:
    case XR_PROTO_E_FIELD:
        /* judged on the whole body, never on part of it */
        XR_FUZZ_CHECK(n >= XR_PROTO_HEADER && xr_fuzz_header_ok(p) && n >= XR_PROTO_HEADER + body);
        break;
    case XR_PROTO_OK: {
        XR_FUZZ_CHECK(n >= XR_PROTO_HEADER && xr_fuzz_header_ok(p));
        XR_FUZZ_CHECK(*used == XR_PROTO_HEADER + body && *used <= n);
        XR_FUZZ_CHECK((int) m.type == p[0]);
        /* canonical: encoding gives back exactly what was consumed */
        uint8_t *out = malloc(*used);
        XR_FUZZ_CHECK(out != NULL);
        XR_FUZZ_CHECK(xr_proto_encode(&m, out, *used) == *used);
        XR_FUZZ_CHECK(memcmp(out, p, *used) == 0);
        free(out);
        out = malloc(*used - 1); /* a frame is at least its header */
        XR_FUZZ_CHECK(out != NULL);
        XR_FUZZ_CHECK(xr_proto_encode(&m, out, *used - 1) == 0);
        free(out);
        return st;
    }
    default: XR_FUZZ_CHECK(0 && "unknown status");
    }
    XR_FUZZ_CHECK(*why != NULL && strcmp(*why, "unset") != 0 && (*why)[0] != '\0');
    return st;
}

/* The same, on an exact copy of p[0..n). */
static xr_proto_status_t xr_fuzz_decode_copy(const uint8_t *p, size_t n, size_t *used,
                                             const char **why)
{
    uint8_t *q = malloc(n > 0 ? n : 1);
    XR_FUZZ_CHECK(q != NULL);
    if (n > 0)
        memcpy(q, p, n);
    xr_proto_status_t st = xr_fuzz_decode(q, n, used, why);
    free(q);
    return st;
}

/* The reference: the whole input, frame after frame. */
static void xr_fuzz_whole(const uint8_t *s, size_t n, xr_fuzz_ref_t *ref)
{
    uint8_t *q = malloc(n > 0 ? n : 1);
    XR_FUZZ_CHECK(q != NULL);
    if (n > 0)
        memcpy(q, s, n);
    size_t pos = 0, used;
    ref->n = 0;
    for (;;) {
        /* the buffer ends where the input does */
        ref->st = xr_fuzz_decode(q + pos, n - pos, &used, &ref->why);
        if (ref->st != XR_PROTO_OK)
            break;
        ref->off[ref->n] = pos;
        ref->len[ref->n] = used;
        ref->n++;
        pos += used;
    }
    ref->end = pos;
    free(q);
}

typedef struct {
    uint64_t state; /* 0: one byte at a time */
} xr_fuzz_chunks_t;

static size_t xr_fuzz_chunk(xr_fuzz_chunks_t *c)
{
    if (c->state == 0)
        return 1;
    /* xorshift64 */
    c->state ^= c->state << 13;
    c->state ^= c->state >> 7;
    c->state ^= c->state << 17;
    uint64_t r = c->state >> 8;
    return r % 8 == 0 ? 1 + (size_t) (r >> 3) % 1100 : 1 + (size_t) (r >> 3) % 8;
}

/* Feed s[0..n) in chunks; the frames and the end must match ref. */
static void xr_fuzz_feed(const uint8_t *s, size_t n, const xr_fuzz_ref_t *ref,
                         xr_fuzz_chunks_t *chunks)
{
    static uint8_t buf[XR_FUZZ_MAX];
    size_t have = 0, fed = 0, k = 0;
    while (fed < n) {
        size_t c = xr_fuzz_chunk(chunks);
        if (c > n - fed)
            c = n - fed;
        memcpy(buf + have, s + fed, c);
        have += c;
        fed += c;
        for (;;) {
            size_t used;
            const char *why;
            xr_proto_status_t st = xr_fuzz_decode_copy(buf, have, &used, &why);
            if (st == XR_PROTO_AGAIN)
                break;
            if (st != XR_PROTO_OK) {
                /* the same frame fails the same way */
                XR_FUZZ_CHECK(st == ref->st && k == ref->n && fed - have == ref->end);
                XR_FUZZ_CHECK(strcmp(why, ref->why) == 0);
                return;
            }
            XR_FUZZ_CHECK(k < ref->n);
            XR_FUZZ_CHECK(fed - have == ref->off[k] && used == ref->len[k]);
            k++;
            memmove(buf, buf + used, have - used);
            have -= used;
        }
    }
    /* all of it fed: what is left is the partial frame the whole input
     * ended on */
    XR_FUZZ_CHECK(ref->st == XR_PROTO_AGAIN && k == ref->n && n - have == ref->end);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static xr_fuzz_ref_t ref;
    if (size > XR_FUZZ_MAX)
        return 0;
    xr_fuzz_whole(data, size, &ref);

    xr_fuzz_chunks_t chunks = {0};
    xr_fuzz_feed(data, size, &ref, &chunks);

    /* FNV-1a of the input picks the chunk sizes (never 0, the bytewise
     * marker) */
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 0x100000001b3u;
    chunks.state = h | 1;
    xr_fuzz_feed(data, size, &ref, &chunks);
    return 0;
}
