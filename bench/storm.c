/* Loopback connect/accept/close storm with a fixed count and a deadline.
 * Usage: storm COUNT MAX_SECONDS PORT    (run it inside a private netns)
 * Prints: cycles seconds cycles_per_second
 * One acceptor thread accepts and closes; the main thread connects and closes with
 * SO_LINGER {1,0} (RST: no TIME_WAIT pile-up, so ports never run out). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int lfd;

static void *acceptor(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c >= 0)
            close(c);
    }
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: storm COUNT MAX_SECONDS PORT\n");
        return 2;
    }
    long count = atol(argv[1]);
    double max_s = atof(argv[2]);
    int port = atoi(argv[3]);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 4096)) {
        perror("listen");
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, acceptor, NULL);
    struct linger lg = {1, 0};
    long cycles = 0, failed = 0;
    double start = now(), end = start + max_s;
    while (cycles < count) {
        if ((cycles & 255) == 0 && now() > end)
            break;
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0) {
            perror("socket");
            return 1;
        }
        if (connect(c, (struct sockaddr *)&a, sizeof(a)) == 0)
            cycles++;
        else
            failed++;
        setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(c);
    }
    double el = now() - start;
    printf("%ld %.3f %.0f\n", cycles, el, cycles / el);
    return failed > cycles ? 1 : 0;
}
