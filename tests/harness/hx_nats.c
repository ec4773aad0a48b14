#include "hx_nats.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hx_http.h"
#include "hx_port.h"
#include "hx_util.h"

#define HX_NATS_MAX_NODES 9

typedef struct hx__node {
    int port, mport, wsport, cport;
    char *url;
    char *conf_path;
    char *log_path;
    hx_proc *proc;
} hx__node;

struct hx_nats {
    char *dir;
    bool own_dir;
    int nodes;
    int ready_timeout_ms;
    char *url;
    hx__node node[HX_NATS_MAX_NODES];
};

static bool hx__node_ok(const hx_nats *n, int node)
{
    return n != NULL && node >= 0 && node < n->nodes;
}

static sl_status hx__write_conf(hx_nats *n, int i, const hx_nats_opts *o)
{
    hx__node *nd = &n->node[i];
    char *routes = hx_strf("%s", "");
    for (int j = 0; j < n->nodes; j++) {
        char *r = hx_strf("%s%snats-route://127.0.0.1:%d", routes, j ? ", " : "", n->node[j].cport);
        free(routes);
        routes = r;
    }
    char *ws = o->websocket
                   ? hx_strf("websocket { host: 127.0.0.1, port: %d, no_tls: true }\n", nd->wsport)
                   : hx_strf("%s", "");
    char *cl = n->nodes > 1 ? hx_strf("cluster { name: hx, listen: 127.0.0.1:%d, routes: [%s] }\n",
                                      nd->cport, routes)
                            : hx_strf("%s", "");
    char *conf =
        hx_strf("# written by the Sluice test harness\n"
                "server_name: hx-n%d\n"
                "listen: 127.0.0.1:%d\n"
                "http: 127.0.0.1:%d\n"
                "jetstream { store_dir: \"%s/nats-%d\" }\n"
                "%s%s%s\n",
                i, nd->port, nd->mport, n->dir, i, ws, cl, o->extra_conf ? o->extra_conf : "");
    sl_status st = hx_file_write(nd->conf_path, conf);
    free(routes);
    free(ws);
    free(cl);
    free(conf);
    return st;
}

static void hx__node_failed(hx_nats *n, int node)
{
    char title[64];
    snprintf(title, sizeof title, "nats-server node %d", node);
    hx_print_tail(stderr, title, n->node[node].log_path, 4096);
}

sl_status hx_nats_wait_ready(hx_nats *n, int node, int timeout_ms)
{
    if (!hx__node_ok(n, node))
        return SL_ERR_INVAL;
    hx__node *nd = &n->node[node];
    int64_t deadline = hx_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int last = -1, nap = 5;
    bool tcp = false;
    for (int i = 0; i < 100000; i++) {
        if (!hx_proc_alive(nd->proc)) {
            int status = 0;
            char sbuf[64];
            hx_proc_exited(nd->proc, &status);
            hx_set_error("nats-server node %d exited (%s) before it was ready (log %s)", node,
                         hx_proc_status_str(status, sbuf, sizeof sbuf), nd->log_path);
            return SL_ERR_IO;
        }
        int left = (int)(deadline - hx_now_ms());
        if (left <= 0)
            break;
        if (!tcp) {
            int fd = hx_tcp_connect(NULL, nd->port, left < 500 ? left : 500);
            if (fd >= 0) {
                close(fd);
                tcp = true;
            }
        }
        if (tcp) {
            left = (int)(deadline - hx_now_ms());
            last = hx_http_get(NULL, nd->mport, "/healthz",
                               left < 2000 ? (left > 0 ? left : 1) : 2000, NULL);
            if (last == 200)
                return SL_OK;
        }
        left = (int)(deadline - hx_now_ms());
        hx_sleep_ms(nap < left ? nap : left);
        if (nap < 50)
            nap *= 2;
    }
    hx_set_error("nats-server node %d (port %d) not ready after %d ms (tcp %s, last /healthz %d)",
                 node, nd->port, timeout_ms, tcp ? "ok" : "refused", last);
    return SL_ERR_TIMEOUT;
}

static sl_status hx__spawn_node(hx_nats *n, int i)
{
    hx__node *nd = &n->node[i];
    const char *prog = getenv("HX_NATS_SERVER");
    const char *argv[] = {prog && *prog ? prog : "nats-server", "-c", nd->conf_path, NULL};
    char name[32];
    snprintf(name, sizeof name, "nats-%d", i);
    return hx_proc_spawn(&nd->proc, name, argv, NULL, nd->log_path);
}

sl_status hx_nats_start(hx_nats **out, const char *dir, const hx_nats_opts *opts)
{
    hx_nats_opts defaults = {0};
    const hx_nats_opts *o = opts ? opts : &defaults;
    sl_status st = SL_ERR_NOMEM;
    hx_nats *n = calloc(1, sizeof *n);
    if (n == NULL)
        return SL_ERR_NOMEM;
    n->nodes = o->nodes > 1 ? o->nodes : 1;
    n->ready_timeout_ms = o->ready_timeout_ms > 0 ? o->ready_timeout_ms : 20000;
    if (n->nodes > HX_NATS_MAX_NODES) {
        hx_set_error("hx_nats_start: at most %d nodes", HX_NATS_MAX_NODES);
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    if (dir == NULL) {
        st = hx_tmpdir_create("nats", &n->dir);
        if (st != SL_OK)
            goto cleanup;
        n->own_dir = true;
    } else {
        n->dir = strdup(dir);
    }
    for (int i = 0; i < n->nodes; i++) {
        hx__node *nd = &n->node[i];
        nd->port = hx_port_free();
        nd->mport = hx_port_free();
        nd->wsport = o->websocket ? hx_port_free() : 0;
        nd->cport = n->nodes > 1 ? hx_port_free() : 0;
        if (nd->port < 0 || nd->mport < 0 || nd->wsport < 0 || nd->cport < 0) {
            st = SL_ERR_IO;
            goto cleanup;
        }
        nd->url = hx_strf("nats://127.0.0.1:%d", nd->port);
        nd->conf_path = hx_strf("%s/nats-%d.conf", n->dir, i);
        nd->log_path = hx_strf("%s/nats-%d.log", n->dir, i);
    }
    n->url = hx_strf("%s", n->node[0].url);
    for (int i = 1; i < n->nodes; i++) {
        char *u = hx_strf("%s,%s", n->url, n->node[i].url);
        free(n->url);
        n->url = u;
    }
    for (int i = 0; i < n->nodes; i++) {
        st = hx__write_conf(n, i, o);
        if (st != SL_OK)
            goto cleanup;
        st = hx__spawn_node(n, i);
        if (st != SL_OK)
            goto cleanup;
    }
    for (int i = 0; i < n->nodes; i++) {
        st = hx_nats_wait_ready(n, i, n->ready_timeout_ms);
        if (st != SL_OK) {
            hx__node_failed(n, i);
            goto cleanup;
        }
    }
    *out = n;
    n = NULL;
    st = SL_OK;
cleanup:
    if (n != NULL) {
        char err[1024];
        snprintf(err, sizeof err, "%s", hx_error());
        hx_nats_destroy(n);
        hx_set_error("%s", err);
    }
    return st;
}

const char *hx_nats_url(const hx_nats *n)
{
    return n ? n->url : "";
}

const char *hx_nats_node_url(const hx_nats *n, int node)
{
    return hx__node_ok(n, node) ? n->node[node].url : "";
}

int hx_nats_nodes(const hx_nats *n)
{
    return n ? n->nodes : 0;
}

int hx_nats_port(const hx_nats *n, int node)
{
    return hx__node_ok(n, node) ? n->node[node].port : -1;
}

int hx_nats_monitor_port(const hx_nats *n, int node)
{
    return hx__node_ok(n, node) ? n->node[node].mport : -1;
}

int hx_nats_ws_port(const hx_nats *n, int node)
{
    return hx__node_ok(n, node) ? n->node[node].wsport : -1;
}

sl_status hx_nats_stop(hx_nats *n, int node, int sig)
{
    if (!hx__node_ok(n, node))
        return SL_ERR_INVAL;
    return hx_proc_stop(n->node[node].proc, sig, 10000, NULL);
}

sl_status hx_nats_start_node(hx_nats *n, int node)
{
    if (!hx__node_ok(n, node))
        return SL_ERR_INVAL;
    sl_status st = hx_proc_respawn(n->node[node].proc);
    if (st != SL_OK)
        return st;
    st = hx_nats_wait_ready(n, node, n->ready_timeout_ms);
    if (st != SL_OK)
        hx__node_failed(n, node);
    return st;
}

sl_status hx_nats_restart(hx_nats *n, int node, int sig)
{
    sl_status st = hx_nats_stop(n, node, sig);
    if (st != SL_OK && st != SL_ERR_TIMEOUT)
        return st;
    return hx_nats_start_node(n, node);
}

bool hx_nats_alive(hx_nats *n, int node)
{
    return hx__node_ok(n, node) && hx_proc_alive(n->node[node].proc);
}

hx_proc *hx_nats_proc(hx_nats *n, int node)
{
    return hx__node_ok(n, node) ? n->node[node].proc : NULL;
}

const char *hx_nats_log_path(const hx_nats *n, int node)
{
    return hx__node_ok(n, node) ? n->node[node].log_path : "";
}

void hx_nats_destroy(hx_nats *n)
{
    if (n == NULL)
        return;
    for (int i = 0; i < n->nodes; i++) {
        hx__node *nd = &n->node[i];
        hx_proc_destroy(nd->proc);
        free(nd->url);
        free(nd->conf_path);
        free(nd->log_path);
    }
    if (n->own_dir && n->dir != NULL)
        hx_rm_rf(n->dir);
    free(n->dir);
    free(n->url);
    free(n);
}
