/* Integration-test harness: a minimal blocking HTTP/1.1 client over plain
 * sockets (one request per connection, "Connection: close"), for the admin
 * endpoints (/healthz, /readyz, /metrics) and nats-server monitoring. */
#ifndef HX_HTTP_H
#define HX_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A response. Strings are malloc'd and NUL-terminated; free with
 * hx_http_resp_free(). */
typedef struct hx_http_resp {
    int status;      /* HTTP status code, or -1 when there was no response */
    char *head;      /* status line and headers, up to the blank line */
    char *body;      /* body (chunked encoding removed) */
    size_t body_len; /* bytes in body, not counting the NUL */
} hx_http_resp;

/* GETs http://host:port/path (host NULL means 127.0.0.1) within timeout_ms
 * for the whole exchange. Returns the status code, or -1 on a connection
 * error, timeout or malformed response (hx_error() says which). When
 * body_out is not NULL and a status is returned, *body_out gets the
 * malloc'd, NUL-terminated body (caller frees). */
int hx_http_get(const char *host, int port, const char *path, int timeout_ms, char **body_out);

/* The value of the sample `name` (with its labels, e.g.
 * sluice_wrk_jobs_total{outcome="ok"}) in the Prometheus text at
 * 127.0.0.1:port/metrics, truncated to an integer; -1 when the page or the
 * sample is missing. */
long long hx_metric_get(int port, const char *name);

/* Sends method path with an optional body (NULL: none; sent with
 * Content-Length and Content-Type: application/json) and fills *resp. Returns
 * resp->status (-1 on failure, with every pointer in resp NULL). */
int hx_http_request(const char *host, int port, const char *method, const char *path,
                    const char *body, int timeout_ms, hx_http_resp *resp);

/* Like hx_http_request, plus extra request headers (each "Name: value\r\n",
 * NULL: none) sent after the standard ones. */
int hx_http_request_hdr(const char *host, int port, const char *method, const char *path,
                        const char *headers, const char *body, int timeout_ms, hx_http_resp *resp);

/* Frees what resp points at and zeroes it (the struct itself is the
 * caller's). NULL-safe. */
void hx_http_resp_free(hx_http_resp *resp);

/* Finds header name (case-insensitive) in a response head and copies its
 * value, trimmed, into out (truncated to len - 1). Returns false when the
 * header is absent. */
bool hx_http_header(const char *head, const char *name, char *out, size_t len);

/* Internals shared with hx_ws; deadlines are hx_now_ms() values. */

/* Writes all of buf to a non-blocking socket. 0, or -1 with hx_error(). */
int hx__io_write_all(int fd, const void *buf, size_t len, int64_t deadline);

/* Reads up to len bytes once data is available. Returns the count, 0 at
 * end of stream, -1 on error, -2 when the deadline passed first. */
ssize_t hx__io_read(int fd, void *buf, size_t len, int64_t deadline);

/* Reads from fd until the end of an HTTP head ("\r\n\r\n"), at most 64 KiB.
 * On success returns 0, *head is the malloc'd head (NUL-terminated, without
 * the blank line) and *extra / *extra_len the malloc'd bytes read past it
 * (possibly 0 bytes; caller frees both). -1 on error or timeout. */
int hx__http_read_head(int fd, int64_t deadline, char **head, char **extra, size_t *extra_len);

/* Parses the status code from "HTTP/1.1 200 OK"; -1 when malformed. */
int hx__http_status(const char *head);

#endif
