/* Loaded with LD_PRELOAD into a test's child process: on a fatal signal, write the native stack of the thread
   that received it to stderr, then die of the same signal. Installed at load time, so that a handler installed
   later (Python's faulthandler) runs first and hands the signal on to this one. */
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

static void write_text(const char *text) { (void)!write(2, text, strlen(text)); }

static void on_fatal_signal(int signum) {
    void *frames[64];
    int count = backtrace(frames, 64);
    write_text("\nNative stack of the crashed thread (tests/native_backtrace.c):\n");
    backtrace_symbols_fd(frames, count, 2);
    signal(signum, SIG_DFL);
    raise(signum);
}

__attribute__((constructor)) static void install(void) {
    void *warm[1];
    backtrace(warm, 1); /* loads libgcc's unwinder now, not inside the handler */
    for (unsigned i = 0; i < sizeof fatal_signals / sizeof *fatal_signals; i++) signal(fatal_signals[i], on_fatal_signal);
}
