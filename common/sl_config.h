/* Configuration from environment variables, each also a command-line flag.
 * A tier describes its options in a table of sl_cfg_opt; sl_config_load()
 * applies defaults, then the environment, then the flags (flags win), and
 * validates each value, naming the variable in any error. */
#ifndef SL_CONFIG_H
#define SL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sl_status.h"
#include "sl_subject.h"

typedef enum sl_cfg_type {
    SL_CFG_STR,  /* dst is char **: a malloc'd copy, or NULL when unset */
    SL_CFG_INT,  /* dst is int64_t *, checked against [min, max] */
    SL_CFG_BOOL, /* dst is bool *: 1/0, true/false, yes/no, on/off */
    SL_CFG_ADDR, /* dst is char **: "host:port" with a port in 1..65535 */
    SL_CFG_SIZE, /* dst is int64_t *: bytes, with an optional K, M, G or T suffix
                    (binary: 1K = 1024; "KiB" and "KB" alike), checked against [min, max] */
} sl_cfg_type;

typedef struct sl_cfg_opt {
    const char *env;  /* "SLUICE_NATS_URL" */
    const char *flag; /* "nats-url", given as --nats-url=V or --nats-url V */
    sl_cfg_type type;
    const char *def; /* default as text, or NULL for none */
    const char *help;
    void *dst;
    int64_t min, max; /* SL_CFG_INT bounds (both 0: any value) */
    bool required;    /* must end up non-empty */
    bool secret;      /* never printed */
} sl_cfg_opt;

/* Options every tier has. */
typedef struct sl_common_cfg {
    char *nats_url;
    char *nats_user;
    char *nats_password;
    char *admin_listen;
    char *log_level;
    int64_t stream_replicas;
    int64_t tenant_queue_max;
    int64_t out_max_age_s;
    int64_t out_history;
    int64_t resume_window_s;
    int64_t in_max_bytes;   /* MaxBytes of SLUICE_IN */
    int64_t work_max_bytes; /* MaxBytes of SLUICE_WORK */
    int64_t out_max_bytes;  /* MaxBytes of SLUICE_OUT */
    int64_t kv_max_bytes;   /* MaxBytes of each KV bucket */
    int64_t cancel_ttl_s;   /* lifetime of a cancel marker (bucket sluice_cancel) */
} sl_common_cfg;

#define SL_COMMON_OPTS_N 15

/* Bounds of the storage limits (SLUICE_*_MAX_BYTES): at least 1 MiB (the
 * largest message NATS takes by default), at most 1 PiB. */
#define SL_MAX_BYTES_MIN (1LL << 20)
#define SL_MAX_BYTES_MAX (1LL << 50)

/* Fills out[0..SL_COMMON_OPTS_N) with the common options writing into c;
 * admin_default is the tier's default admin address. */
void sl_common_opts(sl_cfg_opt *out, sl_common_cfg *c, const char *admin_default);

/* Loads every option. Returns SL_OK; or SL_ERR_INVAL with a message naming
 * the variable or flag in err; *help is set when --help/-h was given (the
 * caller prints sl_config_usage and exits 0). On failure, values already
 * set stay owned by the table: call sl_config_free() in every case. */
sl_status sl_config_load(const sl_cfg_opt *opts, size_t n, int argc, char **argv, bool *help,
                         char *err, size_t errlen);

/* Prints every option with its variable, flag, default and help. */
void sl_config_usage(FILE *f, const char *prog, const char *about, const sl_cfg_opt *opts,
                     size_t n);

/* Frees the strings the table points at and NULLs them. */
void sl_config_free(const sl_cfg_opt *opts, size_t n);

/* Strict integer parse of the whole string: SL_ERR_INVAL otherwise. */
sl_status sl_parse_int(const char *s, int64_t *out);

/* Strict parse of the whole string as an unsigned decimal (digits only,
 * no sign or blanks), such as a stream sequence from a NATS header.
 * SL_ERR_INVAL when malformed or above UINT64_MAX; *out untouched then. */
sl_status sl_parse_u64(const char *s, uint64_t *out);

/* Strict parse of a byte size: digits, then optionally K, M, G or T (any
 * case, binary multiples), optionally followed by "iB" or "B". SL_ERR_INVAL
 * when malformed or when it overflows int64_t. */
sl_status sl_parse_size(const char *s, int64_t *out);

/* Splits "host:port" (host may be empty, meaning all interfaces); host is
 * written to hostbuf (NUL-terminated). SL_ERR_INVAL when malformed. */
sl_status sl_parse_addr(const char *s, char *hostbuf, size_t hostlen, int *port);

/* One item of a per-tenant list such as SLUICE_TENANT_WEIGHTS or
 * SLUICE_TENANT_QUOTAS. */
typedef struct sl_tenant_value {
    char tenant[SL_ID_MAX + 1];
    int64_t value;
} sl_tenant_value;

/* Parses "tenantA=N,tenantB=M": no spaces, no empty items, each tenant a
 * valid id at most once, each value decimal digits in [min, max], at most
 * max_items items; "" and NULL give none. what names the value in the
 * messages ("weight", "tokens"). Returns SL_OK with a malloc'd array in
 * *out (NULL when empty; the caller frees it) and its length in *n;
 * SL_ERR_INVAL with a message in err naming the item, SL_ERR_NOMEM; on
 * failure *out is NULL and *n 0. */
sl_status sl_tenant_values_parse(const char *spec, const char *what, int64_t min, int64_t max,
                                 size_t max_items, sl_tenant_value **out, size_t *n, char *err,
                                 size_t errlen);

#endif
