/*
 * h2call.c -- a small unary gRPC client over libnghttp2 for the load generator.
 *
 * Why: grpcio-python spends ~0.3 ms of client CPU per call; a measuring tool
 * should not need more CPU than what it measures. Here one epoll thread owns
 * every connection ("slot", one per simulated user), makes the calls back to
 * back in C and hands finished results to Python in batches through an
 * eventfd, so Python wakes once per batch instead of once per call.
 *
 * Threading: the public functions only queue a command (mutex + eventfd
 * write) or copy results out (mutex); every slot, socket and nghttp2 session
 * is touched by the worker thread alone.
 *
 * Result record (little-endian, packed, 40 bytes + payload):
 *   int32 slot, int32 status, int64 tag, int64 call_ns, int64 done_ns,
 *   uint32 details_len, uint32 body_len, details bytes, body bytes
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* nghttp2 1.60 renamed the ssize_t API (the old names are deprecated there). */
#if NGHTTP2_VERSION_NUM >= 0x013c00
typedef nghttp2_ssize h2_ssize;
typedef nghttp2_data_provider2 h2_provider;
#define H2_MEM_SEND nghttp2_session_mem_send2
#define H2_MEM_RECV nghttp2_session_mem_recv2
#define H2_SUBMIT_REQUEST nghttp2_submit_request2
#else
typedef ssize_t h2_ssize;
typedef nghttp2_data_provider h2_provider;
#define H2_MEM_SEND nghttp2_session_mem_send
#define H2_MEM_RECV nghttp2_session_mem_recv
#define H2_SUBMIT_REQUEST nghttp2_submit_request
#endif

#define EXPORT __attribute__((visibility("default")))

enum { ST_OK = 0, ST_CANCELLED = 1, ST_UNKNOWN = 2, ST_DEADLINE = 4, ST_PERMISSION = 7,
       ST_RESOURCE = 8, ST_PRECONDITION = 9, ST_UNIMPLEMENTED = 12, ST_INTERNAL = 13,
       ST_UNAVAILABLE = 14, ST_UNAUTHENTICATED = 16 };

#define MAX_MESSAGE (256u * 1024 * 1024)  /* as loadtest.protocols.MAX_MESSAGE */
#define WINDOW (16 * 1024 * 1024)         /* big tensors are not throttled by flow control */
#define MAX_ADDRS 8
#define MAX_SLOTS (1 << 20)
#define RBUF_SIZE (256 * 1024)
#define OUT_HIGH (256 * 1024)             /* serialized bytes gathered before one send() */
#define REC_HEAD 40
#define CTX_TAG UINT64_MAX                /* epoll data of the command eventfd */

enum conn_state { C_NONE, C_CONNECTING, C_UP };

/* A prepared request, shared by the slot and its call in flight: a prepare
   while a call is in flight must not free the bytes nghttp2 is still sending. */
struct req {
    int refs;
    char *path;
    char timeout_hdr[24];
    int64_t timeout_ns;  /* 0: no deadline */
    uint8_t *msg;        /* 5-byte gRPC prefix + message */
    size_t len;
};

struct ctx;

struct slot {
    struct ctx *ctx;
    int idx;
    bool open;
    char *host;
    char authority[300];
    char resolve_err[200];
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t addrlens[MAX_ADDRS];
    int naddr, addr_i;
    struct req *req;
    /* connection */
    enum conn_state state;
    int fd;
    uint32_t gen;        /* bumped on each drop: stale epoll events are ignored */
    uint32_t ev_mask;
    nghttp2_session *sess;
    bool goaway;
    bool heard;          /* a frame came from the server on this connection */
    int last_errno;
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    /* the back-to-back loop */
    bool running, unlimited;
    int64_t tag, left;
    uint32_t run_gen;
    /* the call in flight */
    bool active;
    int32_t stream_id;
    struct req *creq;
    size_t sent;
    int64_t t0, deadline, ctag;
    uint32_t crun_gen;
    int http_status, grpc_status;
    char *grpc_msg;
    bool too_big;
    uint8_t *body;
    size_t body_len, body_cap;
};

enum cmd_op { OP_OPEN, OP_PREPARE, OP_RUN, OP_HALT, OP_CLOSE, OP_DELAY, OP_QUIT };

struct cmd {
    struct cmd *next;
    enum cmd_op op;
    int slot;
    int64_t a, b;
    char *host;
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t addrlens[MAX_ADDRS];
    int naddr;
    char err[200];
    struct req *req;
};

struct ctx {
    pthread_t thread;
    int ep, cmd_fd, res_fd;
    pthread_mutex_t cmd_mu, res_mu;
    struct cmd *cmd_head, *cmd_tail;
    uint8_t *res;         /* published results, [res_off, res_len) unread */
    size_t res_len, res_off, res_cap;
    bool notify;          /* results went from none to some: Python is to be woken */
    int64_t notify_since; /* worker-only: when that happened */
    int64_t notify_delay; /* worker-only: how long results may wait to be batched (ns) */
    struct slot **slots;  /* worker-only */
    int nslots;
    int64_t next_check;   /* worker-only: earliest deadline that may have passed */
    uint8_t rbuf[RBUF_SIZE];
    nghttp2_session_callbacks *cbs;
    bool quit;
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void req_unref(struct req *r) {
    if (r && --r->refs == 0) {
        free(r->path);
        free(r->msg);
        free(r);
    }
}

/* ---------------------------------------------------------------- results */

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void publish(struct ctx *c, struct slot *s, int status, const char *details,
                    const uint8_t *body, size_t body_len, int64_t call_ns, int64_t done_ns,
                    int64_t tag) {
    size_t dlen = details ? strlen(details) : 0;
    size_t need = REC_HEAD + dlen + body_len;
    pthread_mutex_lock(&c->res_mu);
    if (c->res_off == c->res_len) {
        c->res_off = c->res_len = 0;
        if (!c->notify) {  /* Python may have drained and reset the eventfd */
            c->notify = true;
            c->notify_since = now_ns();
        }
    }
    if (c->res_len + need > c->res_cap) {
        if (c->res_off) {  /* compact before growing */
            memmove(c->res, c->res + c->res_off, c->res_len - c->res_off);
            c->res_len -= c->res_off;
            c->res_off = 0;
        }
        size_t cap = c->res_cap ? c->res_cap : 65536;
        while (cap < c->res_len + need) cap *= 2;
        uint8_t *n = cap > c->res_cap ? realloc(c->res, cap) : c->res;
        if (!n) {  /* out of memory: drop the body rather than the result */
            body_len = 0;
            need = REC_HEAD + dlen;
            if (c->res_len + need > c->res_cap) {
                pthread_mutex_unlock(&c->res_mu);
                return;
            }
        } else {
            c->res = n;
            c->res_cap = cap;
        }
    }
    uint8_t *p = c->res + c->res_len;
    put_le(p, (uint32_t)s->idx, 4);
    put_le(p + 4, (uint32_t)status, 4);
    put_le(p + 8, (uint64_t)tag, 8);
    put_le(p + 16, (uint64_t)call_ns, 8);
    put_le(p + 24, (uint64_t)done_ns, 8);
    put_le(p + 32, dlen, 4);
    put_le(p + 36, body_len, 4);
    if (dlen) memcpy(p + REC_HEAD, details, dlen);
    if (body_len) memcpy(p + REC_HEAD + dlen, body, body_len);
    c->res_len += need;
    pthread_mutex_unlock(&c->res_mu);
}

/* Ends the slot's call in flight with a result. `stop` ends the back-to-back
   loop too (a connection-level failure: Python re-arms it after a back-off). */
static void finish_call(struct slot *s, int status, const char *details, const uint8_t *body,
                        size_t body_len, bool stop) {
    if (!s->active) return;
    int64_t t1 = now_ns();
    publish(s->ctx, s, status, details, body, body_len, t1 - s->t0, t1, s->ctag);
    s->active = false;
    s->stream_id = 0;
    req_unref(s->creq);
    s->creq = NULL;
    free(s->grpc_msg);
    s->grpc_msg = NULL;
    if (s->body_cap > 4 * 1024 * 1024) {  /* a one-off huge response is not kept per slot */
        free(s->body);
        s->body = NULL;
        s->body_cap = 0;
    }
    s->body_len = 0;
    if (s->crun_gen == s->run_gen && !s->unlimited && s->left > 0 && --s->left == 0) s->running = false;
    if (stop) s->running = false;
}

static void finish_callf(struct slot *s, int status, bool stop, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void finish_callf(struct slot *s, int status, bool stop, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    finish_call(s, status, buf, NULL, 0, stop);
}

/* ------------------------------------------------------------- connection */

static void set_events(struct slot *s, uint32_t mask) {
    if (s->fd < 0 || mask == s->ev_mask) return;
    struct epoll_event ev = {.events = mask, .data.u64 = ((uint64_t)s->gen << 32) | (uint32_t)s->idx};
    epoll_ctl(s->ctx->ep, EPOLL_CTL_MOD, s->fd, &ev);
    s->ev_mask = mask;
}

static void conn_drop(struct slot *s) {
    if (s->sess) {
        /* The session's user data is the slot: clear the stream first so no
           callback run by the deletion can touch the call. */
        s->stream_id = 0;
        nghttp2_session_del(s->sess);
        s->sess = NULL;
    }
    if (s->fd >= 0) {
        epoll_ctl(s->ctx->ep, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
    s->gen++;
    s->state = C_NONE;
    s->goaway = false;
    s->heard = false;
    s->out_len = s->out_off = 0;
    s->ev_mask = 0;
}

/* The connection failed: the call in flight (if any) fails with `details`,
   the loop stops, the next call reconnects. */
static void conn_fail(struct slot *s, int status, const char *details) {
    conn_drop(s);
    finish_call(s, status, details, NULL, 0, true);
}

/* The connection closed or broke: "socket closed", and, as grpc-core says it,
   a failure to connect when the server had not yet spoken HTTP/2 (its SETTINGS). */
static void conn_lost(struct slot *s, const char *what) {
    char buf[300];
    snprintf(buf, sizeof buf, "%s%s", s->heard ? "" : "failed to connect to all addresses; ", what);
    conn_fail(s, ST_UNAVAILABLE, buf);
}

static void submit_stream(struct slot *s);

/* Starts a non-blocking connect to the slot's next address; false when none
   could even start (the call, if any, has then failed). */
static bool conn_start(struct slot *s) {
    while (s->addr_i < s->naddr) {
        struct sockaddr_storage *sa = &s->addrs[s->addr_i];
        int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            s->last_errno = errno;
            s->addr_i++;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)sa, s->addrlens[s->addr_i]) < 0 && errno != EINPROGRESS) {
            s->last_errno = errno;
            close(fd);
            s->addr_i++;
            continue;
        }
        s->fd = fd;
        s->state = C_CONNECTING;
        s->ev_mask = EPOLLOUT;
        struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = ((uint64_t)s->gen << 32) | (uint32_t)s->idx};
        epoll_ctl(s->ctx->ep, EPOLL_CTL_ADD, fd, &ev);
        return true;
    }
    char buf[300];
    if (s->naddr == 0)
        snprintf(buf, sizeof buf, "failed to connect to all addresses; %s",
                 s->resolve_err[0] ? s->resolve_err : "no address");
    else
        snprintf(buf, sizeof buf, "failed to connect to all addresses; %s", strerror(s->last_errno));
    conn_fail(s, ST_UNAVAILABLE, buf);
    return false;
}

static bool conn_connect(struct slot *s) {
    s->addr_i = 0;
    s->last_errno = ECONNREFUSED;
    return conn_start(s);
}

/* Serializes what nghttp2 has to send and writes it; false if the connection failed. */
static bool conn_flush(struct slot *s) {
    if (s->state != C_UP) return true;
    for (;;) {
        while (s->out_len < OUT_HIGH) {
            const uint8_t *data;
            h2_ssize n = H2_MEM_SEND(s->sess, &data);
            if (n < 0) {
                char buf[200];
                snprintf(buf, sizeof buf, "http2 error: %s", nghttp2_strerror((int)n));
                conn_fail(s, ST_INTERNAL, buf);
                return false;
            }
            if (n == 0) break;
            if (s->out_len + (size_t)n > s->out_cap) {
                size_t cap = s->out_cap ? s->out_cap : 16384;
                while (cap < s->out_len + (size_t)n) cap *= 2;
                uint8_t *p = realloc(s->out, cap);
                if (!p) {
                    conn_fail(s, ST_INTERNAL, "out of memory");
                    return false;
                }
                s->out = p;
                s->out_cap = cap;
            }
            memcpy(s->out + s->out_len, data, (size_t)n);
            s->out_len += (size_t)n;
        }
        if (s->out_off == s->out_len) break;
        ssize_t w = send(s->fd, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(s, EPOLLIN | EPOLLOUT);
                return true;
            }
            conn_lost(s, errno == ECONNRESET ? "socket closed (connection reset by peer)"
                                             : "socket closed (write failed)");
            return false;
        }
        s->out_off += (size_t)w;
        if (s->out_off < s->out_len) {
            set_events(s, EPOLLIN | EPOLLOUT);
            return true;
        }
        s->out_off = s->out_len = 0;
    }
    set_events(s, EPOLLIN);
    if (!nghttp2_session_want_read(s->sess) && !nghttp2_session_want_write(s->sess)) {
        /* The session is over (GOAWAY and nothing left, or a fatal error). */
        conn_lost(s, "socket closed");
        return false;
    }
    return true;
}

/* ----------------------------------------------------- nghttp2 callbacks */

static h2_ssize data_read(nghttp2_session *sess, int32_t sid, uint8_t *buf, size_t len,
                          uint32_t *flags, nghttp2_data_source *src, void *ud) {
    (void)sess;
    struct slot *s = ud;
    struct req *r = src->ptr;
    if (!s->active || sid != s->stream_id || r != s->creq) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = r->len - s->sent;
    if (n > len) n = len;
    memcpy(buf, r->msg + s->sent, n);
    s->sent += n;
    if (s->sent == r->len) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (h2_ssize)n;
}

static int hexval(uint8_t ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int on_header(nghttp2_session *sess, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud) {
    (void)sess;
    (void)flags;
    struct slot *s = ud;
    if (!s->active || frame->hd.stream_id != s->stream_id) return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        s->http_status = valuelen <= 3 ? atoi((const char *)value) : 0;  /* value is NUL-terminated */
    } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        s->grpc_status = valuelen > 0 && valuelen <= 3 ? atoi((const char *)value) : ST_UNKNOWN;
    } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        free(s->grpc_msg);
        s->grpc_msg = malloc(valuelen + 1);
        if (s->grpc_msg) {
            /* percent-decoding: %XX are bytes; anything else is literal */
            size_t o = 0;
            for (size_t i = 0; i < valuelen; i++) {
                int hi, lo;
                if (value[i] == '%' && i + 2 < valuelen && (hi = hexval(value[i + 1])) >= 0 &&
                    (lo = hexval(value[i + 2])) >= 0) {
                    s->grpc_msg[o++] = (char)(hi << 4 | lo);
                    i += 2;
                } else {
                    s->grpc_msg[o++] = (char)value[i];
                }
            }
            s->grpc_msg[o] = 0;
        }
    }
    return 0;
}

static int on_data(nghttp2_session *sess, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                   void *ud) {
    (void)flags;
    struct slot *s = ud;
    if (!s->active || sid != s->stream_id || s->too_big) return 0;
    if (s->body_len + len > (size_t)MAX_MESSAGE + 5) {
        s->too_big = true;
        nghttp2_submit_rst_stream(sess, NGHTTP2_FLAG_NONE, sid, NGHTTP2_CANCEL);
        return 0;
    }
    if (s->body_len + len > s->body_cap) {
        size_t cap = s->body_cap ? s->body_cap : 4096;
        while (cap < s->body_len + len) cap *= 2;
        uint8_t *p = realloc(s->body, cap);
        if (!p) {
            s->too_big = true;
            nghttp2_submit_rst_stream(sess, NGHTTP2_FLAG_NONE, sid, NGHTTP2_CANCEL);
            return 0;
        }
        s->body = p;
        s->body_cap = cap;
    }
    memcpy(s->body + s->body_len, data, len);
    s->body_len += len;
    return 0;
}

static int on_frame_recv(nghttp2_session *sess, const nghttp2_frame *frame, void *ud) {
    (void)sess;
    struct slot *s = ud;
    s->heard = true;
    if (frame->hd.type == NGHTTP2_GOAWAY) s->goaway = true;  /* no new call on this connection */
    return 0;
}

/* gRPC's HTTP-to-status table (doc/http-grpc-status-mapping.md). */
static int http_to_grpc(int http) {
    switch (http) {
    case 400: return ST_INTERNAL;
    case 401: return ST_UNAUTHENTICATED;
    case 403: return ST_PERMISSION;
    case 404: return ST_UNIMPLEMENTED;
    case 429: case 502: case 503: case 504: return ST_UNAVAILABLE;
    default: return ST_UNKNOWN;
    }
}

static int rst_to_grpc(uint32_t code) {
    switch (code) {
    case NGHTTP2_CANCEL: return ST_CANCELLED;
    case NGHTTP2_REFUSED_STREAM: return ST_UNAVAILABLE;
    case NGHTTP2_ENHANCE_YOUR_CALM: return ST_RESOURCE;
    case NGHTTP2_INADEQUATE_SECURITY: return ST_PERMISSION;
    default: return ST_INTERNAL;
    }
}

static int on_stream_close(nghttp2_session *sess, int32_t sid, uint32_t error_code, void *ud) {
    (void)sess;
    struct slot *s = ud;
    if (!s->active || sid != s->stream_id) return 0;
    const char *msg = s->grpc_msg ? s->grpc_msg : "";
    if (s->too_big) {
        finish_callf(s, ST_RESOURCE, false, "Received message larger than max (%zu vs. %u)",
                     s->body_len, MAX_MESSAGE);
    } else if (s->http_status == 0 || (s->grpc_status < 0 && s->http_status == 200 && error_code)) {
        if (error_code == NGHTTP2_REFUSED_STREAM && s->goaway)
            /* refused by a server going away: the call never ran */
            finish_callf(s, ST_UNAVAILABLE, true, "socket closed (GOAWAY received, stream refused)");
        else
            finish_callf(s, rst_to_grpc(error_code), false, "Received RST_STREAM with error code %u",
                         error_code);
    } else if (s->http_status != 200) {
        finish_callf(s, http_to_grpc(s->http_status), false, "Received http2 header with status: %d%s%s",
                     s->http_status, *msg ? "; " : "", msg);
    } else if (s->grpc_status < 0) {
        finish_callf(s, ST_UNKNOWN, false, "missing grpc-status in the response trailers");
    } else if (s->grpc_status != ST_OK) {
        finish_call(s, s->grpc_status, msg, NULL, 0, false);
    } else if (s->body_len < 5) {
        finish_callf(s, ST_INTERNAL, false, "no response message for a unary call");
    } else if (s->body[0] != 0) {
        finish_callf(s, ST_INTERNAL, false,
                     "compressed response message (flag %u) but compression is not supported by "
                     "modelsoak-native", s->body[0]);
    } else {
        size_t n = (size_t)s->body[1] << 24 | (size_t)s->body[2] << 16 | (size_t)s->body[3] << 8 | s->body[4];
        if (n + 5 != s->body_len)
            finish_callf(s, ST_INTERNAL, false, "malformed response: message of %zu bytes in %zu bytes of data",
                         n, s->body_len - 5);
        else
            finish_call(s, ST_OK, "", s->body + 5, n, false);
    }
    return 0;
}

/* ------------------------------------------------------------------ calls */

static void submit_stream(struct slot *s) {
    struct req *r = s->creq;
#define NV(n, v, vl) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl), \
                      NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE}
    nghttp2_nv nva[] = {
        NV(":method", "POST", 4),
        NV(":scheme", "http", 4),
        NV(":path", r->path, strlen(r->path)),
        NV(":authority", s->authority, strlen(s->authority)),
        NV("content-type", "application/grpc", 16),
        NV("te", "trailers", 8),
        NV("user-agent", "modelsoak-native/1", 18),
        NV("grpc-timeout", r->timeout_hdr, strlen(r->timeout_hdr)),
    };
#undef NV
    size_t nnv = sizeof nva / sizeof nva[0] - (r->timeout_ns ? 0 : 1);
    h2_provider prd = {.source.ptr = r, .read_callback = data_read};
    s->sent = 0;
    s->http_status = 0;
    s->grpc_status = -1;
    s->too_big = false;
    s->body_len = 0;
    int32_t sid = H2_SUBMIT_REQUEST(s->sess, NULL, nva, nnv, &prd, NULL);
    if (sid < 0) {
        finish_callf(s, ST_INTERNAL, false, "http2 error: %s", nghttp2_strerror(sid));
        return;
    }
    s->stream_id = sid;
}

static void conn_up(struct slot *s) {
    nghttp2_session_client_new(&s->sess, s->ctx->cbs, s);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, 1 << 20},
    };
    nghttp2_submit_settings(s->sess, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
    nghttp2_session_set_local_window_size(s->sess, NGHTTP2_FLAG_NONE, 0, WINDOW);
    s->state = C_UP;
    if (s->active && !s->stream_id) submit_stream(s);
}

static void start_call(struct slot *s) {
    struct ctx *c = s->ctx;
    if (!s->req) {
        s->running = false;
        publish(c, s, ST_PRECONDITION, "no request prepared on this slot", NULL, 0, 0, now_ns(), s->tag);
        return;
    }
    s->active = true;
    s->stream_id = 0;
    s->t0 = now_ns();
    s->ctag = s->tag;
    s->crun_gen = s->run_gen;
    s->creq = s->req;
    s->creq->refs++;
    s->deadline = s->creq->timeout_ns ? s->t0 + s->creq->timeout_ns : INT64_MAX;
    if (s->deadline < c->next_check) c->next_check = s->deadline;
    if (s->state == C_UP && (s->goaway || !nghttp2_session_check_request_allowed(s->sess)))
        conn_drop(s);  /* a server going away takes no new stream: a new connection */
    if (s->state == C_NONE && !conn_connect(s)) return;
    if (s->state == C_UP) submit_stream(s);
}

/* Starts the next call when the slot's loop wants one, then sends what is pending. */
static void slot_advance(struct slot *s) {
    if (s->open && s->running && !s->active) start_call(s);
    if (s->state == C_UP) conn_flush(s);
}

static void on_readable(struct ctx *c, struct slot *s) {
    for (;;) {
        ssize_t n = recv(s->fd, c->rbuf, sizeof c->rbuf, 0);
        if (n > 0) {
            h2_ssize rv = H2_MEM_RECV(s->sess, c->rbuf, (size_t)n);
            if (rv < 0) {
                /* As grpc-core: a transport error is UNAVAILABLE, and one before the
                   server said anything in HTTP/2 (an HTTP/1 port) a failure to connect. */
                char buf[200];
                snprintf(buf, sizeof buf, "%s: http2 protocol error: %s",
                         s->heard ? "connection error" : "failed to connect to all addresses; not an HTTP/2 server?",
                         nghttp2_strerror((int)rv));
                conn_fail(s, ST_UNAVAILABLE, buf);
                return;
            }
            if ((size_t)n < sizeof c->rbuf) return;  /* level-triggered: epoll says if more came */
            continue;
        }
        if (n == 0) {
            conn_lost(s, "socket closed");
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        conn_lost(s, errno == ECONNRESET ? "socket closed (connection reset by peer)"
                                         : "socket closed (read failed)");
        return;
    }
}

static void on_event(struct ctx *c, struct slot *s, uint32_t ev) {
    if (s->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        if (err == 0 && !(ev & (EPOLLERR | EPOLLHUP))) {
            set_events(s, EPOLLIN);
            conn_up(s);
        } else {
            if (err == 0) err = ECONNREFUSED;
            s->last_errno = err;
            epoll_ctl(c->ep, EPOLL_CTL_DEL, s->fd, NULL);
            close(s->fd);
            s->fd = -1;
            s->gen++;
            s->state = C_NONE;
            s->addr_i++;
            conn_start(s);  /* the next address, or the call fails */
            return;
        }
    } else if (s->state == C_UP) {
        if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c, s);
    }
    slot_advance(s);
}

static void check_deadlines(struct ctx *c, int64_t now) {
    int64_t next = INT64_MAX;
    for (int i = 0; i < c->nslots; i++) {
        struct slot *s = c->slots[i];
        if (!s || !s->active) continue;
        if (s->deadline <= now) {
            if (s->state == C_UP && s->stream_id)
                nghttp2_submit_rst_stream(s->sess, NGHTTP2_FLAG_NONE, s->stream_id, NGHTTP2_CANCEL);
            finish_call(s, ST_DEADLINE, "Deadline Exceeded", NULL, 0, false);
            slot_advance(s);
        }
        if (s->active && s->deadline < next) next = s->deadline;
    }
    c->next_check = next;
}

/* --------------------------------------------------------------- commands */

static struct slot *get_slot(struct ctx *c, int idx) {
    if (idx >= c->nslots) {
        int n = c->nslots ? c->nslots : 16;
        while (n <= idx) n *= 2;
        struct slot **p = realloc(c->slots, (size_t)n * sizeof *p);
        if (!p) return NULL;
        memset(p + c->nslots, 0, (size_t)(n - c->nslots) * sizeof *p);
        c->slots = p;
        c->nslots = n;
    }
    if (!c->slots[idx]) {
        struct slot *s = calloc(1, sizeof *s);
        if (!s) return NULL;
        s->ctx = c;
        s->idx = idx;
        s->fd = -1;
        c->slots[idx] = s;
    }
    return c->slots[idx];
}

static void slot_close(struct slot *s) {
    s->running = false;
    conn_drop(s);
    finish_call(s, ST_CANCELLED, "slot closed", NULL, 0, true);
    s->open = false;
}

static void run_cmd(struct ctx *c, struct cmd *m) {
    if (m->op == OP_QUIT) {
        c->quit = true;
        return;
    }
    if (m->op == OP_DELAY) {
        c->notify_delay = m->a;
        return;
    }
    struct slot *s = get_slot(c, m->slot);
    if (!s) return;
    switch (m->op) {
    case OP_OPEN:
        if (s->open) slot_close(s);
        free(s->host);
        s->host = m->host;
        m->host = NULL;
        memcpy(s->addrs, m->addrs, sizeof s->addrs);
        memcpy(s->addrlens, m->addrlens, sizeof s->addrlens);
        s->naddr = m->naddr;
        snprintf(s->resolve_err, sizeof s->resolve_err, "%s", m->err);
        snprintf(s->authority, sizeof s->authority, strchr(s->host, ':') ? "[%s]:%d" : "%s:%d", s->host,
                 (int)m->a);
        s->open = true;
        conn_connect(s);  /* connected before the first call, as a grpc channel is */
        break;
    case OP_PREPARE:
        req_unref(s->req);
        s->req = m->req;
        m->req = NULL;
        break;
    case OP_RUN:
        s->tag = m->a;
        s->left = m->b;
        s->unlimited = m->b == 0;
        s->run_gen++;
        s->running = true;
        if (!s->open) {
            s->running = false;
            publish(c, s, ST_PRECONDITION, "slot not opened", NULL, 0, 0, now_ns(), s->tag);
        }
        break;
    case OP_HALT:
        s->running = false;
        break;
    case OP_CLOSE:
        slot_close(s);
        break;
    case OP_DELAY:
    case OP_QUIT:
        break;
    }
    slot_advance(s);
}

static void drain_cmds(struct ctx *c) {
    uint64_t v;
    ssize_t r = read(c->cmd_fd, &v, sizeof v);
    (void)r;
    pthread_mutex_lock(&c->cmd_mu);
    struct cmd *m = c->cmd_head;
    c->cmd_head = c->cmd_tail = NULL;
    pthread_mutex_unlock(&c->cmd_mu);
    while (m) {
        struct cmd *next = m->next;
        run_cmd(c, m);
        free(m->host);
        req_unref(m->req);
        free(m);
        m = next;
    }
}

static void *worker(void *arg) {
    struct ctx *c = arg;
    struct epoll_event evs[64];
    while (!c->quit) {
        int timeout = -1;
        int64_t wake = c->next_check;
        if (c->notify && c->notify_since + c->notify_delay < wake) wake = c->notify_since + c->notify_delay;
        if (wake != INT64_MAX) {
            int64_t wait = wake - now_ns();
            timeout = wait <= 0 ? 0 : (int)((wait + 999999) / 1000000 > 3600000 ? 3600000
                                                                               : (wait + 999999) / 1000000);
        }
        int n = epoll_wait(c->ep, evs, 64, timeout);
        for (int i = 0; i < n; i++) {
            uint64_t d = evs[i].data.u64;
            if (d == CTX_TAG) {
                drain_cmds(c);
                continue;
            }
            int idx = (int)(uint32_t)d;
            struct slot *s = idx < c->nslots ? c->slots[idx] : NULL;
            if (!s || s->gen != (uint32_t)(d >> 32) || s->fd < 0) continue;  /* a dropped connection's event */
            on_event(c, s, evs[i].events);
        }
        if (c->next_check != INT64_MAX) {
            int64_t now = now_ns();
            if (now >= c->next_check) check_deadlines(c, now);
        }
        if (c->notify && (c->notify_delay == 0 || now_ns() >= c->notify_since + c->notify_delay)) {
            c->notify = false;
            uint64_t one = 1;
            ssize_t w = write(c->res_fd, &one, sizeof one);
            (void)w;
        }
    }
    return NULL;
}

/* -------------------------------------------------------------------- API */

static int push(struct ctx *c, struct cmd *m) {
    pthread_mutex_lock(&c->cmd_mu);
    if (c->cmd_tail) c->cmd_tail->next = m;
    else c->cmd_head = m;
    c->cmd_tail = m;
    pthread_mutex_unlock(&c->cmd_mu);
    uint64_t one = 1;
    ssize_t w = write(c->cmd_fd, &one, sizeof one);
    (void)w;
    return 0;
}

static struct cmd *new_cmd(enum cmd_op op, int slot) {
    struct cmd *m = calloc(1, sizeof *m);
    if (m) {
        m->op = op;
        m->slot = slot;
    }
    return m;
}

EXPORT void *msh2_new(void) {
    struct ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->next_check = INT64_MAX;
    c->ep = epoll_create1(EPOLL_CLOEXEC);
    c->cmd_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    c->res_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->ep < 0 || c->cmd_fd < 0 || c->res_fd < 0) goto fail;
    pthread_mutex_init(&c->cmd_mu, NULL);
    pthread_mutex_init(&c->res_mu, NULL);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = CTX_TAG};
    epoll_ctl(c->ep, EPOLL_CTL_ADD, c->cmd_fd, &ev);
    nghttp2_session_callbacks_new(&c->cbs);
    nghttp2_session_callbacks_set_on_header_callback(c->cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c->cbs, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(c->cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(c->cbs, on_stream_close);
    /* Signals belong to Python's main thread, not to this worker. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&c->thread, NULL, worker, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        nghttp2_session_callbacks_del(c->cbs);
        goto fail;
    }
    return c;
fail:
    if (c->ep >= 0) close(c->ep);
    if (c->cmd_fd >= 0) close(c->cmd_fd);
    if (c->res_fd >= 0) close(c->res_fd);
    free(c);
    return NULL;
}

EXPORT int msh2_open(void *ctx, int slot, const char *host, int port) {
    if (!ctx || slot < 0 || slot >= MAX_SLOTS || !host || port <= 0 || port > 65535) return -EINVAL;
    struct cmd *m = new_cmd(OP_OPEN, slot);
    if (!m || !(m->host = strdup(host))) {
        free(m);
        return -ENOMEM;
    }
    m->a = port;
    /* Resolved here, on the caller's thread (ctypes released the GIL): a slow
       DNS answer must not stall the worker and every other slot's timing. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0) {
        snprintf(m->err, sizeof m->err, "DNS resolution failed for %s: %s", host, gai_strerror(rc));
    } else {
        for (struct addrinfo *a = res; a && m->naddr < MAX_ADDRS; a = a->ai_next) {
            memcpy(&m->addrs[m->naddr], a->ai_addr, a->ai_addrlen);
            m->addrlens[m->naddr++] = a->ai_addrlen;
        }
        freeaddrinfo(res);
    }
    return push(ctx, m);
}

EXPORT int msh2_prepare(void *ctx, int slot, const char *path, const uint8_t *msg, size_t len,
                        int timeout_ms) {
    if (!ctx || slot < 0 || slot >= MAX_SLOTS || !path || (len && !msg) || len > MAX_MESSAGE) return -EINVAL;
    struct cmd *m = new_cmd(OP_PREPARE, slot);
    struct req *r = calloc(1, sizeof *r);
    if (!m || !r || !(r->path = strdup(path)) || !(r->msg = malloc(len + 5))) {
        if (r) free(r->path);
        free(r);
        free(m);
        return -ENOMEM;
    }
    r->refs = 1;
    r->len = len + 5;
    r->msg[0] = 0;  /* uncompressed */
    r->msg[1] = (uint8_t)(len >> 24);
    r->msg[2] = (uint8_t)(len >> 16);
    r->msg[3] = (uint8_t)(len >> 8);
    r->msg[4] = (uint8_t)len;
    if (len) memcpy(r->msg + 5, msg, len);
    if (timeout_ms > 0) {
        r->timeout_ns = (int64_t)timeout_ms * 1000000;
        if (timeout_ms <= 99999999) snprintf(r->timeout_hdr, sizeof r->timeout_hdr, "%dm", timeout_ms);
        else snprintf(r->timeout_hdr, sizeof r->timeout_hdr, "%dS", timeout_ms / 1000);
    }
    m->req = r;
    return push(ctx, m);
}

EXPORT int msh2_run(void *ctx, int slot, int64_t tag, int64_t count) {
    if (!ctx || slot < 0 || slot >= MAX_SLOTS || count < 0) return -EINVAL;
    struct cmd *m = new_cmd(OP_RUN, slot);
    if (!m) return -ENOMEM;
    m->a = tag;
    m->b = count;
    return push(ctx, m);
}

static int simple(void *ctx, enum cmd_op op, int slot) {
    if (!ctx || slot < 0 || slot >= MAX_SLOTS) return -EINVAL;
    struct cmd *m = new_cmd(op, slot);
    return m ? push(ctx, m) : -ENOMEM;
}

/* Results may wait up to `delay_us` before Python is woken, so that one
   wake-up takes many of them (0, the default: woken at once). */
EXPORT int msh2_set_notify_delay(void *ctx, int64_t delay_us) {
    if (!ctx || delay_us < 0 || delay_us > 60000000) return -EINVAL;
    struct cmd *m = new_cmd(OP_DELAY, 0);
    if (!m) return -ENOMEM;
    m->a = delay_us * 1000;
    return push(ctx, m);
}

EXPORT int msh2_halt(void *ctx, int slot) { return simple(ctx, OP_HALT, slot); }

EXPORT int msh2_close(void *ctx, int slot) { return simple(ctx, OP_CLOSE, slot); }

EXPORT int msh2_fd(void *ctx) { return ctx ? ((struct ctx *)ctx)->res_fd : -EINVAL; }

static size_t get_le32(const uint8_t *p) {
    return (size_t)p[0] | (size_t)p[1] << 8 | (size_t)p[2] << 16 | (size_t)p[3] << 24;
}

/* A record's whole length: its head, details and body. */
static size_t rec_size(const uint8_t *p) { return REC_HEAD + get_le32(p + 32) + get_le32(p + 36); }

EXPORT int64_t msh2_results(void *ctx, uint8_t *buf, int64_t cap) {
    struct ctx *c = ctx;
    if (!c || cap < 0 || (cap && !buf)) return -EINVAL;
    pthread_mutex_lock(&c->res_mu);
    size_t at = c->res_off, end = c->res_len;
    while (at < end) {  /* whole records only */
        const uint8_t *p = c->res + at;
        size_t rec = rec_size(p);
        if (at - c->res_off + rec > (size_t)cap) break;
        at += rec;
    }
    int64_t n = (int64_t)(at - c->res_off);
    if (n == 0 && at < end) {
        /* the next record does not fit: say how big a buffer it needs */
        const uint8_t *p = c->res + at;
        size_t rec = rec_size(p);
        pthread_mutex_unlock(&c->res_mu);
        return -(int64_t)rec;
    }
    if (n) memcpy(buf, c->res + c->res_off, (size_t)n);
    c->res_off = at;
    if (c->res_off == c->res_len) {
        c->res_off = c->res_len = 0;
        uint64_t v;
        ssize_t r = read(c->res_fd, &v, sizeof v);  /* nothing waits: not readable any more */
        (void)r;
    }
    pthread_mutex_unlock(&c->res_mu);
    return n;
}

EXPORT void msh2_free(void *ctx) {
    struct ctx *c = ctx;
    if (!c) return;
    struct cmd *m = new_cmd(OP_QUIT, 0);
    if (m) {
        push(c, m);
    } else {
        c->quit = true;  /* best effort: the worker sees it within its next wake-up */
        uint64_t one = 1;
        ssize_t w = write(c->cmd_fd, &one, sizeof one);
        (void)w;
    }
    pthread_join(c->thread, NULL);
    for (struct cmd *q = c->cmd_head; q;) {
        struct cmd *next = q->next;
        free(q->host);
        req_unref(q->req);
        free(q);
        q = next;
    }
    for (int i = 0; i < c->nslots; i++) {
        struct slot *s = c->slots[i];
        if (!s) continue;
        s->active = false;
        conn_drop(s);
        req_unref(s->creq);
        req_unref(s->req);
        free(s->host);
        free(s->grpc_msg);
        free(s->body);
        free(s->out);
        free(s);
    }
    free(c->slots);
    nghttp2_session_callbacks_del(c->cbs);
    close(c->ep);
    close(c->cmd_fd);
    close(c->res_fd);
    pthread_mutex_destroy(&c->cmd_mu);
    pthread_mutex_destroy(&c->res_mu);
    free(c->res);
    free(c);
}
