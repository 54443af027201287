/*
 * fleet: an independent device fleet for benchmarks, in C (issue 19).
 *
 * Why it exists: the end-to-end figures of docs/PERFORMANCE.md were measured with the server's own Swift
 * simulator, which shares the Codec8 module with the server (a bug in both cancels out) and, on a 2-core
 * machine, takes CPU from the server and Redis. This is a different implementation of the device side,
 * written from ../shared/docs/PROTOCOL.md alone, as small as it can be: one thread, epoll, one packet in
 * flight per device, nothing allocated per packet.
 *
 * Each device: connect, send its IMEI (2-byte length, 15 ASCII digits), wait for 0x01, then loop: build a
 * Codec 8 or 8 Extended packet of N records (even devices 8, odd ones 8E with --codec mixed), send it, wait
 * for the 4-byte ACK, which must equal N. A wrong ACK, a refusal, a close or no answer within
 * --response-timeout-ms closes the connection; after a 100 ms backoff the device reconnects and sends the
 * same bytes again (counted as a resend). Timestamps are unique and increasing per device (one second apart),
 * so every record is a different stream entry.
 *
 * Pace: --rate R sends a device's packets R per second (the first at a random point of the first interval,
 * then one interval apart; a late ACK sends the next at once, never a burst to catch up). Without --rate a
 * device sends its next packet as soon as the ACK arrives (closed loop, the peak).
 *
 * Latency: from the send() of a packet's first byte to the read() that completes its ACK, per packet, kept
 * exactly (one 32-bit microsecond figure each) and sorted at the end.
 *
 * Output: one JSON line with the field names of `teltonika-ingest simulate --json` that the bench scripts read
 * (devices, duration_s, records_acked, packets_acked, acked_per_s, ack_p50_ms, ack_p99_ms, ack_p999_ms,
 * ack_max_ms, resends, errors, cpu_s), so the scripts take either. acked_per_s counts the ACKs read within
 * --duration; records_acked also counts those of the packets still in flight then (the last one of each
 * device, read before exiting), so it is what the stream must hold.
 *
 * Build: cc -O2 -o fleet tools/fleet/fleet.c     (scripts/bench-common.sh does it)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state { S_IDLE, S_CONNECTING, S_LOGIN, S_WAITING, S_ACK, S_BACKOFF, S_DONE };

#define MAX_RECORDS 255
/* Codec 8E record: 24 fixed + 2 event + 2 total + 4 groups of (2 count + elements) + 2 NX count. */
#define RECORD_MAX 128
#define PACKET_MAX (12 + 3 + MAX_RECORDS * RECORD_MAX + 4)

struct device {
    int index;
    int fd;
    enum state state;
    int extended; /* codec 8E */
    char imei[16];
    uint64_t timestamp_ms;
    int32_t lat, lon;
    uint16_t angle;
    uint32_t odometer;
    uint64_t rng;
    unsigned char packet[PACKET_MAX];
    size_t packet_len, written;
    int packet_records;
    int packet_pending; /* built, not ACKed yet */
    int sends;          /* of the packet pending */
    unsigned char in[4];
    int in_len;
    uint64_t sent_ns, due_ns, deadline_ns;
};

static struct {
    const char *host;
    int port, devices, records, response_timeout_ms;
    double seconds, rate;
    enum { C_MIXED, C_8, C_8E } codec;
} opt = {"127.0.0.1", 5027, 200, 10, 10000, 15, 0, C_MIXED};

static struct {
    uint64_t packets_acked, records_acked, records_in_window, resends, errors, wrong_acks, connections, refusals, timeouts;
} count;

static uint32_t *latencies;
static size_t latencies_len, latencies_cap;
static int epfd;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* SplitMix64, seeded per device. */
static uint64_t next_random(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* CRC-16/IBM (reflected 0xA001, initial 0), PROTOCOL.md "CRC": eight bytes at a time from tables made once
 * from the bitwise definition (slicing-by-8: table k holds a byte's CRC followed by k zero bytes). Bit by bit
 * it cost the fleet about 0.5 µs of CPU per record, a byte at a time still 0.25 µs: CPU the server and Redis
 * share with it on a small machine. */
static uint16_t crc_tables[8][256];

static void crc16_init(void) {
    for (int byte = 0; byte < 256; byte++) {
        uint16_t crc = (uint16_t)byte;
        for (int b = 0; b < 8; b++) crc = (crc & 1) ? (uint16_t)((crc >> 1) ^ 0xA001) : (uint16_t)(crc >> 1);
        crc_tables[0][byte] = crc;
    }
    for (int k = 1; k < 8; k++)
        for (int byte = 0; byte < 256; byte++) {
            uint16_t prev = crc_tables[k - 1][byte];
            crc_tables[k][byte] = (uint16_t)((prev >> 8) ^ crc_tables[0][prev & 0xFF]);
        }
}

static uint16_t crc16_ibm(const unsigned char *p, size_t n) {
    uint16_t crc = 0;
    for (; n >= 8; p += 8, n -= 8) {
        uint16_t c = (uint16_t)(crc ^ (p[0] | p[1] << 8));
        crc = (uint16_t)(crc_tables[7][c & 0xFF] ^ crc_tables[6][c >> 8] ^ crc_tables[5][p[2]] ^ crc_tables[4][p[3]] ^
                         crc_tables[3][p[4]] ^ crc_tables[2][p[5]] ^ crc_tables[1][p[6]] ^ crc_tables[0][p[7]]);
    }
    for (; n > 0; p++, n--) crc = (uint16_t)((crc >> 8) ^ crc_tables[0][(crc ^ *p) & 0xFF]);
    return crc;
}

static unsigned char *put(unsigned char *p, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) *p++ = (unsigned char)(v >> (8 * i));
    return p;
}

/* An IO group: its count, then each element's ID and value, in the codec's widths. */
static unsigned char *group(unsigned char *p, int ext, int n, const uint16_t *ids, const uint64_t *values, int width) {
    p = put(p, (uint64_t)n, ext ? 2 : 1);
    for (int i = 0; i < n; i++) {
        p = put(p, ids[i], ext ? 2 : 1);
        p = put(p, values[i], width);
    }
    return p;
}

/* The next packet of `d`: N records with the IO elements a typical FMB configuration sends (the same set as
 * the Swift simulator's, values drifting), encoded per PROTOCOL.md "AVL data packet". */
static void build_packet(struct device *d) {
    unsigned char *p = d->packet;
    int ext = d->extended;
    p = put(p, 0, 4);
    unsigned char *length_at = p;
    p += 4;
    unsigned char *data = p;
    *p++ = ext ? 0x8E : 0x08;
    *p++ = (unsigned char)opt.records;
    for (int r = 0; r < opt.records; r++) {
        uint64_t x = next_random(&d->rng);
        d->timestamp_ms += 1000;
        d->lat += (int32_t)(x % 2001) - 1000;
        d->lon += (int32_t)((x >> 11) % 2001) - 1000;
        d->angle = (uint16_t)((d->angle + (x >> 22) % 21) % 360);
        uint16_t speed = (uint16_t)((x >> 30) % 131);
        d->odometer += speed;
        p = put(p, d->timestamp_ms, 8);
        *p++ = 0; /* priority */
        p = put(p, (uint32_t)d->lon, 4);
        p = put(p, (uint32_t)d->lat, 4);
        p = put(p, 40 + (x >> 40) % 100, 2);
        p = put(p, d->angle, 2);
        *p++ = 12; /* satellites */
        p = put(p, speed, 2);
        p = put(p, 0, ext ? 2 : 1); /* event IO ID */
        p = put(p, 15, ext ? 2 : 1); /* total IO elements */
        static const uint16_t id1[] = {239, 240, 21, 69, 200}, id2[] = {66, 67, 24, 181, 182}, id4[] = {16, 199, 241},
                              id8[] = {11, 14};
        uint64_t v1[] = {speed > 0, speed > 3, 2 + (x >> 48) % 4, 1, 0};
        uint64_t v2[] = {12200 + (x >> 20) % 2200, 3950 + (x >> 33) % 200, speed, 6 + (x >> 44) % 25, 4 + (x >> 52) % 17};
        uint64_t v4[] = {d->odometer, d->odometer / 10, 24702};
        uint64_t v8[] = {8937000000000000000ull + (uint64_t)d->index, 1000000000ull + (uint64_t)d->index};
        p = group(p, ext, 5, id1, v1, 1);
        p = group(p, ext, 5, id2, v2, 2);
        p = group(p, ext, 3, id4, v4, 4);
        p = group(p, ext, 2, id8, v8, 8);
        if (ext) p = put(p, 0, 2); /* NX elements */
    }
    *p++ = (unsigned char)opt.records;
    size_t data_len = (size_t)(p - data);
    put(length_at, data_len, 4);
    p = put(p, crc16_ibm(data, data_len), 4);
    d->packet_len = (size_t)(p - d->packet);
    d->packet_records = opt.records;
    d->packet_pending = 1;
    d->sends = 0;
}

static void record_latency(uint64_t ns) {
    if (latencies_len == latencies_cap) {
        latencies_cap = latencies_cap ? latencies_cap * 2 : 65536;
        latencies = realloc(latencies, latencies_cap * sizeof *latencies);
        if (!latencies) { perror("fleet: realloc"); exit(2); }
    }
    uint64_t us = ns / 1000;
    latencies[latencies_len++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)(us ? us : 1);
}

static void watch(struct device *d, uint32_t events, int op) {
    struct epoll_event e = {.events = events, .data.ptr = d};
    if (epoll_ctl(epfd, op, d->fd, &e) != 0) { perror("fleet: epoll_ctl"); exit(2); }
}

static void drop(struct device *d, uint64_t now, int error) {
    if (d->fd >= 0) close(d->fd);
    d->fd = -1;
    if (error) count.errors++;
    d->state = S_BACKOFF;
    d->due_ns = now + 100000000u;
}

static void start_connect(struct device *d, uint64_t now) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    inet_pton(AF_INET, opt.host, &a.sin_addr);
    d->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->fd < 0) { perror("fleet: socket"); exit(2); }
    int one = 1;
    setsockopt(d->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    d->state = S_CONNECTING;
    d->deadline_ns = now + (uint64_t)opt.response_timeout_ms * 1000000u;
    if (connect(d->fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
        drop(d, now, 1);
        return;
    }
    watch(d, EPOLLOUT, EPOLL_CTL_ADD);
}

/* Writes what is left of the packet; EPOLLOUT only while the socket is full. */
static void send_rest(struct device *d, uint64_t now) {
    while (d->written < d->packet_len) {
        ssize_t n = send(d->fd, d->packet + d->written, d->packet_len - d->written, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) { watch(d, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD); return; }
            drop(d, now, 1);
            return;
        }
        d->written += (size_t)n;
    }
}

static void send_packet(struct device *d, uint64_t now) {
    if (!d->packet_pending) build_packet(d);
    else if (d->sends > 0) count.resends++;
    d->sends++;
    d->written = 0;
    d->in_len = 0;
    d->state = S_ACK;
    d->sent_ns = now_ns(); /* not `now`: a sweep sends many packets, and building one takes time */
    d->deadline_ns = now + (uint64_t)opt.response_timeout_ms * 1000000u;
    send_rest(d, now);
}

/* Ready for the next packet: now, or at the pace's next slot. */
static void next_packet(struct device *d, uint64_t now, uint64_t end) {
    if (now >= end) {
        d->state = S_DONE;
        return;
    }
    if (opt.rate > 0) {
        if (d->due_ns > now) {
            d->state = S_WAITING;
            return;
        }
        uint64_t interval = (uint64_t)(1e9 / opt.rate);
        d->due_ns += interval;
        if (d->due_ns < now) d->due_ns = now;
    }
    send_packet(d, now);
}

static void readable(struct device *d, uint64_t now, uint64_t end) {
    for (;;) {
        unsigned char buf[64];
        size_t want = d->state == S_LOGIN ? 1 : (size_t)(4 - d->in_len);
        ssize_t n = read(d->fd, buf, want < sizeof buf ? want : sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN)) { drop(d, now, 1); return; }
        if (n < 0) return;
        if (d->state == S_LOGIN) {
            if (buf[0] != 0x01) { count.refusals++; drop(d, now, 1); return; }
            next_packet(d, now, end);
            if (d->state != S_ACK) return;
            continue;
        }
        if (d->state != S_ACK) { drop(d, now, 1); return; } /* bytes nobody asked for */
        memcpy(d->in + d->in_len, buf, (size_t)n);
        d->in_len += (int)n;
        if (d->in_len < 4) continue;
        uint32_t ack = (uint32_t)d->in[0] << 24 | (uint32_t)d->in[1] << 16 | (uint32_t)d->in[2] << 8 | d->in[3];
        if (ack != (uint32_t)d->packet_records) { count.wrong_acks++; drop(d, now, 1); return; }
        now = now_ns(); /* the ACK's own time, not the epoll_wait return's: events are handled in turn */
        d->packet_pending = 0;
        count.packets_acked++;
        count.records_acked += (uint64_t)d->packet_records;
        if (now <= end) count.records_in_window += (uint64_t)d->packet_records;
        record_latency(now - d->sent_ns);
        next_packet(d, now, end);
        if (d->state != S_ACK) return;
    }
}

static void writable(struct device *d, uint64_t now) {
    if (d->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(d->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) { drop(d, now, 1); return; }
        count.connections++;
        unsigned char login[17] = {0, 15};
        memcpy(login + 2, d->imei, 15);
        if (send(d->fd, login, sizeof login, MSG_NOSIGNAL) != (ssize_t)sizeof login) { drop(d, now, 1); return; }
        d->state = S_LOGIN;
        d->deadline_ns = now + (uint64_t)opt.response_timeout_ms * 1000000u;
        watch(d, EPOLLIN, EPOLL_CTL_MOD);
        return;
    }
    if (d->state == S_ACK) {
        watch(d, EPOLLIN, EPOLL_CTL_MOD);
        send_rest(d, now);
    }
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static int by_value(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile_ms(double p) {
    if (latencies_len == 0) return 0;
    size_t i = (size_t)(p / 100 * (double)latencies_len);
    if (i >= latencies_len) i = latencies_len - 1;
    return latencies[i] / 1000.0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: fleet [--host H] [--port P] [--devices N] [--duration S] [--records-per-packet N]\n"
            "             [--rate PACKETS_PER_S_PER_DEVICE] [--codec 8|8E|mixed] [--response-timeout-ms MS] [--json]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) continue; /* the only output there is */
        if (!v) usage();
        if (!strcmp(a, "--host")) opt.host = v;
        else if (!strcmp(a, "--port")) opt.port = atoi(v);
        else if (!strcmp(a, "--devices")) opt.devices = atoi(v);
        else if (!strcmp(a, "--duration")) opt.seconds = atof(v);
        else if (!strcmp(a, "--records-per-packet")) opt.records = atoi(v);
        else if (!strcmp(a, "--rate")) opt.rate = atof(v);
        else if (!strcmp(a, "--response-timeout-ms")) opt.response_timeout_ms = atoi(v);
        else if (!strcmp(a, "--codec")) opt.codec = !strcmp(v, "8") ? C_8 : !strcmp(v, "8E") ? C_8E : C_MIXED;
        else usage();
        i++;
    }
    if (opt.devices < 1 || opt.devices > 1000000 || opt.records < 1 || opt.records > MAX_RECORDS || opt.seconds <= 0) usage();

    crc16_init();
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct device *devices = calloc((size_t)opt.devices, sizeof *devices);
    if (!devices) { perror("fleet: calloc"); return 2; }
    uint64_t start = now_ns();
    uint64_t end = start + (uint64_t)(opt.seconds * 1e9);
    for (int i = 0; i < opt.devices; i++) {
        struct device *d = &devices[i];
        d->index = i;
        d->fd = -1;
        d->extended = opt.codec == C_8E || (opt.codec == C_MIXED && (i & 1));
        snprintf(d->imei, sizeof d->imei, "35209300%07d", i % 10000000);
        d->rng = 0x19 + (uint64_t)i * 0x100000001b3ull;
        d->timestamp_ms = 1764547200000ull; /* 2025-12-01 */
        d->lat = 550000000 + (int32_t)(next_random(&d->rng) % 20000000);
        d->lon = 230000000 + (int32_t)(next_random(&d->rng) % 20000000);
        d->odometer = (uint32_t)(next_random(&d->rng) % 100000000);
        if (opt.rate > 0) d->due_ns = start + (uint64_t)((double)(next_random(&d->rng) % 1000000) / 1e6 * (1e9 / opt.rate));
        start_connect(d, start);
    }

    double cpu0 = cpu_seconds();
    uint64_t last_sweep = start, finish_by = end + (uint64_t)opt.response_timeout_ms * 1000000u;
    struct epoll_event events[256];
    for (;;) {
        uint64_t now = now_ns();
        /* Timers: paced sends, backoffs, answers overdue; every device is looked at each 1 ms at most. */
        int active = 0;
        if (now - last_sweep >= 1000000u) {
            last_sweep = now;
            for (int i = 0; i < opt.devices; i++) {
                struct device *d = &devices[i];
                if (d->state == S_DONE) continue;
                active++;
                if (d->state == S_WAITING && now >= d->due_ns) next_packet(d, now, end);
                else if (d->state == S_BACKOFF && now >= d->due_ns) {
                    if (now >= end) d->state = S_DONE;
                    else start_connect(d, now);
                } else if ((d->state == S_CONNECTING || d->state == S_LOGIN || d->state == S_ACK) && now >= d->deadline_ns) {
                    count.timeouts++;
                    drop(d, now, 1);
                } else if (d->state == S_WAITING && now >= end) d->state = S_DONE;
            }
            if (active == 0 || now >= finish_by) break;
        }
        int n = epoll_wait(epfd, events, 256, 1);
        now = now_ns();
        for (int i = 0; i < n; i++) {
            struct device *d = events[i].data.ptr;
            if (d->fd < 0) continue;
            if (events[i].events & (EPOLLERR | EPOLLHUP) && d->state == S_CONNECTING) { drop(d, now, 1); continue; }
            if (events[i].events & EPOLLOUT) writable(d, now);
            if (d->fd >= 0 && events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) readable(d, now, end);
        }
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    double measured = opt.seconds < elapsed ? opt.seconds : elapsed;
    double cpu = cpu_seconds() - cpu0;
    qsort(latencies, latencies_len, sizeof *latencies, by_value);
    printf("{\"tool\":\"fleet\",\"devices\":%d,\"duration_s\":%.2f,\"records_per_packet\":%d,\"rate\":%.3f,"
           "\"packets_acked\":%llu,\"records_acked\":%llu,\"acked_per_s\":%.0f,"
           "\"ack_p50_ms\":%.3f,\"ack_p99_ms\":%.3f,\"ack_p999_ms\":%.3f,\"ack_max_ms\":%.3f,"
           "\"resends\":%llu,\"errors\":%llu,\"wrong_acks\":%llu,\"timeouts\":%llu,\"login_refusals\":%llu,"
           "\"connections\":%llu,\"cpu_s\":%.2f}\n",
           opt.devices, elapsed, opt.records, opt.rate, (unsigned long long)count.packets_acked,
           (unsigned long long)count.records_acked, (double)count.records_in_window / measured, percentile_ms(50),
           percentile_ms(99), percentile_ms(99.9), latencies_len ? latencies[latencies_len - 1] / 1000.0 : 0,
           (unsigned long long)count.resends, (unsigned long long)count.errors, (unsigned long long)count.wrong_acks,
           (unsigned long long)count.timeouts, (unsigned long long)count.refusals, (unsigned long long)count.connections,
           cpu);
    return 0;
}
