/*
 * fw.h: the firewall front door's own parts: its configuration and the
 * backends that drive a real firewall behind core/firewall.h.
 */
#ifndef XR_FW_H
#define XR_FW_H

#include "core/firewall.h"

/* What `firewall:` says (fw_door.c). */
typedef struct {
    char *backend;           /* "nftables" */
    char *table;             /* the table xrayd owns: inet <table> */
    char *mark_text;         /* the conntrack mark bits of admitted connections */
    uint32_t mark;           /* parsed */
    int64_t opening_timeout; /* ms an opening waits for its connection */
    int64_t tcp_state_timeout, udp_state_timeout; /* ms; 0: the kernel's */
    const void *node;
} xr_fw_conf_t;

/* A backend: start makes its table anew (whatever a crashed run left
 * goes), or with keep (a reload) keeps what is in it and makes only its
 * rules anew; the rest are core/firewall.h's operations; stop: the worker
 * exits. */
typedef struct {
    const char *name;
    int (*start)(const xr_fw_conf_t *conf, int keep, char *err, size_t errlen);
    int (*open)(const xr_fw_open_t *o, int64_t timeout_ms, char *err, size_t errlen);
    int (*remove)(const xr_fw_open_t *o, char *err, size_t errlen);
    int (*list)(xr_fw_entry_t *out, int max, char *err, size_t errlen);
    void (*stop)(void);
} xr_fw_backend_t;

extern const xr_fw_backend_t xr_fw_nft;

#endif
