/* The fatal-signal handler's interface. */
#ifndef TELTONIKA_CRASH_HANDLER_H
#define TELTONIKA_CRASH_HANDLER_H

/* Installs one handler for the fatal signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP).
   On a fatal signal it writes one log line to standard error with async-signal-safe calls only
   (write, clock_gettime, getpid), calls the handler that was installed before (the Swift runtime's
   backtracer, when enabled), then restores the default action and re-raises, so the process dies by
   that signal: the exit status and core dumps stay truthful.

   json: 1 for a JSON line, 0 for a text line. instance_json: the instance id already escaped as the
   inside of a JSON string (copied; at most 255 bytes kept). Returns 0, or -1 when a sigaction failed. */
int teltonika_crash_handler_install(int json, const char *instance_json);

/* Test-only: crash now the way `kind` names ("segv", "abort", "trap", "bus"). Returns only for an
   unknown kind. */
void teltonika_crash_now(const char *kind);

#endif
