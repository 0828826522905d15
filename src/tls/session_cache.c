/*
 * session_cache.c: a direct-mapped table of serialized sessions in an
 * anonymous shared mapping.  Each slot has a sequence counter: a writer
 * makes it odd while it copies (and skips a slot another writer holds),
 * a reader copies and retries or misses if the counter moved.  A worker
 * killed mid-write leaves one slot unusable, never a wrong session; a
 * cache miss only costs a full handshake.
 */
#include "core/xrayd.h"
#include "tls/session_cache.h"
#include "tls/tls.h"

#include <stdatomic.h>
#include <sys/mman.h>

#define XR_SCACHE_SLOTS 4096
#define XR_SCACHE_DATA  3072 /* a session with an ECDSA or RSA-2048 client certificate fits */

typedef struct {
    _Atomic uint32_t seq;
    uint32_t len;
    int64_t expires; /* wall ms */
    unsigned char id_len;
    unsigned char id[32];
    unsigned char data[XR_SCACHE_DATA];
} xr_scache_slot_t;

static xr_scache_slot_t *xr_scache;

int xr_session_cache_init(void)
{
    if (xr_scache != NULL)
        return XR_OK;
    void *p = mmap(NULL, sizeof(xr_scache_slot_t) * XR_SCACHE_SLOTS, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return XR_ERROR;
    xr_scache = p;
    return XR_OK;
}

static xr_scache_slot_t *xr_scache_slot(const unsigned char *id, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a: ids are random already */
    for (size_t i = 0; i < len; i++)
        h = (h ^ id[i]) * 16777619u;
    return &xr_scache[h % XR_SCACHE_SLOTS];
}

int xr_session_cache_set(void *p, const mbedtls_ssl_session *session)
{
    const xr_tls_conf_t *t = p;
    if (xr_scache == NULL || session->id_len == 0 || session->id_len > 32)
        return 0;
    xr_scache_slot_t *s = xr_scache_slot(session->id, session->id_len);
    uint32_t seq = atomic_load(&s->seq);
    if ((seq & 1) || !atomic_compare_exchange_strong(&s->seq, &seq, seq + 1))
        return 0; /* another worker is writing it: skip */
    size_t len = 0;
    int ok = mbedtls_ssl_session_save(session, s->data, sizeof(s->data), &len) == 0;
    s->len = ok ? (uint32_t) len : 0;
    s->id_len = ok ? (unsigned char) session->id_len : 0;
    memcpy(s->id, session->id, session->id_len);
    s->expires = xr_wall_ms() + t->session_timeout;
    atomic_store(&s->seq, seq + 2);
    return 0;
}

int xr_session_cache_get(void *p, mbedtls_ssl_session *session)
{
    if (xr_scache == NULL || session->id_len == 0 || session->id_len > 32)
        return 1;
    xr_scache_slot_t *s = xr_scache_slot(session->id, session->id_len);
    static unsigned char buf[XR_SCACHE_DATA];
    size_t len = 0;
    for (int tries = 0;; tries++) {
        uint32_t seq = atomic_load(&s->seq);
        if (seq & 1 || tries == 3)
            return 1;
        if (s->id_len != session->id_len || memcmp(s->id, session->id, s->id_len) != 0 ||
            s->len == 0 || s->len > sizeof(buf) || s->expires < xr_wall_ms())
            return 1;
        len = s->len;
        memcpy(buf, s->data, len);
        if (atomic_load(&s->seq) == seq)
            break;
    }
    /* The blob holds the whole session, id included. */
    mbedtls_ssl_session_free(session);
    mbedtls_ssl_session_init(session);
    int rc = mbedtls_ssl_session_load(session, buf, len);
    mbedtls_platform_zeroize(buf, len);
    return rc == 0 ? 0 : 1;
}
