/* Small helpers for the bench: see sb_util.h. */
#include "sb_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

uint64_t sb_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t sb_wall_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

size_t sb_b64url(char *out, size_t cap, const uint8_t *in, size_t len)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    size_t i;

    for (i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        size_t rem = len - i;
        if (rem > 1)
            v |= (uint32_t)in[i + 1] << 8;
        if (rem > 2)
            v |= in[i + 2];
        if (o + 4 >= cap)
            return 0;
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        if (rem > 1)
            out[o++] = tbl[(v >> 6) & 63];
        if (rem > 2)
            out[o++] = tbl[v & 63];
    }
    if (o >= cap)
        return 0;
    out[o] = '\0';
    return o;
}

sl_status sb_jwt_mint(char *out, size_t cap, const char *secret, const char *tenant,
                      const char *sub, long ttl_s)
{
    return sb_jwt_mint_at(out, cap, secret, tenant, sub, (long long)sb_wall_s() + ttl_s);
}

sl_status sb_jwt_mint_at(char *out, size_t cap, const char *secret, const char *tenant,
                         const char *sub, long long exp)
{
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    char claims[512];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    size_t n;
    size_t m;
    int c;

    if (out == NULL || secret == NULL || tenant == NULL || sub == NULL)
        return SL_ERR_INVAL;
    c = snprintf(claims, sizeof(claims), "{\"sub\":\"%s\",\"tenant\":\"%s\",\"exp\":%lld}", sub,
                 tenant, exp);
    if (c < 0 || (size_t)c >= sizeof(claims))
        return SL_ERR_INVAL;
    n = sb_b64url(out, cap, (const uint8_t *)header, sizeof(header) - 1);
    if (n == 0 || n + 2 >= cap)
        return SL_ERR_INVAL;
    out[n++] = '.';
    m = sb_b64url(out + n, cap - n, (const uint8_t *)claims, (size_t)c);
    if (m == 0)
        return SL_ERR_INVAL;
    n += m;
    if (HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)out, n, mac,
             &mlen) == NULL)
        return SL_ERR_INTERNAL;
    if (n + 2 >= cap)
        return SL_ERR_INVAL;
    out[n++] = '.';
    m = sb_b64url(out + n, cap - n, mac, mlen);
    if (m == 0)
        return SL_ERR_INVAL;
    return SL_OK;
}

sl_status sb_proc_sample(pid_t pid, uint64_t *rss_kib, double *cpu_s)
{
    char path[64];
    char buf[4096];
    FILE *f = NULL;
    unsigned long long rss = 0;
    unsigned long long ut = 0;
    unsigned long long st = 0;
    int have_rss = 0;
    const char *p;
    size_t n;
    sl_status rc = SL_OK;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return SL_ERR_NOTFOUND;
    while (fgets(buf, sizeof(buf), f)) {
        if (sscanf(buf, "VmRSS: %llu kB", &rss) == 1) {
            have_rss = 1;
            break;
        }
    }
    fclose(f);
    f = NULL;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return SL_ERR_NOTFOUND;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: fields restart after
     * the last ')'. utime and stime are fields 14 and 15. */
    p = strrchr(buf, ')');
    if (!have_rss || p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) {
        rc = SL_ERR_IO;
        goto cleanup;
    }
    *rss_kib = rss;
    *cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
cleanup:
    fclose(f);
    return rc;
}

int sb_free_port(void)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;

    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}
