#include "flip_signals.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t first_signal = 0;
static volatile sig_atomic_t interrupts = 0;

static void on_signal(int sig) {
  if (sig == SIGINT) {
    interrupts += 1;
    if (interrupts >= 2) {
      static const char message[] = "flip: second interrupt, exiting at once\n";
      ssize_t ignored = write(STDERR_FILENO, message, sizeof message - 1);
      (void)ignored;
      _exit(130);
    }
  }
  if (first_signal == 0) first_signal = sig;
}

static void set_handler(int sig, void (*handler)(int)) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(sig, &action, NULL);
}

void flip_signals_install(void) {
  set_handler(SIGUSR1, on_signal);
  set_handler(SIGTERM, on_signal);
  set_handler(SIGINT, on_signal);
  // A parent may have started us with these signals blocked (the mask is inherited): unblock
  // them, or a stop request would stay pending for ever.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

int flip_signals_stop_requested(void) { return first_signal; }

void flip_signals_uninstall(void) {
  set_handler(SIGUSR1, SIG_DFL);
  set_handler(SIGTERM, SIG_DFL);
  set_handler(SIGINT, SIG_DFL);
}
