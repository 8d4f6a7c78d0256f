#include <stdio.h>
#include "stop_signal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const int stop_signals[] = {SIGTERM, SIGINT, SIGUSR1};

static atomic_int requested;      // first stop signal, 0 if none
// CLOCK_MONOTONIC time (ns) of this rank's first stop signal, or of the agreement to stop if
// that came first; 0: neither yet. Slurm (scancel, preemption, the time limit) and systemd
// signal every process of a job, the ranks and the launchers alike, and each launcher passes
// the stop on: one request reaches a rank several times, within milliseconds. So stop
// signals within SAME_REQUEST_NS of it are that request; a later one is a second request.
static atomic_llong first_ns;
#define SAME_REQUEST_NS 2000000000LL
static atomic_int graceful_mode;
static atomic_int announce_first;
static atomic_int raise_in_next_temporary;

// The temporary file being written: `temporary_set` is cleared before the path changes and
// set after, so the handler never reads a path being copied.
static char temporary_path[4096];
static atomic_int temporary_set;

static void write_text(const char *text) {
    size_t length = strlen(text);
    while (length > 0) {
        ssize_t written = write(STDERR_FILENO, text, length);
        if (written <= 0) return;
        text += written;
        length -= (size_t)written;
    }
}

static const char *signal_name(int signal) {
    switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "a signal";
    }
}

static void end_now(int signal) {
    if (atomic_load(&temporary_set)) unlink(temporary_path);
    _exit(128 + signal);
}

static long long now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);  // async-signal-safe
    long long ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    return ns == 0 ? 1 : ns;  // 0 means "not yet"
}

static void handle(int signal) {
    int saved = errno;
    if (!atomic_load(&graceful_mode)) end_now(signal);
    long long now = now_ns(), first = 0;
    if (!atomic_compare_exchange_strong(&first_ns, &first, now)) {
        // A stop was asked for already (here, or agreed with the other ranks): the same
        // request reaching this rank again, or, 2 s on, a second request.
        if (now - first >= SAME_REQUEST_NS) end_now(signal);
        int none = 0;
        atomic_compare_exchange_strong(&requested, &none, signal);
        errno = saved;
        return;
    }
    atomic_store(&requested, signal);
    if (atomic_load(&announce_first)) {
        write_text("ddptrain: ");
        write_text(signal_name(signal));
        write_text(" received: stopping at the next step boundary with a checkpoint (a second signal, 2 s or more later, ends at once)\n");
    }
    errno = saved;
}

int ddp_stop_install(int graceful, int announce) {
    atomic_store(&graceful_mode, graceful);
    atomic_store(&announce_first, announce);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handle;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    // One stop signal at a time: a second one waits until the first's handler returned.
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++) sigaddset(&action.sa_mask, stop_signals[i]);
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++) {
        if (sigaction(stop_signals[i], &action, NULL) != 0) return -1;
    }
    // SIGHUP (the terminal closed) ends the process at once as by default, 129, but without
    // leaving the temporary file being written. Under nohup it stays ignored.
    struct sigaction hangup;
    if (sigaction(SIGHUP, NULL, &hangup) == 0 && hangup.sa_handler != SIG_IGN) {
        struct sigaction end;
        memset(&end, 0, sizeof end);
        end.sa_handler = end_now;
        sigemptyset(&end.sa_mask);
        if (sigaction(SIGHUP, &end, NULL) != 0) return -1;
    }
    // A launcher may have left them blocked (launch/mpirun starts mpirun with SIGTERM
    // blocked, and a signal mask survives exec): unblocked, or a stop would never arrive.
    sigset_t unblock;
    sigemptyset(&unblock);
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++) sigaddset(&unblock, stop_signals[i]);
    if (pthread_sigmask(SIG_UNBLOCK, &unblock, NULL) != 0) return -1;
    return 0;
}

int ddp_stop_requested(void) { return atomic_load(&requested); }

void ddp_stop_set_stopping(void) {
    long long none = 0;
    atomic_compare_exchange_strong(&first_ns, &none, now_ns());
}

int ddp_stop_is_installed(void) {
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++) {
        struct sigaction current;
        if (sigaction(stop_signals[i], NULL, &current) != 0 || current.sa_handler != handle) return 0;
    }
    return 1;
}

void ddp_stop_temporary_file(const char *path) {
    atomic_store(&temporary_set, 0);
    if (path == NULL) return;
    size_t length = strlen(path);
    if (length >= sizeof temporary_path) return;
    memcpy(temporary_path, path, length + 1);
    atomic_store(&temporary_set, 1);
    int signal = atomic_exchange(&raise_in_next_temporary, 0);
    if (signal != 0) {
        // A test of a second request: let the window of the same request pass first.
        long long first = atomic_load(&first_ns);
        if (first != 0) {
            long long left = first + SAME_REQUEST_NS + 100000000LL - now_ns();
            if (left > 0) {
                struct timespec pause = {.tv_sec = left / 1000000000LL, .tv_nsec = left % 1000000000LL};
                while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {}
            }
        }
        raise(signal);
    }
}

void ddp_stop_raise_in_next_temporary_file(int signal) { atomic_store(&raise_in_next_temporary, signal); }

int ddp_stdout_failed(void) {
    int flushed = fflush(stdout);
    return flushed != 0 || ferror(stdout) != 0;
}
