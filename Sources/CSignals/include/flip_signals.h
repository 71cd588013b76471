// Stop requests from signals, recorded by async-signal-safe handlers for the training loop
// to poll at step boundaries (where the request is agreed on by all ranks).
#ifndef FLIP_SIGNALS_H
#define FLIP_SIGNALS_H

// Installs handlers for SIGUSR1, SIGTERM and SIGINT. The first of them records a stop
// request; a second SIGINT exits the process at once with status 130.
void flip_signals_install(void);
// The signal number of the first stop request, or 0 if none has arrived.
int flip_signals_stop_requested(void);
// Restores the default dispositions (after training, so a late signal behaves as usual).
void flip_signals_uninstall(void);
#endif
