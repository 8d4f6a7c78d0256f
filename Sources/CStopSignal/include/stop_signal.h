#ifndef DDPTRAIN_STOP_SIGNAL_H
#define DDPTRAIN_STOP_SIGNAL_H

/// Stop requests by signal (SIGTERM, SIGINT, SIGUSR1), handled async-signal-safely: the
/// handler only stores into atomics, writes a fixed notice, or removes the temporary file
/// being written and calls _exit. See StopRequest (DDPTrain) for the protocol.

/// Installs the handler for SIGTERM, SIGINT and SIGUSR1 (SA_RESTART, so that no system call
/// of the program fails with EINTR), and unblocks them in the calling thread. `graceful` 1:
/// the first signal is recorded for the training loop to act on at its next step boundary;
/// further ones within 2 s of it (or of the agreement to stop, if that came first) are the
/// same request reaching the process again (Slurm and systemd signal every process of a job,
/// and the launchers pass it on), and one after that ends the process at once. 0: every
/// signal ends the process at once. Either way "at once" means: remove the
/// temporary file being written, if any, then _exit(128 + signal). `announce` 1: the first
/// signal writes one line on stderr. Returns 0, or -1 with errno when sigaction failed.
int ddp_stop_install(int graceful, int announce);

/// The first stop signal received (its number), or 0.
int ddp_stop_requested(void);

/// The training loop has agreed to stop (on a signal to this rank or to another one): if
/// no signal came here yet, one 2 s or more from now ends the process at once.
void ddp_stop_set_stopping(void);

/// 1 when SIGTERM, SIGINT and SIGUSR1 are all still handled by `ddp_stop_install`'s handler.
int ddp_stop_is_installed(void);

/// A temporary file is being written at `path` (copied; at most 4095 bytes, else not
/// recorded): ending at once removes it. One at a time; NULL: none any more.
void ddp_stop_temporary_file(const char *path);

/// For tests: the next `ddp_stop_temporary_file` with a path raises `signal` in this process
/// once the path is recorded, i.e. while that file is being written; if a stop was asked for
/// or agreed already, after waiting until a signal counts as a second request (2 s).
void ddp_stop_raise_in_next_temporary_file(int signal);

/// Flushes stdout and says whether anything written to it was lost: 1 when the flush
/// failed or the stream's error flag is set (errno tells why), else 0. In C because Swift 6
/// does not let code read the global `stdout`.
int ddp_stdout_failed(void);

#endif
