/* The fatal-signal handler: one process.crashed line with async-signal-safe calls, then death by the signal. */
#define _GNU_SOURCE
#include "crash_handler.h"

#include <signal.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP};
#define FATAL_COUNT (sizeof(fatal_signals) / sizeof(fatal_signals[0]))

static struct sigaction previous[FATAL_COUNT];
static int format_json = 1;
static char instance[256];
static volatile sig_atomic_t in_handler = 0;

static const char *signal_name(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    case SIGFPE: return "SIGFPE";
    case SIGABRT: return "SIGABRT";
    case SIGTRAP: return "SIGTRAP";
    default: return "SIG?";
    }
}

/* A fixed buffer and append helpers: no allocation, no locale, no stdio. */
struct line {
    char bytes[768];
    size_t length;
};

static void put(struct line *l, const char *s) {
    while (*s && l->length < sizeof(l->bytes) - 2) l->bytes[l->length++] = *s++;
}

static void put_unsigned(struct line *l, uint64_t value, int min_digits) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value > 0 && n < (int)sizeof(digits));
    while (n < min_digits && n < (int)sizeof(digits)) digits[n++] = '0';
    while (n > 0 && l->length < sizeof(l->bytes) - 2) l->bytes[l->length++] = digits[--n];
}

static void put_hex(struct line *l, uintptr_t value) {
    static const char hex[] = "0123456789abcdef";
    char digits[2 * sizeof(uintptr_t)];
    int n = 0;
    do {
        digits[n++] = hex[value & 0xf];
        value >>= 4;
    } while (value > 0);
    put(l, "0x");
    while (n > 0 && l->length < sizeof(l->bytes) - 2) l->bytes[l->length++] = digits[--n];
}

/* UTC ISO-8601 with milliseconds (days-from-civil inverse, Howard Hinnant's algorithm). */
static void put_timestamp(struct line *l) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t seconds = ts.tv_sec;
    int64_t days = seconds / 86400;
    int64_t rem = seconds % 86400;
    if (rem < 0) { rem += 86400; days -= 1; }
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2) y += 1;
    put_unsigned(l, (uint64_t)y, 4);
    put(l, "-");
    put_unsigned(l, (uint64_t)m, 2);
    put(l, "-");
    put_unsigned(l, (uint64_t)d, 2);
    put(l, "T");
    put_unsigned(l, (uint64_t)(rem / 3600), 2);
    put(l, ":");
    put_unsigned(l, (uint64_t)(rem / 60 % 60), 2);
    put(l, ":");
    put_unsigned(l, (uint64_t)(rem % 60), 2);
    put(l, ".");
    put_unsigned(l, (uint64_t)(ts.tv_nsec / 1000000), 3);
    put(l, "Z");
}

static void write_all(const char *bytes, size_t length) {
    while (length > 0) {
        ssize_t n = write(STDERR_FILENO, bytes, length);
        if (n <= 0) return;
        bytes += n;
        length -= (size_t)n;
    }
}

static void write_fatal_line(int sig, siginfo_t *info) {
    struct line l = {.length = 0};
    const char *message = "fatal signal: backtrace follows, then the process dies by this signal";
    if (format_json) {
        put(&l, "{\"ts\":\"");
        put_timestamp(&l);
        put(&l, "\",\"level\":\"critical\",\"event\":\"process.crashed\",\"msg\":\"");
        put(&l, message);
        put(&l, "\",\"instance_id\":\"");
        put(&l, instance);
        put(&l, "\",\"fault_address\":\"");
        put_hex(&l, info ? (uintptr_t)info->si_addr : 0);
        put(&l, "\",\"pid\":");
        put_unsigned(&l, (uint64_t)getpid(), 1);
        put(&l, ",\"signal\":\"");
        put(&l, signal_name(sig));
        put(&l, "\",\"signal_number\":");
        put_unsigned(&l, (uint64_t)sig, 1);
        put(&l, "}");
    } else {
        put_timestamp(&l);
        put(&l, " CRITICAL process.crashed: ");
        put(&l, message);
        put(&l, " signal=");
        put(&l, signal_name(sig));
        put(&l, " signal_number=");
        put_unsigned(&l, (uint64_t)sig, 1);
        put(&l, " fault_address=");
        put_hex(&l, info ? (uintptr_t)info->si_addr : 0);
        put(&l, " pid=");
        put_unsigned(&l, (uint64_t)getpid(), 1);
    }
    l.bytes[l.length++] = '\n';
    write_all(l.bytes, l.length);
}

static void handler(int sig, siginfo_t *info, void *context) {
    size_t index = 0;
    while (index < FATAL_COUNT && fatal_signals[index] != sig) index++;
    if (!in_handler) {
        /* A fault inside the chained handler must not print a second line or loop. */
        in_handler = 1;
        write_fatal_line(sig, info);
        if (index < FATAL_COUNT) {
            struct sigaction *prev = &previous[index];
            if ((prev->sa_flags & SA_SIGINFO) && prev->sa_sigaction != NULL) {
                prev->sa_sigaction(sig, info, context);
            } else if (!(prev->sa_flags & SA_SIGINFO) && prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
                prev->sa_handler(sig);
            }
        }
    }
    /* Die by the signal: default action, unblocked, raised again. A synchronous fault also
       re-executes the faulting instruction when this handler returns. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    sigset_t unblock;
    sigemptyset(&unblock);
    sigaddset(&unblock, sig);
    sigprocmask(SIG_UNBLOCK, &unblock, NULL);
    raise(sig);
}

int teltonika_crash_handler_install(int json, const char *instance_json) {
    format_json = json ? 1 : 0;
    size_t n = 0;
    if (instance_json != NULL) {
        while (instance_json[n] && n < sizeof(instance) - 1) {
            instance[n] = instance_json[n];
            n++;
        }
    }
    instance[n] = 0;

    /* An alternate stack, so a stack overflow can still be reported. */
    static char alternate_stack[64 * 1024];
    stack_t ss;
    memset(&ss, 0, sizeof(ss));
    ss.ss_sp = alternate_stack;
    ss.ss_size = sizeof(alternate_stack);
    sigaltstack(&ss, NULL);

    int result = 0;
    for (size_t i = 0; i < FATAL_COUNT; i++) {
        struct sigaction action;
        memset(&action, 0, sizeof(action));
        action.sa_sigaction = handler;
        /* The same flags and mask the Swift runtime gives its own handler, which runs inside ours:
           every other signal blocked, the fatal ones not (its memory server relies on that). */
        action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigfillset(&action.sa_mask);
        for (size_t j = 0; j < FATAL_COUNT; j++) sigdelset(&action.sa_mask, fatal_signals[j]);
        if (sigaction(fatal_signals[i], &action, &previous[i]) != 0) result = -1;
    }
    return result;
}

void teltonika_crash_now(const char *kind) {
    if (strcmp(kind, "segv") == 0) {
        volatile int *volatile nowhere = (int *)16;
        *nowhere = 1;
    } else if (strcmp(kind, "abort") == 0) {
        abort();
    } else if (strcmp(kind, "trap") == 0) {
        __builtin_trap();
    } else if (strcmp(kind, "bus") == 0) {
        raise(SIGBUS);
    }
}
