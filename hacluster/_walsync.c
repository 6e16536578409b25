/*
 * A WAL syncer that runs without the GIL: one native thread per open database that fsyncs
 * RocksDB's live WAL files and the database directory on request, and reports each finished
 * round on an eventfd the event loop watches.
 *
 * Why: the pure-Python group commit hands each round to a Python thread, which must take the
 * GIL back after FlushWAL and again to wake the loop; on a loaded primary every round cost
 * several GIL hand-offs (futex calls, involuntary switches) on the event loop's thread. Here
 * nothing after start() touches Python objects: the loop learns of a round's end by epoll.
 *
 * What a round covers: every byte written to a WAL file before start() was called. RocksDB
 * (manual_wal_flush off, the default we keep) write()s each batch's WAL record before
 * DB::Write returns, so what it wrote is in the page cache; a round fdatasyncs every log file
 * it holds open and, after a new log appeared, fsyncs the directory. New logs are learnt
 * from inotify (IN_CREATE, queued by the kernel before RocksDB writes to the new file, so a
 * round started after a write always sees the log that write went to). Only the newest log
 * takes writes: after a round, older ones are closed. A failed fsync is sticky: every later
 * round fails too (after an fsync error the page cache no longer says what is on disk).
 *
 * It must never report a round done before every fsync of it returned 0, and never keep a
 * reference to a Python object in the thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_LOGS 64

typedef struct {
    int fd;
    unsigned long long number;
} LogFile;

typedef struct {
    PyObject_HEAD
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int requested;      /* a round asked for and not yet begun */
    int running;        /* a round begun and not yet reported */
    int stopping;
    int dir_fd;
    int inotify_fd;
    int event_fd;
    int dir_dirty;      /* a log appeared since the directory's last fsync */
    int overflowed;     /* inotify lost events: list the directory next round */
    LogFile logs[MAX_LOGS];
    int nlogs;
    int error;          /* sticky errno of a failed fsync (0: none), under mu */
    char error_where[96];
    int pending_error;  /* a failure outside a round's fsyncs (thread-only; sticky) */
    char pending_where[96];
    unsigned long long rounds;      /* under mu, as the two below */
    int open_logs;
    unsigned long long newest_log;
    long thread_id;     /* the thread's kernel id, once it runs (under mu) */
    int policy;         /* its scheduling policy, once it runs (under mu) */
} Syncer;

/* The number of a file named "<digits>.log", or 0 if the name is not a WAL file's. */
static unsigned long long
log_number(const char *name)
{
    size_t n = strlen(name);
    if (n < 5 || strcmp(name + n - 4, ".log") != 0)
        return 0;
    unsigned long long v = 0;
    for (size_t i = 0; i < n - 4; i++) {
        if (name[i] < '0' || name[i] > '9')
            return 0;
        v = v * 10 + (unsigned long long)(name[i] - '0');
    }
    return v;
}

/* A failure outside a round's fsyncs: every round from now on reports it. */
static void
note_failure(Syncer *s, int error, const char *what, const char *name)
{
    if (s->pending_error != 0)
        return;
    s->pending_error = error;
    snprintf(s->pending_where, sizeof s->pending_where, what, name);
}

/* Called by the thread during a round, or before the thread starts. */
static void
add_log(Syncer *s, const char *name, unsigned long long number)
{
    for (int i = 0; i < s->nlogs; i++)
        if (s->logs[i].number == number)
            return;
    int fd = openat(s->dir_fd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        /* Gone from the directory already: RocksDB only archives a log whose data is in
         * an SST file, or deletes one it never used; either way nothing here to sync. Any
         * other failure (no fd left, say) would leave a log unsynced: the rounds fail. */
        if (errno != ENOENT)
            note_failure(s, errno, "opening %s", name);
        return;
    }
    if (s->nlogs == MAX_LOGS) {
        /* Cannot happen with one writer (older logs are closed every round), but never
         * drop a log silently: sync and close the oldest now. */
        if (fdatasync(s->logs[0].fd) != 0) {
            int error = errno;
            char oldest[32];
            snprintf(oldest, sizeof oldest, "%06llu.log", s->logs[0].number);
            note_failure(s, error, "fdatasync of %s", oldest);
        }
        close(s->logs[0].fd);
        memmove(&s->logs[0], &s->logs[1], sizeof(LogFile) * (MAX_LOGS - 1));
        s->nlogs--;
    }
    s->logs[s->nlogs].fd = fd;
    s->logs[s->nlogs].number = number;
    s->nlogs++;
    s->dir_dirty = 1;
}

static void
list_directory(Syncer *s)
{
    int fd = fcntl(s->dir_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        note_failure(s, errno, "listing the %s", "directory");
        return;
    }
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        note_failure(s, errno, "listing the %s", "directory");
        close(fd);
        return;
    }
    rewinddir(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        unsigned long long number = log_number(e->d_name);
        if (number)
            add_log(s, e->d_name, number);
    }
    closedir(d);
    s->dir_dirty = 1;
}

static void
drain_inotify(Syncer *s)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t len = read(s->inotify_fd, buf, sizeof buf);
        if (len < 0 && errno != EAGAIN && errno != EINTR)
            note_failure(s, errno, "reading the %s", "inotify queue");
        if (len <= 0)
            break;
        for (char *p = buf; p < buf + len;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->mask & IN_Q_OVERFLOW)
                s->overflowed = 1;
            else if (ev->len) {
                unsigned long long number = log_number(ev->name);
                if (number)
                    add_log(s, ev->name, number);
            }
            p += sizeof(struct inotify_event) + ev->len;
        }
    }
    if (s->overflowed) {
        s->overflowed = 0;
        list_directory(s);
    }
}

static void
one_round(Syncer *s, int *error, char *where, size_t where_size)
{
    drain_inotify(s);
    if (s->pending_error) {
        *error = s->pending_error;
        snprintf(where, where_size, "%s", s->pending_where);
        return;
    }
    for (int i = 0; i < s->nlogs; i++) {
        if (fdatasync(s->logs[i].fd) != 0) {
            *error = errno;
            snprintf(where, where_size, "fdatasync of %06llu.log", s->logs[i].number);
            return;
        }
    }
    if (s->dir_dirty) {
        if (fsync(s->dir_fd) != 0) {
            *error = errno;
            snprintf(where, where_size, "fsync of the directory");
            return;
        }
        s->dir_dirty = 0;
    }
    if (s->nlogs > 1) {
        /* Only the newest log takes writes; the older ones are synced for good now. */
        int newest = 0;
        for (int i = 1; i < s->nlogs; i++)
            if (s->logs[i].number > s->logs[newest].number)
                newest = i;
        LogFile keep = s->logs[newest];
        for (int i = 0; i < s->nlogs; i++)
            if (i != newest)
                close(s->logs[i].fd);
        s->logs[0] = keep;
        s->nlogs = 1;
    }
}

static void *
serve(void *arg)
{
    Syncer *s = (Syncer *)arg;
    /* Woken by start(), this thread only issues fsyncs and sleeps in them: under the default
     * policy the wake-up preempts the event loop that called start() (a switch away and back
     * per round, in the middle of the loop's turn). SCHED_BATCH wakes it without preempting:
     * it runs on an idle CPU at once, or when the loop blocks or its slice ends. A policy the
     * operator chose for the process (realtime, SCHED_IDLE) is kept as it is. */
    int policy;
    struct sched_param param;
    if (pthread_getschedparam(pthread_self(), &policy, &param) == 0 && policy == SCHED_OTHER) {
        param.sched_priority = 0;
        if (pthread_setschedparam(pthread_self(), SCHED_BATCH, &param) == 0)
            policy = SCHED_BATCH;
    }
    pthread_mutex_lock(&s->mu);
    s->thread_id = (long)syscall(SYS_gettid);
    s->policy = policy;
    for (;;) {
        while (!s->requested && !s->stopping)
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->stopping)
            break;
        s->requested = 0;
        s->running = 1;
        int failed = s->error;
        pthread_mutex_unlock(&s->mu);
        /* The round's own state (logs, dir_dirty) is this thread's alone while it runs. */
        int error = 0;
        char where[96] = "";
        if (failed == 0)
            one_round(s, &error, where, sizeof where);
        pthread_mutex_lock(&s->mu);
        if (error != 0 && s->error == 0) {
            s->error = error;
            memcpy(s->error_where, where, sizeof where);
        }
        s->rounds++;
        s->open_logs = s->nlogs;
        s->newest_log = 0;
        for (int i = 0; i < s->nlogs; i++)
            if (s->logs[i].number > s->newest_log)
                s->newest_log = s->logs[i].number;
        s->running = 0;
        uint64_t one = 1;
        /* The eventfd counter cannot overflow at one write per round. */
        ssize_t ignored = write(s->event_fd, &one, sizeof one);
        (void)ignored;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void
release(Syncer *s)
{
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(s->thread, NULL);
        Py_END_ALLOW_THREADS
        s->thread_started = 0;
    }
    for (int i = 0; i < s->nlogs; i++)
        close(s->logs[i].fd);
    s->nlogs = 0;
    if (s->inotify_fd >= 0)
        close(s->inotify_fd);
    if (s->event_fd >= 0)
        close(s->event_fd);
    if (s->dir_fd >= 0)
        close(s->dir_fd);
    s->inotify_fd = s->event_fd = s->dir_fd = -1;
}

static int
Syncer_init(Syncer *s, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"directory", NULL};
    PyObject *path_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&", kwlist, PyUnicode_FSConverter,
                                     &path_obj))
        return -1;
    if (s->thread_started || s->dir_fd >= 0) {
        Py_DECREF(path_obj);
        PyErr_SetString(PyExc_RuntimeError, "Syncer is already initialised");
        return -1;
    }
    const char *path = PyBytes_AS_STRING(path_obj);
    /* The watch first, then the listing: a log made in between is in one or both. */
    s->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (s->inotify_fd < 0 ||
        inotify_add_watch(s->inotify_fd, path, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
        Py_DECREF(path_obj);
        release(s);
        return -1;
    }
    s->dir_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
        Py_DECREF(path_obj);
        release(s);
        return -1;
    }
    Py_DECREF(path_obj);
    s->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->event_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        release(s);
        return -1;
    }
    list_directory(s);
    int rc = pthread_create(&s->thread, NULL, serve, s);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        release(s);
        return -1;
    }
    s->thread_started = 1;
    return 0;
}

static PyObject *
Syncer_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    Syncer *s = (Syncer *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->dir_fd = s->inotify_fd = s->event_fd = -1;
    return (PyObject *)s;
}

static void
Syncer_dealloc(Syncer *s)
{
    release(s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *
Syncer_start(Syncer *s, PyObject *Py_UNUSED(ignored))
{
    if (!s->thread_started) {
        PyErr_SetString(PyExc_ValueError, "the syncer is closed");
        return NULL;
    }
    pthread_mutex_lock(&s->mu);
    int busy = s->requested || s->running;
    if (!busy) {
        s->requested = 1;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (busy) {
        PyErr_SetString(PyExc_RuntimeError, "a round is already running");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Syncer_finish(Syncer *s, PyObject *Py_UNUSED(ignored))
{
    /* Called once the eventfd is readable: consumes it; None, or the error as (errno, where). */
    uint64_t count;
    if (s->event_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "the syncer is closed");
        return NULL;
    }
    if (read(s->event_fd, &count, sizeof count) != sizeof count)
        Py_RETURN_FALSE;        /* nothing finished: a spurious wake-up */
    pthread_mutex_lock(&s->mu);
    int error = s->error;
    char where[96];
    memcpy(where, s->error_where, sizeof where);
    pthread_mutex_unlock(&s->mu);
    if (error == 0)
        Py_RETURN_TRUE;
    return Py_BuildValue("(is)", error, where);
}

static PyObject *
Syncer_fileno(Syncer *s, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(s->event_fd);
}

static PyObject *
Syncer_close(Syncer *s, PyObject *Py_UNUSED(ignored))
{
    release(s);
    Py_RETURN_NONE;
}

static PyObject *
Syncer_stats(Syncer *s, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&s->mu);
    unsigned long long rounds = s->rounds;
    int nlogs = s->open_logs;
    unsigned long long newest = s->newest_log;
    long thread_id = s->thread_id;
    int policy = s->policy;
    pthread_mutex_unlock(&s->mu);
    return Py_BuildValue("{s:K,s:i,s:K,s:l,s:i}", "rounds", rounds, "open_logs", nlogs,
                         "newest_log", newest, "thread_id", thread_id, "policy", policy);
}

static PyMethodDef Syncer_methods[] = {
    {"start", (PyCFunction)Syncer_start, METH_NOARGS,
     "Begin a round (RuntimeError if one is already running)."},
    {"finish", (PyCFunction)Syncer_finish, METH_NOARGS,
     "After the eventfd turned readable: True when the round succeeded, False on a spurious "
     "wake-up, else (errno, what failed)."},
    {"fileno", (PyCFunction)Syncer_fileno, METH_NOARGS, "The eventfd to watch."},
    {"close", (PyCFunction)Syncer_close, METH_NOARGS, "Stop the thread, close every fd."},
    {"stats", (PyCFunction)Syncer_stats, METH_NOARGS,
     "Rounds done, logs held open, the thread's kernel id (0 until it runs) and its scheduling "
     "policy."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SyncerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hacluster._walsync.Syncer",
    .tp_basicsize = sizeof(Syncer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "fsyncs a directory's WAL files in a native thread, one round per start()",
    .tp_new = Syncer_new,
    .tp_init = (initproc)Syncer_init,
    .tp_dealloc = (destructor)Syncer_dealloc,
    .tp_methods = Syncer_methods,
};

static struct PyModuleDef walsync_module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_walsync",
    .m_doc = "Group commit's WAL fsync in a native thread (see hacluster.groupsync).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__walsync(void)
{
    if (PyType_Ready(&SyncerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&walsync_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SyncerType);
    if (PyModule_AddObject(m, "Syncer", (PyObject *)&SyncerType) < 0) {
        Py_DECREF(&SyncerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
