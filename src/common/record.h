/*
 * record.h: xrayd's TLS 1.2 record layer for application data (DESIGN
 * "TLS").  mbedTLS does the handshake; its key export callback hands over
 * the key block, the sequence numbers are read from the finished context,
 * and from then on records are sealed and opened here with libsodium (or,
 * for AES-GCM on CPUs with VAES, with gcm.c):
 * AES-256-GCM per RFC 5288 (nonce = 4-byte salt || 8-byte explicit nonce
 * sent in the record, overhead 24 bytes) and ChaCha20-Poly1305 per RFC
 * 7905 (nonce = 12-byte IV XOR the sequence number, overhead 16 bytes).
 * AAD is seq(8) || type(1) || 03 03 || plaintext length(2).
 *
 * Nothing here allocates on the data path or does I/O: the caller owns
 * every buffer.
 */
#ifndef XR_RECORD_H
#define XR_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define XR_REC_HEADER         5
#define XR_REC_MAX_PLAIN      16384          /* 2^14 */
#define XR_REC_MAX_CIPHER     (16384 + 2048) /* RFC 5246 6.2.3 */
#define XR_REC_TYPE_ALERT     21
#define XR_REC_TYPE_HANDSHAKE 22
#define XR_REC_TYPE_APPDATA   23

typedef enum { XR_AEAD_NONE = 0, XR_AEAD_AES256GCM, XR_AEAD_CHACHA20 } xr_aead_t;

/* One direction's keys and sequence number. */
typedef struct {
    uint64_t seq;
    unsigned char key[32];
    unsigned char iv[12];    /* GCM: 4-byte salt then zeros; ChaCha: 12 bytes */
    void *gcm;               /* libsodium precomputed AES-GCM state (aligned), or NULL */
    struct xr_gcm_key *vgcm; /* or the vector implementation's (gcm.h) */
} xr_rec_dir_t;

typedef struct xr_rec_s {
    xr_aead_t aead;
    size_t overhead; /* bytes a record adds to its plaintext (header included) */
    xr_rec_dir_t rx, tx;
} xr_rec_t;

typedef enum {
    XR_REC_OK = 0,       /* records opened; more may follow once read */
    XR_REC_CLOSE_NOTIFY, /* the peer sent close_notify (plaintext before it is returned) */
    XR_REC_ALERT,        /* the peer sent another alert: alert[0..1] = level, description */
    XR_REC_HANDSHAKE,    /* a handshake record (renegotiation): refuse it */
    XR_REC_ERR_MAC,      /* bad record MAC: answer bad_record_mac (20) and close */
    XR_REC_ERR_OVERSIZE, /* record longer than XR_REC_MAX_CIPHER: record_overflow (22) */
    XR_REC_ERR_FORMAT    /* bad version, type, or length: decode_error (50) */
} xr_rec_status_t;

/* The AEAD of a TLS 1.2 cipher suite (its IANA number, as
 * mbedtls_ssl_get_ciphersuite_id gives it): the ECDHE suites with
 * AES-256-GCM or ChaCha20-Poly1305, else XR_AEAD_NONE. */
xr_aead_t xr_rec_suite_aead(int suite);
/* For mbedTLS's key export hook: an AEAD suite's key block (no MAC key,
 * keys of 32 bytes at most, IVs of 12) into to[2 * 32 + 2 * 12] with its
 * lengths: 1, or 0 for a suite the record layer does not take. */
int xr_rec_keyblock(unsigned char *to, size_t *to_keylen, size_t *to_ivlen, const unsigned char *kb,
                    size_t maclen, size_t keylen, size_t ivlen);
/* A sequence number as mbedTLS keeps it (8 bytes, big endian). */
uint64_t xr_rec_seq(const unsigned char *ctr);

/* Is this AEAD usable on this CPU (AES-GCM needs AES-NI and PCLMUL)? */
int xr_rec_available(xr_aead_t aead);

/* Set up from mbedTLS's key block: client write key at 0, server write
 * key at keylen, client IV at 2*keylen, server IV at 2*keylen + ivlen
 * (keylen 32; ivlen 4 for GCM, 12 for ChaCha).  is_server picks which
 * half is tx.  Returns 0, or -1 if the suite or lengths are not supported
 * or the AEAD is unavailable.  The caller wipes its copy of the key block. */
int xr_rec_init(xr_rec_t *r, xr_aead_t aead, int is_server, const unsigned char *keyblock,
                size_t keylen, size_t ivlen, uint64_t rx_seq, uint64_t tx_seq);
/* Wipe keys and free the precomputed state.  Safe on a zeroed struct. */
void xr_rec_free(xr_rec_t *r);

/* A record layer as bytes, to carry it to another process (a connection's
 * snapshot): the suite, and each direction's key, IV and next sequence
 * number.  As secret as the keys: wipe it when done. */
typedef struct {
    uint32_t aead; /* xr_aead_t */
    uint32_t pad;
    struct {
        uint64_t seq;
        unsigned char key[32];
        unsigned char iv[12];
        unsigned char pad[4];
    } rx, tx;
} xr_rec_state_t;

void xr_rec_export(const xr_rec_t *r, xr_rec_state_t *st);
/* Rebuild r from st.  0, or -1 if the AEAD is unknown or unavailable. */
int xr_rec_import(xr_rec_t *r, const xr_rec_state_t *st);

/* Seal plaintext in[0..len) as records of `type` into out[0..cap).  Each
 * record carries at most XR_REC_MAX_PLAIN bytes; as many whole records as
 * fit are written (a record is never split across calls).  Returns the
 * bytes written to out and sets *consumed to the plaintext bytes used
 * (0 if not even one byte's record fits).  in and out must not overlap. */
size_t xr_rec_seal(xr_rec_t *r, uint8_t type, const unsigned char *in, size_t len,
                   unsigned char *out, size_t cap, size_t *consumed);

/* Open the complete records at the start of buf[0..len), in place: the
 * plaintext of every application-data record is moved to the front of buf
 * so that buf[0..*plain) is the cleartext, in order.  *used is the number
 * of input bytes consumed (whole records only: a trailing partial record
 * stays at buf[*used..len) untouched - the caller keeps it and calls again
 * with more bytes appended).  Stops at the first record that is not
 * application data and reports it (its bytes are counted in *used).  On an
 * error status *plain still holds the cleartext opened before the bad
 * record, which the caller may deliver. */
xr_rec_status_t xr_rec_open(xr_rec_t *r, unsigned char *buf, size_t len, size_t *plain,
                            size_t *used, uint8_t alert[2]);

/* The same, out of place: the cleartext of the application-data records
 * at in[0..len) goes to to[0..cap), in[] is left as it is.  Stops, with
 * XR_REC_OK, at a partial record, at a record that is not application
 * data (xr_rec_open deals with those), or at one whose cleartext would
 * not fit; *plain and *used say how far it got.  XR_REC_ERR_* as
 * xr_rec_open, with the cleartext before the bad record delivered. */
xr_rec_status_t xr_rec_open_to(xr_rec_t *r, const unsigned char *in, size_t len, unsigned char *to,
                               size_t cap, size_t *plain, size_t *used);

/* Seal an alert (level 1 warning / 2 fatal, description) into out; returns
 * its length, or 0 if cap is too small. */
size_t xr_rec_alert(xr_rec_t *r, uint8_t level, uint8_t desc, unsigned char *out, size_t cap);

#endif
