/*
 * xrayd_module.h: the one public header for xrayd filter modules.
 *
 * A module is a shared object that exports one symbol, `xr_module_entry`,
 * pointing at an xr_module_t filled with XR_MODULE_HEAD.  The loader
 * compares the ABI version and build signature and refuses a mismatch by
 * name.  Built-in modules (log, signature) use exactly this header.
 *
 * Lifetimes:
 *   - a module's per-instance configuration (conf_size bytes) lives as long
 *     as the configuration generation that declared it; strings set by the
 *     directive framework live as long, too;
 *   - per-relay state (state_size bytes, zeroed) lives from open to close.
 */
#ifndef XRAYD_MODULE_H
#define XRAYD_MODULE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* 2: XR_FILTER_ANSWER; a session's record (xr_record_t) replaced the HTTP
 * proxy's own type. */
#define XR_MODULE_ABI 2

/* The build signature covers the layouts a module reads directly. */
#define XR__STR2(x) #x
#define XR__STR(x)  XR__STR2(x)
#define XR_BUILD_SIGNATURE                                                                         \
    "xrayd-abi" XR__STR(XR_MODULE_ABI) "/ptr" XR__STR(__SIZEOF_POINTER__) "/long" XR__STR(         \
        __SIZEOF_LONG__)

/* Return codes shared by the core and modules. */
#define XR_OK       0
#define XR_ERROR    -1
#define XR_AGAIN    -2
#define XR_DECLINED -3

/* Results of a data hook. */
typedef enum {
    XR_FILTER_PASS = 0, /* forward the (possibly modified) chunk */
    XR_FILTER_HOLD,     /* keep these bytes; call again with more appended */
    XR_FILTER_DROP,     /* discard the chunk silently */
    XR_FILTER_CLOSE,    /* close the relay; set s->close_reason first */
    /* Answer the peer that sent this chunk and close: the hook replaced
     * the chunk's bytes with the answer (len <= cap).  The answer goes
     * back after what was already on its way there, the far side gets
     * what passed before this chunk, then both get a FIN.  Set
     * s->close_reason first. */
    XR_FILTER_ANSWER
} xr_filter_rc_t;

/* Directions of a relay. */
#define XR_DIR_UP   0 /* client -> upstream */
#define XR_DIR_DOWN 1 /* upstream -> client */

/*
 * What a module may know of a relay.  Embedded in the core's relay; read
 * only, except close_reason, which a filter sets before it returns
 * XR_FILTER_CLOSE or denies in open.
 */
typedef struct xr_session_s {
    uint64_t id;          /* connection id, as in the error log "*id" */
    const char *listener; /* the relay block's name */
    struct sockaddr_storage client;
    struct sockaddr_storage local;    /* where the client connected to */
    struct sockaddr_storage upstream; /* family 0 until chosen */
    const char *identity;             /* peer certificate identity or NULL */
    int64_t start_ms;                 /* wall clock, ms since the epoch */
    int64_t end_ms;                   /* set before close/log hooks */
    /* Byte counters per direction (XR_DIR_UP, XR_DIR_DOWN). */
    uint64_t read_total[2];
    uint64_t written_total[2];
    char close_reason[96];
    void *_core; /* the core's relay; do not touch */
    /* What a front door says of one exchange inside the connection, for
     * log hooks (an HTTP proxy calls them once per request, with its
     * method, host, status ...), or NULL. */
    const struct xr_record_s *record;
} xr_session_t;

/* One named value of a record. */
typedef enum { XR_FIELD_STR = 1, XR_FIELD_INT, XR_FIELD_UINT, XR_FIELD_BOOL } xr_field_type_t;

typedef struct {
    const char *name;
    xr_field_type_t type;
    const char *str; /* XR_FIELD_STR: NUL-terminated, or NULL (no value) */
    int64_t i;       /* XR_FIELD_INT, XR_FIELD_BOOL (0 or 1) */
    uint64_t u;      /* XR_FIELD_UINT */
} xr_field_t;

/* A front door's record: what kind of exchange ("http"), and its fields
 * in order. */
typedef struct xr_record_s {
    const char *kind;
    const xr_field_t *fields;
    size_t nfields;
} xr_record_t;

/* A chunk of cleartext handed to a data hook.  The hook may rewrite
 * data[0..len) in place and change len up to cap. */
typedef struct {
    unsigned char *data;
    size_t len;
    size_t cap;
} xr_chunk_t;

/* ---- configuration ------------------------------------------------------ */

typedef struct xr_conf_s xr_conf_t; /* parsing context; opaque */
typedef struct xr_node_s xr_node_t; /* one YAML node with its position */

typedef enum { XR_NODE_SCALAR = 1, XR_NODE_SEQ, XR_NODE_MAP } xr_node_type_t;

typedef enum {
    XR_T_FLAG = 1,  /* on/off, yes/no, true/false -> int */
    XR_T_INT,       /* integer within [min, max] -> int64_t */
    XR_T_SIZE,      /* 64k, 1m, 4096 -> int64_t bytes */
    XR_T_DURATION,  /* 500ms, 5s, 2m, 1h -> int64_t milliseconds */
    XR_T_STRING,    /* -> char * */
    XR_T_PATH,      /* -> char *, made absolute against the file's dir */
    XR_T_ENUM,      /* one of enums[] -> int index */
    XR_T_ADDR,      /* host:port -> xr_addr_t */
    XR_T_ADDR_LIST, /* one address or a sequence -> xr_addr_list_t */
    XR_T_STR_LIST,  /* one string or a sequence -> xr_str_list_t */
    XR_T_CUSTOM     /* set() does everything */
} xr_dir_type_t;

/* Where a directive may appear. */
#define XR_CTX_MAIN   0x01
#define XR_CTX_RELAY  0x02
#define XR_CTX_FILTER 0x04

/* Directive flags. */
#define XR_DIR_REQUIRED 0x01

typedef struct {
    struct sockaddr_storage sa;
    socklen_t len;
    char text[64]; /* as the user wrote it, normalised */
} xr_addr_t;

typedef struct {
    size_t n;
    xr_addr_t *items;
} xr_addr_list_t;

typedef struct {
    size_t n;
    char **items;
    size_t *lens; /* byte lengths (items are NUL-terminated as well) */
} xr_str_list_t;

typedef struct xr_directive_s xr_directive_t;

/* A custom setter: parse node into the slot at conf + d->offset.  Returns
 * XR_OK, or XR_ERROR after xr_conf_error(). */
typedef int (*xr_dir_set_cb)(xr_conf_t *cf, const xr_node_t *node, void *conf,
                             const xr_directive_t *d);

struct xr_directive_s {
    const char *name;
    unsigned contexts; /* XR_CTX_* where it may appear */
    xr_dir_type_t type;
    size_t offset;    /* slot in the block's conf struct */
    const char *def;  /* default in config syntax, or NULL */
    int64_t min, max; /* bounds for INT, SIZE, DURATION (0,0 = none) */
    /* NULL-terminated, for XR_T_ENUM; for XR_T_CUSTOM, enums[0] may name
     * the value's shape for the docs ("relay blocks"). */
    const char *const *enums;
    xr_dir_set_cb set; /* XR_T_CUSTOM only */
    unsigned flags;    /* XR_DIR_* */
    const char *doc;   /* one line, for --list-directives and docs */
};

#define XR_DIRECTIVES_END                                                                          \
    {                                                                                              \
        NULL, 0, 0, 0, NULL, 0, 0, NULL, NULL, 0, NULL                                             \
    }

/* Node accessors: modules never see libyaml. */
xr_node_type_t xr_node_type(const xr_node_t *n);
const char *xr_node_str(const xr_node_t *n); /* scalar text or NULL */
/* Scalar length in bytes: a quoted scalar may hold "\0". */
size_t xr_node_slen(const xr_node_t *n);
size_t xr_node_len(const xr_node_t *n);                       /* items or pairs */
const xr_node_t *xr_node_item(const xr_node_t *n, size_t i);  /* sequence */
const xr_node_t *xr_node_key(const xr_node_t *n, size_t i);   /* mapping */
const xr_node_t *xr_node_value(const xr_node_t *n, size_t i); /* mapping */
const xr_node_t *xr_node_get(const xr_node_t *map, const char *key);

/* Report an error at a node: "file:line:col: "key": message".  Always
 * returns XR_ERROR so callers can `return xr_conf_error(...)`. */
int xr_conf_error(xr_conf_t *cf, const xr_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Memory that lives as long as the configuration generation. */
void *xr_conf_alloc(xr_conf_t *cf, size_t size); /* zeroed */
char *xr_conf_strdup(xr_conf_t *cf, const char *s, size_t len);

/* Typed parsers (XR_OK or XR_ERROR with the error reported at n). */
int xr_conf_parse_size(xr_conf_t *cf, const xr_node_t *n, int64_t *out);
int xr_conf_parse_duration(xr_conf_t *cf, const xr_node_t *n, int64_t *out);
/* Resolve a path against the directory of the file that holds n. */
char *xr_conf_path(xr_conf_t *cf, const xr_node_t *n, const char *path);
/* 1 when the configuration is only being checked for syntax (the fuzz
 * target): init_conf must then not open or create files. */
int xr_conf_dry_run(const xr_conf_t *cf);

/* ---- logging ------------------------------------------------------------ */

typedef enum {
    XR_LOG_EMERG = 0,
    XR_LOG_ALERT,
    XR_LOG_CRIT,
    XR_LOG_ERR,
    XR_LOG_WARN,
    XR_LOG_NOTICE,
    XR_LOG_INFO,
    XR_LOG_DEBUG
} xr_log_level_t;

/* Write one line to the error log; s may be NULL, else its id and action
 * are added. */
void xr_log_session(xr_log_level_t level, const xr_session_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Format an address as "1.2.3.4:80" or "[::1]:80" into buf (>= 64 bytes). */
const char *xr_addr_format(const struct sockaddr_storage *sa, char *buf, size_t size);

/* ---- the module --------------------------------------------------------- */

typedef struct xr_module_s xr_module_t;

struct xr_module_s {
    uint32_t abi;          /* XR_MODULE_ABI at build time */
    const char *signature; /* XR_BUILD_SIGNATURE at build time */
    const char *name;      /* as written in `filters:` */
    const char *version;

    const xr_directive_t *directives; /* context XR_CTX_FILTER */
    size_t conf_size;

    /* After directives are set: validate, open files.  XR_OK or XR_ERROR
     * after xr_conf_error(cf, node, ...). node is the filter's entry. */
    int (*init_conf)(xr_conf_t *cf, const xr_node_t *node, void *conf);
    /* When the generation is dropped (in every process holding it). */
    void (*free_conf)(void *conf);
    /* In each worker, after fork / before exit. */
    int (*init_worker)(void *conf);
    void (*exit_worker)(void *conf);
    /* SIGUSR1: reopen files. */
    void (*reopen)(void *conf);

    size_t state_size; /* per-relay state, zeroed, handed to the hooks */

    /* A new relay: XR_OK, or XR_DECLINED to deny (set s->close_reason). */
    int (*open)(void *conf, void *state, xr_session_t *s);
    /* Bytes crossing in direction dir (XR_DIR_UP or XR_DIR_DOWN). */
    xr_filter_rc_t (*data)(void *conf, void *state, xr_session_t *s, int dir, xr_chunk_t *c);
    /* End of an opened relay; counters are final. */
    void (*close)(void *conf, void *state, xr_session_t *s);
    /* After every close hook has run: write a record. */
    void (*log)(void *conf, void *state, xr_session_t *s);

    void *spare[8]; /* room to grow without breaking the ABI */
};

/* Start every module definition with this: it fills abi and signature. */
#define XR_MODULE_HEAD XR_MODULE_ABI, XR_BUILD_SIGNATURE

/* A dynamic module exports its definition under one known name; compiled
 * into the daemon, the same source exports nothing extra. */
#ifdef XR_DYNAMIC_MODULE
#define XR_MODULE_EXPORT(m) xr_module_t *xr_module_entry = &(m)
#else
#define XR_MODULE_EXPORT(m) extern int xr__module_export_unused
#endif

#define XR_MODULE_ENTRY_SYMBOL "xr_module_entry"

#endif /* XRAYD_MODULE_H */
