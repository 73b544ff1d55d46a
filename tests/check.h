/*
 * check.h — the tiny harness of libdiffrl's C unit tests.
 *
 *   CHECK(cond)                    CHECK_EQ_INT(a, b)          CHECK_NEAR(a, b, tol)
 *   CHECK_OK(status_expr)          prints dr_last_error() when the call failed
 *   CHECK_FAILS(status_expr, expected_status, "substring of the message")
 *                                  clears the error first, so a stale message never passes
 *   check_isolated(name, fn, arg)  runs fn(arg) in a forked child: a crash (or a
 *                                  sanitizer abort) counts as one failed check
 *   return check_summary("test_x"); prints "test_x: N checks, M failed", exit code
 *
 * Every CHECK macro is an expression worth 1 when it passed, so a test can stop
 * early:  if (!CHECK_OK(dr_tensor_empty(...))) return;
 */
#ifndef DIFFRL_TESTS_CHECK_H
#define DIFFRL_TESTS_CHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "diffrl.h"

static int check_total_, check_failed_;

static inline const char *check_status_name(int s) {
    static const char *const names[] = {"DR_OK", "DR_ERR_ARG", "DR_ERR_SHAPE", "DR_ERR_DTYPE",
                                        "DR_ERR_DEVICE", "DR_ERR_OOM", "DR_ERR_IO",
                                        "DR_ERR_UNSUPPORTED", "DR_ERR_FREED", "DR_ERR_INTERNAL"};
    return s >= 0 && s <= DR_ERR_INTERNAL ? names[s] : "(unknown status)";
}

static inline int check_record_(int ok, const char *file, int line, const char *expr) {
    check_total_++;
    if (!ok) {
        check_failed_++;
        fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, expr);
    }
    return ok;
}

static inline int check_eq_int_(long long a, long long b, const char *file, int line,
                                const char *expr) {
    int ok = check_record_(a == b, file, line, expr);
    if (!ok) fprintf(stderr, "    got %lld, expected %lld\n", a, b);
    return ok;
}

static inline int check_near_(double a, double b, double tol, const char *file, int line,
                              const char *expr) {
    int ok = check_record_(a == b || fabs(a - b) <= tol, file, line, expr);
    if (!ok) fprintf(stderr, "    got %.17g, expected %.17g (tolerance %g)\n", a, b, tol);
    return ok;
}

static inline int check_ok_(dr_status s, const char *file, int line, const char *expr) {
    int ok = check_record_(s == DR_OK, file, line, expr);
    if (!ok) fprintf(stderr, "    %s: %s\n", check_status_name(s), dr_last_error());
    return ok;
}

static inline int check_fails_(dr_status s, dr_status want, const char *needle, const char *file,
                               int line, const char *expr) {
    const char *msg = dr_last_error();
    int ok = s == want && msg && msg[0] && (!needle || strstr(msg, needle));
    check_record_(ok, file, line, expr);
    if (!ok)
        fprintf(stderr, "    got %s \"%s\", expected %s with \"%s\" in the message\n",
                check_status_name(s), msg ? msg : "(null)", check_status_name(want),
                needle ? needle : "");
    return ok;
}

#define CHECK(cond) check_record_((cond) != 0, __FILE__, __LINE__, #cond)
#define CHECK_EQ_INT(a, b) \
    check_eq_int_((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)
#define CHECK_NEAR(a, b, tol) \
    check_near_((double)(a), (double)(b), (double)(tol), __FILE__, __LINE__, #a " ~ " #b)
#define CHECK_OK(expr) check_ok_((expr), __FILE__, __LINE__, #expr)
#define CHECK_FAILS(expr, status, needle) \
    (dr_clear_error(), check_fails_((expr), (status), (needle), __FILE__, __LINE__, #expr))

/* Runs fn(arg) in a child process and adds its check counts to ours. A child that
 * dies (signal, sanitizer report, exit before reporting) is one failed check. */
static inline void check_isolated(const char *name, void (*fn)(const void *), const void *arg) {
    int fd[2];
    fflush(NULL);
    if (pipe(fd) != 0) {
        check_record_(0, __FILE__, __LINE__, "pipe() for an isolated test");
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        /* libgomp is not fork-safe: a child using the parent's thread pool hangs
         * forever. With one thread it never touches the pool. */
        dr_set_num_threads(1);
        check_total_ = check_failed_ = 0;
        fn(arg);
        int counts[2] = {check_total_, check_failed_};
        ssize_t w = write(fd[1], counts, sizeof counts);
        fflush(NULL);
        _exit(w == (ssize_t)sizeof counts ? 0 : 1);
    }
    close(fd[1]);
    int counts[2] = {0, 0}, wstatus = 0;
    ssize_t got = pid > 0 ? read(fd[0], counts, sizeof counts) : -1;
    close(fd[0]);
    if (pid > 0) waitpid(pid, &wstatus, 0);
    if (got != (ssize_t)sizeof counts || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
        check_total_++;
        check_failed_++;
        if (pid > 0 && WIFSIGNALED(wstatus))
            fprintf(stderr, "FAILED: %s crashed (signal %d)\n", name, WTERMSIG(wstatus));
        else
            fprintf(stderr, "FAILED: %s crashed or exited early (status %d)\n", name,
                    pid > 0 && WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1);
        return;
    }
    check_total_ += counts[0];
    check_failed_ += counts[1];
}

static inline int check_summary(const char *name) {
    printf("%s: %d checks, %d failed\n", name, check_total_, check_failed_);
    fflush(stdout);
    return check_failed_ != 0;
}

#endif
