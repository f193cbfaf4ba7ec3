/* server/queue.h — the bounded priority queue between HTTP threads and the engine.
 *
 * Design: a sorted array (highest priority first, then arrival order) under one mutex; the
 * capacity is small (queue_size, tens to thousands), so insertion by shifting is cheaper than a
 * heap and lets the engine remove any job (deadline, hang-up) in place. Capacity is taken in two
 * steps: an HTTP thread reserves a slot (which may fail: full, or closed for draining), suspends
 * its connection and only then pushes, so the engine can never resume a connection that is not
 * suspended yet. The engine waits on a condition variable when it has nothing to run.
 *
 * Threads: reserve/unreserve/push from HTTP threads; pop/remove/snapshot/wait from the engine
 * thread; close/wake/pending/full from any. The queue never touches a job's fields except seq and
 * p.priority. */
#ifndef VS_SRV_QUEUE_H
#define VS_SRV_QUEUE_H

#include <stddef.h>

#include "common/status.h"
#include "server/job.h"

typedef struct vs_srv_queue vs_srv_queue;

typedef enum { VS_SRV_Q_OK = 0, VS_SRV_Q_FULL, VS_SRV_Q_CLOSED } vs_srv_q_result;

vs_status vs_srv_queue_new(size_t capacity, vs_srv_queue **out, vs_err *err);
void vs_srv_queue_free(vs_srv_queue *q); /* NULL ok; the queue must be empty */

/* Takes one slot for a job about to be pushed. FULL: capacity slots are queued or reserved;
 * CLOSED: the queue was closed (draining). */
vs_srv_q_result vs_srv_queue_reserve(vs_srv_queue *q);
void vs_srv_queue_unreserve(vs_srv_queue *q);
/* Pushes into a reserved slot (cannot fail) and wakes the engine. Sets j->seq. */
void vs_srv_queue_push(vs_srv_queue *q, vs_srv_job *j);

/* The first job (highest priority, oldest), removed; NULL when empty. */
vs_srv_job *vs_srv_queue_pop(vs_srv_queue *q);
/* Removes j if queued; 1 when it was. */
int vs_srv_queue_remove(vs_srv_queue *q, vs_srv_job *j);
/* Copies up to cap queued job pointers (queue order) into out; returns how many. */
size_t vs_srv_queue_snapshot(vs_srv_queue *q, vs_srv_job **out, size_t cap);
/* Waits until a push, a wake or timeout_s passes. Returns at once if jobs are queued. */
void vs_srv_queue_wait(vs_srv_queue *q, double timeout_s);
void vs_srv_queue_wake(vs_srv_queue *q);

/* After close, reserve answers CLOSED; pushes into slots already reserved still succeed. */
void vs_srv_queue_close(vs_srv_queue *q);
size_t vs_srv_queue_length(vs_srv_queue *q);  /* jobs queued */
size_t vs_srv_queue_pending(vs_srv_queue *q); /* jobs queued + slots reserved */
/* Whether reserve would answer FULL now, from one atomic load and no lock: a hint for refusing
 * early (the slot may free or fill a moment later; reserve stays the one that decides). */
int vs_srv_queue_full(vs_srv_queue *q);
size_t vs_srv_queue_capacity(const vs_srv_queue *q);

#endif
