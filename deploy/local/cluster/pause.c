/* The sandbox ("pause") container of deploy/local/cluster.sh's pods: no image can be pulled on the
 * machines this cluster runs on, so containerd's sandbox_image is built from this file (a static
 * binary in an otherwise empty image). It holds the pod's namespaces: waits for a signal, reaps
 * children (it is PID 1 of the pod when the PID namespace is shared) and exits on TERM/INT. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction sa = {0};
  sa.sa_handler = quit;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  for (;;) pause();
  return 1;
}
