/* runtime/cuda_emu/cuda_emu.cc — the emulated CUDA device's runtime: launches as blocks of fibers,
 * barriers and warp exchanges, guarded device memory, streams and events, cuBLAS on OpenBLAS.
 * What is and is not modelled is listed in cuda_emu.h.
 *
 * Fibers: a block's threads are cooperative fibers on the launching thread. The scheduler resumes
 * every runnable thread in a fixed order (ascending, or descending with
 * VARSERVE_CUDA_EMU_ORDER=reverse); a thread runs until it reaches a barrier or returns. A barrier
 * releases its waiters when every live thread of its group (the block, or the warp's lanes in the
 * mask) has arrived; a thread that returns leaves every group, as on Volta and later GPUs. A pass
 * in which no thread can run while some are live is a deadlock (threads waiting at different
 * barriers) and fails the launch. On x86-64 a fiber switch is a few register moves (below); other
 * architectures use ucontext, which is slower (a signal-mask system call per switch).
 *
 * Errors follow CUDA's two kinds: a launch or argument error is returned (and remembered for
 * cudaGetLastError, which clears it); a fault (damaged guard bytes, an operand outside device
 * memory, an injected fault, a deadlock) is sticky: every later call returns it, for the life of
 * the process, as a GPU context is lost. */
#include "runtime/cuda_emu/cuda_emu.h"

#include <cblas.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuda_emu {
__thread uint3 t_thread_idx, t_block_idx;
__thread uint3 t_block_dim, t_grid_dim;
__thread unsigned char *t_dynamic_smem;
} // namespace cuda_emu

using namespace cuda_emu;

/* ---- the device --------------------------------------------------------------------------------- */

#define GUARD 256           /* bytes watched on each side of an allocation */
#define GUARD_BYTE 0xA5
#define SMEM_DEFAULT (48 * 1024)
#define SMEM_OPTIN 232448   /* an H100's opt-in shared memory per block */
#define SMEM_POISON 0xFF    /* fresh shared memory reads as NaN / −1 */
#define STACK_BYTES (64 * 1024)

namespace {

struct allocation {
    size_t bytes;
    unsigned char *base; /* bytes + 2·GUARD from here */
};

struct device {
    std::mutex mu;
    std::map<uintptr_t, allocation> mem; /* by user address */
    std::map<uintptr_t, size_t> pinned;  /* host allocations from cudaHostAlloc */
    std::map<const void *, int> max_dyn_smem;
    size_t total = 0, used = 0;
    std::atomic<int> sticky{cudaSuccess};
    std::atomic<long> launches{0};
    long fault_at = 0; /* VARSERVE_CUDA_EMU_FAULT_AT */
    int reverse = 0;   /* VARSERVE_CUDA_EMU_ORDER=reverse */
    int n_devices = 1; /* VARSERVE_CUDA_EMU_DEVICES */
    device()
    {
        const char *m = getenv("VARSERVE_CUDA_EMU_MEMORY_MB");
        long mb = m && *m ? atol(m) : 16384;
        total = (size_t)(mb > 0 ? mb : 16384) << 20;
        const char *f = getenv("VARSERVE_CUDA_EMU_FAULT_AT");
        fault_at = f && *f ? atol(f) : 0;
        const char *o = getenv("VARSERVE_CUDA_EMU_ORDER");
        reverse = o && strcmp(o, "reverse") == 0;
        const char *d = getenv("VARSERVE_CUDA_EMU_DEVICES");
        n_devices = d && *d ? atoi(d) : 1;
    }
};

device &dev()
{
    static device d;
    return d;
}

__thread cudaError_t t_last = cudaSuccess;

} // namespace

struct cuda_emu_stream {
    unsigned magic;
};
struct cuda_emu_event {
    unsigned magic;
    double t_ms;
    int recorded;
};
struct cuda_emu_blas {
    unsigned magic;
    cudaStream_t st;
    cublasMath_t math;
};
#define STREAM_MAGIC 0x5354524du
#define EVENT_MAGIC 0x45564e54u
#define BLAS_MAGIC 0x424c4153u

static cudaError_t fail(cudaError_t e)
{
    t_last = e;
    return e;
}

/* A fault: sticky from now on. */
static cudaError_t fault(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static cudaError_t fault(cudaError_t e, const char *fmt, ...)
{
    int expect = cudaSuccess;
    if (dev().sticky.compare_exchange_strong(expect, (int)e)) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "cuda-emu: device fault (%s): ", cudaGetErrorString(e));
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    return fail((cudaError_t)dev().sticky.load());
}

/* the sticky error, or success */
static cudaError_t sticky() { return (cudaError_t)dev().sticky.load(); }

/* Does [p, p + bytes) lie inside one device allocation? Caller holds mu. */
static bool in_device_locked(const void *p, size_t bytes)
{
    device &d = dev();
    uintptr_t a = (uintptr_t)p;
    auto it = d.mem.upper_bound(a);
    if (it == d.mem.begin())
        return false;
    --it;
    return a >= it->first && a - it->first <= it->second.bytes && bytes <= it->second.bytes - (a - it->first);
}

static bool in_device(const void *p, size_t bytes)
{
    std::lock_guard<std::mutex> g(dev().mu);
    return in_device_locked(p, bytes);
}

static bool guard_ok(const unsigned char *g)
{
    static const std::vector<unsigned char> want(GUARD, GUARD_BYTE);
    return memcmp(g, want.data(), GUARD) == 0;
}

static bool guards_intact(const allocation &al)
{
    return guard_ok(al.base) && guard_ok(al.base + GUARD + al.bytes);
}

/* After each kernel or cuBLAS call: a damaged guard is a fault naming what ran. */
static void check_guards(const char *what)
{
    device &d = dev();
    std::lock_guard<std::mutex> g(d.mu);
    for (auto &kv : d.mem)
        if (!guards_intact(kv.second)) {
            bool before = !guard_ok(kv.second.base);
            fault(cudaErrorIllegalAddress,
                  "%s wrote %s the %zu-byte device allocation at %p (guard bytes changed)", what,
                  before ? "before the start of" : "past the end of", kv.second.bytes,
                  (void *)kv.first);
            memset(kv.second.base, GUARD_BYTE, GUARD); /* report each damage once */
            memset(kv.second.base + GUARD + kv.second.bytes, GUARD_BYTE, GUARD);
        }
}

/* ---- fibers ------------------------------------------------------------------------------------- */

namespace {
enum { T_NEW, T_RUN, T_WAIT_BLOCK, T_WAIT_WARP, T_DONE };

/* A stack a thread runs on. A thread that returns without having waited hands its fiber to the
 * next thread of the pass when that one has not started yet, so a kernel without barriers runs a
 * whole block on one fiber with no switch at all. */
struct fiber {
    void *sp; /* saved stack pointer while switched out (x86-64) */
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
};

struct thread {
    int state, fib;
    unsigned lin;   /* linear index in the block */
    unsigned wmask; /* the mask of the warp operation it waits at */
    uint3 tid;
};

/* One lane's part of a shuffle or vote: what it brings, and what the release hands it. */
struct lane_exchange {
    uint64_t v, result;
    int src; /* the lane it reads (negative: its own value); unused by a ballot */
    int ballot;
    unsigned mask;
};

/* One lane's part of a wmma collective (cuda_emu::wmma_warp's arguments). */
struct wmma_lane {
    int op, use, col;
    void *frag, *mem;
    unsigned ldm;
    const void *a, *b, *c;
};

struct block_run {
    std::vector<thread> t;
    std::vector<fiber> f;
    std::vector<int> free_fib;
    int n = 0, live = 0, n_wait_block = 0, cur = 0, reverse = 0;
    int count_acc = 0, count_result = 0;
    unsigned warp_live[32], warp_arrived[32];
    unsigned warp_wmma[32]; /* lanes of each warp waiting at a wmma collective */
    std::vector<wmma_lane> wm; /* [thread]: what each lane brought to its wmma collective */
    std::vector<lane_exchange> xs; /* [thread]: each lane's shuffle or vote */
    const char *name = nullptr; /* the kernel, for messages */
    void (*body)(void *) = nullptr;
    void *ctx = nullptr;
    fiber sched; /* the launching thread's own context while a fiber runs */
    unsigned char *stacks = nullptr; /* n_stacks × (guard page + STACK_BYTES) */
    int n_stacks = 0;
    size_t page = 4096;
    std::vector<unsigned char> smem;
    ~block_run()
    {
        if (stacks)
            munmap(stacks, (size_t)n_stacks * (page + STACK_BYTES));
    }
};

thread_local block_run t_run;
} // namespace

#if defined(__x86_64__)
/* vs_emu_switch(save, load): pushes the callee-saved registers, stores the stack pointer in
 * *save and resumes the stack `load`. A new fiber's stack is made to look as if it had called
 * vs_emu_switch from vs_emu_trampoline, which calls r12(rbx). MXCSR and the x87 control word are
 * not switched: kernels and the scheduler share one floating-point environment. */
extern "C" void vs_emu_switch(void **save, void *load);
extern "C" void vs_emu_trampoline(void);
asm(".text\n"
    ".globl vs_emu_switch\n"
    ".type vs_emu_switch,@function\n"
    "vs_emu_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size vs_emu_switch, .-vs_emu_switch\n"
    ".globl vs_emu_trampoline\n"
    ".type vs_emu_trampoline,@function\n"
    "vs_emu_trampoline:\n"
    "  movq %rbx, %rdi\n"
    "  callq *%r12\n"
    "  ud2\n"
    ".size vs_emu_trampoline, .-vs_emu_trampoline\n"
    ".section .note.GNU-stack,\"\",@progbits\n"
    ".text\n");
#endif

static void fiber_main(void *arg);

#if !defined(__x86_64__)
static void fiber_main_uc(unsigned hi, unsigned lo)
{
    fiber_main((void *)(((uintptr_t)hi << 32) | lo));
}
#endif

/* saves the running context into *from and resumes *to */
static void swap(fiber *from, fiber *to)
{
#if defined(__x86_64__)
    vs_emu_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}

static void to_scheduler(block_run *b, fiber *f) { swap(f, &b->sched); }
static void to_fiber(block_run *b, fiber *f) { swap(&b->sched, f); }

/* the thread that runs now waits (its state set); back when it is resumed */
static void yield(block_run *b) { to_scheduler(b, &b->f[(size_t)b->t[(size_t)b->cur].fib]); }

static unsigned char *stack_of(block_run *b, int i)
{
    return b->stacks + (size_t)i * (b->page + STACK_BYTES) + b->page;
}

/* makes fiber i start fiber_main on a fresh stack */
static void fiber_init(block_run *b, int i)
{
    fiber *f = &b->f[(size_t)i];
    unsigned char *lo = stack_of(b, i);
#if defined(__x86_64__)
    uintptr_t top = ((uintptr_t)(lo + STACK_BYTES)) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 72); /* after the ret below, rsp = top − 16: aligned */
    sp[0] = 0;                                 /* r15 */
    sp[1] = 0;                                 /* r14 */
    sp[2] = 0;                                 /* r13 */
    sp[3] = (uint64_t)(uintptr_t)&fiber_main;  /* r12: the entry */
    sp[4] = (uint64_t)(uintptr_t)b;            /* rbx: its argument */
    sp[5] = 0;                                 /* rbp */
    sp[6] = (uint64_t)(uintptr_t)&vs_emu_trampoline;
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = lo;
    f->uc.uc_stack.ss_size = STACK_BYTES;
    f->uc.uc_link = NULL;
    uintptr_t a = (uintptr_t)b;
    makecontext(&f->uc, (void (*)())fiber_main_uc, 2, (unsigned)(a >> 32), (unsigned)a);
#endif
}

static bool ensure_stacks(block_run *b, int n)
{
    if (b->n_stacks >= n)
        return true;
    if (b->stacks)
        munmap(b->stacks, (size_t)b->n_stacks * (b->page + STACK_BYTES));
    b->stacks = NULL;
    b->n_stacks = 0;
    b->page = (size_t)sysconf(_SC_PAGESIZE);
    size_t one = b->page + STACK_BYTES;
    void *m = mmap(NULL, one * (size_t)n, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return false;
    b->stacks = (unsigned char *)m;
    b->n_stacks = n;
    for (int i = 0; i < n; i++) /* a stack overflow hits a guard page, not a neighbour */
        mprotect(b->stacks + (size_t)i * one, b->page, PROT_NONE);
    b->f.resize((size_t)n);
    return true;
}

static void release_block(block_run *b)
{
    for (int i = 0; i < b->n; i++)
        if (b->t[(size_t)i].state == T_WAIT_BLOCK)
            b->t[(size_t)i].state = T_RUN;
    b->n_wait_block = 0;
    b->count_result = b->count_acc;
    b->count_acc = 0;
}

static void wmma_perform(block_run *b, unsigned w, unsigned m);

/* Warp w's lanes m (all waiting) are released: each that came to a shuffle or vote gets its result
 * now, from the values of the lanes released with it, so no later exchange can overwrite what it
 * reads (a lane is released again only after it has resumed and arrived anew). Lanes waiting with
 * another mask stay. */
static void release_warp(block_run *b, unsigned w, unsigned m)
{
    unsigned wm = b->warp_wmma[w] & m;
    if (wm)
        wmma_perform(b, w, m);
    lane_exchange *X = &b->xs[(size_t)w * 32];
    unsigned ex = m & ~wm, set = 0; /* the released exchanges, and which of them hold a non-zero v */
    for (unsigned l = 0; l < 32; l++)
        if ((ex & (1u << l)) && X[l].v)
            set |= 1u << l;
    for (unsigned l = 0; l < 32; l++) {
        if (!(ex & (1u << l)))
            continue;
        lane_exchange *x = &X[l];
        x->result = x->ballot ? (uint64_t)(set & x->mask) : x->src < 0 ? x->v : X[x->src & 31].v;
    }
    for (unsigned l = 0; l < 32; l++)
        if (m & (1u << l))
            b->t[(size_t)(w * 32 + l)].state = T_RUN;
    b->warp_arrived[w] &= ~m;
}

/* Releases lane l's group of warp w if every live lane of its mask (and l) has arrived. */
static bool release_if_complete(block_run *b, unsigned w, unsigned l)
{
    unsigned need = (b->t[(size_t)(w * 32 + l)].wmask & b->warp_live[w]) | (1u << l);
    if ((b->warp_arrived[w] & need) != need)
        return false;
    release_warp(b, w, need);
    return true;
}

/* thread cur returned: it leaves the block's and its warp's barriers */
static void thread_done(block_run *b)
{
    thread *t = &b->t[(size_t)b->cur];
    t->state = T_DONE;
    b->live--;
    unsigned w = t->lin / 32;
    b->warp_live[w] &= ~(1u << (t->lin % 32));
    if (b->n_wait_block > 0 && b->n_wait_block == b->live)
        release_block(b);
    for (unsigned l = 0; l < 32; l++) /* its leaving may complete the groups of waiting lanes */
        if (b->warp_arrived[w] & (1u << l))
            (void)release_if_complete(b, w, l);
}

static void fiber_main(void *arg)
{
    block_run *b = (block_run *)arg;
    for (;;) {
        b->body(b->ctx);
        thread_done(b);
        int fib = b->t[(size_t)b->cur].fib;
        int next = b->reverse ? b->cur - 1 : b->cur + 1; /* the scheduler's next in its pass */
        if (next >= 0 && next < b->n && b->t[(size_t)next].state == T_NEW) {
            thread *t = &b->t[(size_t)next];
            t->state = T_RUN;
            t->fib = fib;
            b->cur = next;
            t_thread_idx = t->tid;
            continue;
        }
        b->free_fib.push_back(fib); /* its stack starts afresh when next taken */
        fiber dead;
        to_scheduler(b, &dead);
        abort(); /* never resumed */
    }
}

/* runs thread i (starting it on a free fiber when new) until it waits or its fiber returns */
static void run_thread(block_run *b, int i)
{
    thread *t = &b->t[(size_t)i];
    if (t->state == T_NEW) {
        t->fib = b->free_fib.back();
        b->free_fib.pop_back();
        fiber_init(b, t->fib);
        t->state = T_RUN;
    }
    b->cur = i;
    t_thread_idx = t->tid;
    to_fiber(b, &b->f[(size_t)t->fib]);
}

/* ---- wmma --------------------------------------------------------------------------------------- */

/* Row and column of element e of lane l's fragment: the mapping cuda_emu.h documents. */
static void wmma_at(int use, unsigned l, int e, int *row, int *col)
{
    int g = (int)(l / 4), pair = 2 * (int)(l % 4) + (e & 1), half = 8 * ((e >> 1) & 1);
    if (use == WMMA_B) {
        *row = pair + half;
        *col = g + 8 * (e >> 2);
    } else {
        *row = g + half;
        *col = pair + 8 * (e >> 2);
    }
}

static float bf16_value(const void *x, int e)
{
    return __uint_as_float((unsigned)((const unsigned short *)x)[e] << 16);
}

static const char *wmma_name(int op)
{
    return op == WMMA_LOAD ? "load_matrix_sync" : op == WMMA_STORE ? "store_matrix_sync" : "mma_sync";
}

/* Warp w's lanes m have arrived at a barrier and some of them at a wmma collective: checks that
 * it is the whole warp at one operation on one tile, then performs it for every lane (on the
 * stack of the lane that arrived last; the others' fragments are on their suspended stacks). */
static void wmma_perform(block_run *b, unsigned w, unsigned m)
{
    unsigned at = b->warp_wmma[w] & m;
    b->warp_wmma[w] &= ~m;
    const wmma_lane *L = &b->wm[(size_t)w * 32];
    const wmma_lane &z = L[__builtin_ctz(at)];
    bool same = at == 0xffffffffu && m == 0xffffffffu;
    for (unsigned l = 0; same && l < 32; l++)
        same = L[l].op == z.op && L[l].use == z.use &&
               (z.op == WMMA_MMA || (L[l].mem == z.mem && L[l].ldm == z.ldm && L[l].col == z.col));
    if (!same) {
        if (at != 0xffffffffu)
            fault(cudaErrorLaunchFailure,
                  "%s, block (%u,%u,%u), warp %u: %s reached by lanes %08x only (the others are at "
                  "another warp operation, have returned or do not exist; a wmma collective needs "
                  "all 32 lanes of a converged warp)",
                  b->name, t_block_idx.x, t_block_idx.y, t_block_idx.z, w, wmma_name(z.op), at);
        else
            fault(cudaErrorLaunchFailure,
                  "%s, block (%u,%u,%u), warp %u: the lanes of a wmma collective are at different "
                  "operations or tiles (every lane must pass the same pointer, ldm and layout)",
                  b->name, t_block_idx.x, t_block_idx.y, t_block_idx.z, w);
        return;
    }
    if (z.op == WMMA_MMA) {
        float A[16][16], B[16][16], D[32][8];
        for (unsigned l = 0; l < 32; l++)
            for (int e = 0; e < 8; e++) {
                int r, c;
                wmma_at(WMMA_A, l, e, &r, &c);
                A[r][c] = bf16_value(L[l].a, e);
                wmma_at(WMMA_B, l, e, &r, &c);
                B[r][c] = bf16_value(L[l].b, e);
            }
        for (unsigned l = 0; l < 32; l++)
            for (int e = 0; e < 8; e++) {
                int r, c;
                wmma_at(WMMA_C, l, e, &r, &c);
                float acc = ((const float *)L[l].c)[e];
                for (int k = 0; k < 16; k++)
                    acc += A[r][k] * B[k][c]; /* exact product, FP32 sum */
                D[l][e] = acc;
            }
        for (unsigned l = 0; l < 32; l++) /* after every read: d may be a lane's own c */
            memcpy(L[l].frag, D[l], sizeof D[l]);
        return;
    }
    size_t elem = z.use == WMMA_C ? 4 : 2;
    if ((uintptr_t)z.mem % 32 != 0 || (size_t)z.ldm * elem % 16 != 0) {
        fault(cudaErrorMisalignedAddress,
              "%s, block (%u,%u,%u), warp %u: %s at %p with ldm %u (the pointer must be aligned to "
              "256 bits and ldm a multiple of %zu elements)",
              b->name, t_block_idx.x, t_block_idx.y, t_block_idx.z, w, wmma_name(z.op), z.mem,
              z.ldm, 16 / elem);
        return;
    }
    for (unsigned l = 0; l < 32; l++)
        for (int e = 0; e < 8; e++) {
            int r, c;
            wmma_at(z.use, l, e, &r, &c);
            size_t off = z.col ? (size_t)c * z.ldm + (size_t)r : (size_t)r * z.ldm + (size_t)c;
            unsigned char *p = (unsigned char *)z.mem + off * elem;
            unsigned char *x = (unsigned char *)L[l].frag + (size_t)e * elem;
            if (z.op == WMMA_LOAD)
                memcpy(x, p, elem);
            else
                memcpy(p, x, elem);
        }
}

namespace cuda_emu {

void block_barrier() { (void)block_count(0); }

int block_count(int pred)
{
    block_run *b = &t_run;
    b->t[(size_t)b->cur].state = T_WAIT_BLOCK;
    b->count_acc += pred != 0;
    if (++b->n_wait_block == b->live)
        release_block(b);
    yield(b);
    return b->count_result;
}

/* the warp's live lanes in mask arrive; all go on when all have (the lanes of one operation pass
 * the same mask, so the last of them to arrive completes it) */
static void warp_wait(block_run *b, unsigned mask)
{
    thread *t = &b->t[(size_t)b->cur];
    unsigned w = t->lin / 32;
    t->state = T_WAIT_WARP;
    t->wmask = mask;
    b->warp_arrived[w] |= 1u << (t->lin % 32);
    (void)release_if_complete(b, w, t->lin % 32);
    yield(b);
}

/* The lane brings v (and the lane it reads, or a ballot's predicate) and waits for the warp; the
 * release resolves every released lane's result (release_warp). */
static uint64_t exchange(block_run *b, unsigned mask, uint64_t v, int src, int ballot)
{
    thread *t = &b->t[(size_t)b->cur];
    lane_exchange *x = &b->xs[t->lin];
    *x = lane_exchange{v, 0, src, ballot, mask};
    warp_wait(b, mask);
    return x->result;
}

uint64_t warp_exchange(unsigned mask, uint64_t v, int src)
{
    return exchange(&t_run, mask, v, src, 0);
}

unsigned warp_ballot(unsigned mask, int pred)
{
    return (unsigned)exchange(&t_run, mask, pred != 0, -1, 1);
}

void wmma_warp(int op, int use, void *frag, void *mem, unsigned ldm, int col, const void *a,
               const void *b, const void *c)
{
    block_run *bk = &t_run;
    thread *t = &bk->t[(size_t)bk->cur];
    bk->wm[t->lin] = wmma_lane{op, use, col, frag, mem, ldm, a, b, c};
    bk->warp_wmma[t->lin / 32] |= 1u << (t->lin % 32);
    warp_wait(bk, 0xffffffffu); /* the last lane to arrive performs it (release_warp) */
}

cudaError_t func_set_max_dynamic_smem(const void *fn, int bytes)
{
    if (sticky())
        return fail(sticky());
    if (bytes < 0 || bytes > SMEM_OPTIN)
        return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(dev().mu);
    dev().max_dyn_smem[fn] = bytes;
    return cudaSuccess;
}

void func_get_attributes(cudaFuncAttributes *a, const void *fn)
{
    memset(a, 0, sizeof *a);
    a->maxThreadsPerBlock = 1024;
    std::lock_guard<std::mutex> g(dev().mu);
    auto it = dev().max_dyn_smem.find(fn);
    a->maxDynamicSharedSizeBytes = it == dev().max_dyn_smem.end() ? SMEM_DEFAULT : it->second;
}

void run(const char *name, const void *fn, dim3 grid, dim3 block, size_t smem, cudaStream_t st,
         void (*body)(void *), void *ctx)
{
    device &d = dev();
    if (sticky()) {
        fail(sticky());
        return;
    }
    size_t nthreads = (size_t)block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
        grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
        grid.z > 65535) {
        fprintf(stderr, "cuda-emu: launch of %s with grid (%u,%u,%u) block (%u,%u,%u): invalid configuration\n",
                name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    if (st && st->magic != STREAM_MAGIC) {
        fail(cudaErrorInvalidResourceHandle);
        return;
    }
    int limit = SMEM_DEFAULT;
    {
        std::lock_guard<std::mutex> g(d.mu);
        auto it = d.max_dyn_smem.find(fn);
        if (it != d.max_dyn_smem.end())
            limit = it->second;
    }
    if (smem > (size_t)limit) {
        fprintf(stderr, "cuda-emu: launch of %s with %zu bytes of dynamic shared memory over the "
                        "kernel's limit of %d (cudaFuncSetAttribute raises it)\n", name, smem, limit);
        fail(cudaErrorInvalidValue);
        return;
    }
    long nth = ++d.launches;
    if (d.fault_at > 0 && nth == d.fault_at) {
        fault(cudaErrorIllegalAddress, "injected at launch %ld (%s) by VARSERVE_CUDA_EMU_FAULT_AT",
              nth, name);
        return;
    }
    block_run *b = &t_run;
    if (!ensure_stacks(b, (int)nthreads)) {
        fail(cudaErrorLaunchOutOfResources);
        return;
    }
    b->t.resize(nthreads);
    b->n = (int)nthreads;
    b->body = body;
    b->ctx = ctx;
    b->name = name;
    if (b->wm.size() < nthreads) {
        b->wm.resize(nthreads);
        b->xs.resize(nthreads);
    }
    b->reverse = d.reverse;
    if (b->smem.size() < smem + 128) /* 128-byte aligned, as VS_DYNAMIC_SHARED declares it */
        b->smem.resize(smem + 128);
    t_dynamic_smem = (unsigned char *)(((uintptr_t)b->smem.data() + 127) & ~(uintptr_t)127);
    t_block_dim = uint3{block.x, block.y, block.z};
    t_grid_dim = uint3{grid.x, grid.y, grid.z};
    for (int i = 0; i < b->n; i++) {
        thread *t = &b->t[(size_t)i];
        t->lin = (unsigned)i;
        t->tid = uint3{(unsigned)i % block.x, ((unsigned)i / block.x) % block.y,
                       (unsigned)i / (block.x * block.y)};
    }
    b->free_fib.clear();
    for (int i = b->n - 1; i >= 0; i--)
        b->free_fib.push_back(i);
    unsigned nw = (unsigned)((nthreads + 31) / 32);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                t_block_idx = uint3{bx, by, bz};
                if (smem)
                    memset(t_dynamic_smem, SMEM_POISON, smem);
                for (int i = 0; i < b->n; i++)
                    b->t[(size_t)i].state = T_NEW;
                for (unsigned w = 0; w < nw; w++) {
                    unsigned lanes = (unsigned)(nthreads - (size_t)w * 32);
                    b->warp_live[w] = lanes >= 32 ? 0xffffffffu : (1u << lanes) - 1;
                    b->warp_arrived[w] = 0;
                    b->warp_wmma[w] = 0;
                }
                b->live = b->n;
                b->n_wait_block = 0;
                b->count_acc = 0;
                while (b->live > 0) {
                    int ran = 0;
                    for (int k = 0; k < b->n; k++) {
                        int i = b->reverse ? b->n - 1 - k : k;
                        int s = b->t[(size_t)i].state;
                        if (s != T_NEW && s != T_RUN)
                            continue;
                        ran = 1;
                        run_thread(b, i);
                    }
                    if (!ran && b->live > 0) {
                        fault(cudaErrorLaunchFailure,
                              "%s, block (%u,%u,%u): %d threads wait at barriers that can never "
                              "complete (a __syncthreads or warp operation not reached by every "
                              "thread)",
                              name, bx, by, bz, b->live);
                        return;
                    }
                }
                if (sticky()) /* a fault inside the kernel (wmma's checks): the rest is moot */
                    return;
            }
    check_guards(name);
}

} // namespace cuda_emu

/* ---- runtime API -------------------------------------------------------------------------------- */

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorMisalignedAddress: return "misaligned address";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = sticky() ? sticky() : t_last;
    t_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return sticky() ? sticky() : t_last; }

cudaError_t cudaGetDeviceCount(int *n)
{
    *n = dev().n_devices > 0 ? 1 : 0;
    return *n ? cudaSuccess : fail(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int d)
{
    if (d != 0 || dev().n_devices <= 0)
        return fail(cudaErrorInvalidDevice);
    return sticky() ? fail(sticky()) : cudaSuccess;
}

cudaError_t cudaGetDevice(int *d)
{
    *d = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (d != 0 || dev().n_devices <= 0)
        return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "varserve emulated CUDA device (CPU)");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 8;
    p->maxThreadsPerBlock = 1024;
    p->warpSize = 32;
    p->totalGlobalMem = dev().total;
    p->sharedMemPerBlock = SMEM_DEFAULT;
    p->sharedMemPerBlockOptin = SMEM_OPTIN;
    p->sharedMemPerMultiprocessor = SMEM_OPTIN + 1024;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return sticky() ? fail(sticky()) : cudaSuccess; }

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    *p = NULL;
    device &d = dev();
    if (sticky())
        return fail(sticky());
    if (bytes == 0)
        return cudaSuccess;
    {
        std::lock_guard<std::mutex> g(d.mu);
        if (bytes > d.total - d.used)
            return fail(cudaErrorMemoryAllocation);
    }
    unsigned char *base = NULL;
    if (posix_memalign((void **)&base, GUARD, bytes + 2 * (size_t)GUARD) != 0 || !base)
        return fail(cudaErrorMemoryAllocation);
    memset(base, GUARD_BYTE, GUARD);
    memset(base + GUARD + bytes, GUARD_BYTE, GUARD);
    /* fresh device memory is not zero on a GPU either: NaN-ish bytes expose reads before writes */
    memset(base + GUARD, SMEM_POISON, bytes);
    std::lock_guard<std::mutex> g(d.mu);
    if (bytes > d.total - d.used) {
        free(base);
        return fail(cudaErrorMemoryAllocation);
    }
    d.used += bytes;
    d.mem[(uintptr_t)(base + GUARD)] = allocation{bytes, base};
    *p = base + GUARD;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return sticky() ? fail(sticky()) : cudaSuccess;
    device &d = dev();
    allocation al;
    {
        std::lock_guard<std::mutex> g(d.mu);
        auto it = d.mem.find((uintptr_t)p);
        if (it == d.mem.end())
            return fail(cudaErrorInvalidValue);
        al = it->second;
        d.used -= al.bytes;
        d.mem.erase(it);
    }
    if (!guards_intact(al))
        fault(cudaErrorIllegalAddress,
              "the guard bytes of the %zu-byte device allocation at %p were overwritten (found "
              "when it was freed)",
              al.bytes, p);
    free(al.base);
    return sticky() ? fail(sticky()) : cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    device &d = dev();
    if (sticky())
        return fail(sticky());
    std::lock_guard<std::mutex> g(d.mu);
    *free_bytes = d.total - d.used;
    *total_bytes = d.total;
    return cudaSuccess;
}

cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags)
{
    (void)flags;
    *p = NULL;
    if (sticky())
        return fail(sticky());
    void *m = NULL;
    if (posix_memalign(&m, 4096, bytes ? bytes : 1) != 0)
        return fail(cudaErrorMemoryAllocation);
    std::lock_guard<std::mutex> g(dev().mu);
    dev().pinned[(uintptr_t)m] = bytes;
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaHostAlloc(p, bytes, 0); }

cudaError_t cudaFreeHost(void *p)
{
    if (!p)
        return cudaSuccess;
    {
        std::lock_guard<std::mutex> g(dev().mu);
        if (!dev().pinned.erase((uintptr_t)p))
            return fail(cudaErrorInvalidValue);
    }
    free(p);
    return sticky() ? fail(sticky()) : cudaSuccess;
}

static bool valid_stream(cudaStream_t st) { return !st || st->magic == STREAM_MAGIC; }

/* What every stream operation checks first: the sticky fault, then the stream. */
static cudaError_t stream_op(cudaStream_t st)
{
    if (sticky())
        return fail(sticky());
    return valid_stream(st) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t st)
{
    if (cudaError_t e = stream_op(st))
        return e;
    if (!bytes)
        return cudaSuccess;
    if (kind == cudaMemcpyDefault)
        /* bit 0: dst on the device, bit 1: src on the device (HostToDevice 1, DeviceToHost 2,
         * DeviceToDevice 3) */
        kind = (cudaMemcpyKind)((in_device(src, 1) ? 2 : 0) | (in_device(dst, 1) ? 1 : 0));
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((dst_dev && !in_device(dst, bytes)) || (src_dev && !in_device(src, bytes)) ||
        (!dst_dev && in_device(dst, 1)) || (!src_dev && in_device(src, 1))) {
        fprintf(stderr, "cuda-emu: cudaMemcpy of %zu bytes from %p to %p (kind %d): a device side "
                        "is not inside one allocation, or a host side is device memory\n",
                bytes, src, dst, (int)kind);
        return fail(cudaErrorInvalidValue);
    }
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    return cudaMemcpyAsync(dst, src, bytes, kind, 0);
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t st)
{
    if (cudaError_t e = stream_op(st))
        return e;
    if (!bytes)
        return cudaSuccess;
    if (!in_device(dst, bytes)) {
        fprintf(stderr, "cuda-emu: cudaMemset of %zu bytes at %p: not inside one device allocation\n",
                bytes, dst);
        return fail(cudaErrorInvalidValue);
    }
    memset(dst, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *dst, int value, size_t bytes)
{
    return cudaMemsetAsync(dst, value, bytes, 0);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned flags)
{
    (void)flags;
    *st = NULL;
    if (sticky())
        return fail(sticky());
    cudaStream_t s = (cudaStream_t)calloc(1, sizeof *s);
    if (!s)
        return fail(cudaErrorMemoryAllocation);
    s->magic = STREAM_MAGIC;
    *st = s;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *st) { return cudaStreamCreateWithFlags(st, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t st)
{
    if (!st || st->magic != STREAM_MAGIC)
        return fail(cudaErrorInvalidResourceHandle);
    st->magic = 0;
    free(st);
    return sticky() ? fail(sticky()) : cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t st)
{
    if (!valid_stream(st))
        return fail(cudaErrorInvalidResourceHandle);
    return sticky() ? fail(sticky()) : cudaSuccess;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

cudaError_t cudaEventCreate(cudaEvent_t *ev)
{
    *ev = NULL;
    cudaEvent_t e = (cudaEvent_t)calloc(1, sizeof *e);
    if (!e)
        return fail(cudaErrorMemoryAllocation);
    e->magic = EVENT_MAGIC;
    *ev = e;
    return sticky() ? fail(sticky()) : cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t ev)
{
    if (!ev || ev->magic != EVENT_MAGIC)
        return fail(cudaErrorInvalidResourceHandle);
    ev->magic = 0;
    free(ev);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t st)
{
    if (!ev || ev->magic != EVENT_MAGIC || !valid_stream(st))
        return fail(cudaErrorInvalidResourceHandle);
    ev->t_ms = now_ms();
    ev->recorded = 1;
    return sticky() ? fail(sticky()) : cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t ev)
{
    if (!ev || ev->magic != EVENT_MAGIC)
        return fail(cudaErrorInvalidResourceHandle);
    return sticky() ? fail(sticky()) : cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    if (!a || !b || a->magic != EVENT_MAGIC || b->magic != EVENT_MAGIC)
        return fail(cudaErrorInvalidResourceHandle);
    if (!a->recorded || !b->recorded)
        return fail(cudaErrorInvalidResourceHandle);
    *ms = (float)(b->t_ms - a->t_ms);
    return cudaSuccess;
}

/* ---- cuBLAS on OpenBLAS ------------------------------------------------------------------------- */

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    }
    return "unknown error";
}

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = NULL;
    if (sticky())
        return CUBLAS_STATUS_NOT_INITIALIZED;
    cublasHandle_t b = (cublasHandle_t)calloc(1, sizeof *b);
    if (!b)
        return CUBLAS_STATUS_ALLOC_FAILED;
    b->magic = BLAS_MAGIC;
    b->math = CUBLAS_DEFAULT_MATH;
    *h = b;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    if (!h || h->magic != BLAS_MAGIC)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->magic = 0;
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t st)
{
    if (!h || h->magic != BLAS_MAGIC)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!valid_stream(st))
        return CUBLAS_STATUS_INVALID_VALUE;
    h->st = st;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode)
{
    if (!h || h->magic != BLAS_MAGIC)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_DEFAULT_MATH && mode != CUBLAS_TENSOR_OP_MATH &&
        mode != CUBLAS_PEDANTIC_MATH && mode != CUBLAS_TF32_TENSOR_OP_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t h, cublasMath_t *mode)
{
    if (!h || h->magic != BLAS_MAGIC)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    *mode = h->math;
    return CUBLAS_STATUS_SUCCESS;
}

/* TF32: FP32 with a 10-bit mantissa, rounded to nearest (ties away), as cvt.rna.tf32.f32 */
static float to_tf32(float v)
{
    unsigned u = __float_as_uint(v);
    if ((u & 0x7f800000u) == 0x7f800000u)
        return v;
    u = (u + 0x1000u) & 0xffffe000u;
    return __uint_as_float(u);
}

/* elements an operand of `rows` × `cols` (column-major, leading dimension ld) spans */
static size_t span(int rows, int cols, int ld)
{
    return rows <= 0 || cols <= 0 ? 0 : (size_t)(cols - 1) * (size_t)ld + (size_t)rows;
}

enum in_kind { IN_F32, IN_BF16 };
enum rounding { R_NONE, R_TF32, R_BF16 };

/* A copy of an operand as FP32 (converted from BF16, rounded to TF32 or BF16 as asked), or the
 * operand itself when nothing changes. */
static const float *as_f32(const void *p, in_kind kind, size_t n, rounding r, std::vector<float> &tmp)
{
    if (kind == IN_F32 && r == R_NONE)
        return (const float *)p;
    tmp.resize(n);
    for (size_t i = 0; i < n; i++) {
        float v = kind == IN_BF16 ? (float)((const __nv_bfloat16 *)p)[i] : ((const float *)p)[i];
        tmp[i] = r == R_TF32 ? to_tf32(v) : r == R_BF16 ? (float)__nv_bfloat16(v) : v;
    }
    return tmp.data();
}

/* C = α·op(A)·op(B) + β·C, column-major, with cuBLAS's checks and the given input rounding. */
static cublasStatus_t gemm(const char *what, cublasHandle_t h, cublasOperation_t ta,
                           cublasOperation_t tb, int m, int n, int k, float alpha, const void *A,
                           in_kind ak, int lda, const void *B, in_kind bk, int ldb, float beta,
                           float *C, int ldc, rounding r, bool c_host = false)
{
    if (!h || h->magic != BLAS_MAGIC)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (sticky())
        return CUBLAS_STATUS_EXECUTION_FAILED;
    int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    if (m < 0 || n < 0 || k < 0 || lda < (ar > 1 ? ar : 1) || ldb < (br > 1 ? br : 1) ||
        ldc < (m > 1 ? m : 1) || (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) ||
        (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T)) {
        fprintf(stderr, "cuda-emu: %s: invalid m %d n %d k %d lda %d ldb %d ldc %d\n", what, m, n,
                k, lda, ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    size_t es_a = ak == IN_BF16 ? 2 : 4, es_b = bk == IN_BF16 ? 2 : 4;
    size_t na = k ? span(ar, ac, lda) : 0, nb = k ? span(br, bc, ldb) : 0, nc = span(m, n, ldc);
    if ((na && !in_device(A, na * es_a)) || (nb && !in_device(B, nb * es_b)) ||
        (!c_host && !in_device(C, nc * sizeof(float)))) {
        fault(cudaErrorIllegalAddress,
              "%s (m %d n %d k %d, lda %d ldb %d ldc %d): an operand reaches outside its device "
              "allocation",
              what, m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    if (k == 0) { /* C = β·C */
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                float *c = &C[(size_t)j * ldc + i];
                *c = beta == 0.0f ? 0.0f : beta * *c;
            }
        return CUBLAS_STATUS_SUCCESS;
    }
    std::vector<float> ta_buf, tb_buf;
    const float *a = as_f32(A, ak, na, r, ta_buf), *b = as_f32(B, bk, nb, r, tb_buf);
    if (beta == 0.0f) /* cuBLAS does not read C when β = 0 (it may hold NaN) */
        for (int j = 0; j < n; j++)
            memset(&C[(size_t)j * ldc], 0, (size_t)m * sizeof(float));
    cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, alpha, a, lda, b, ldb,
                beta, C, ldc);
    check_guards(what);
    return sticky() ? CUBLAS_STATUS_EXECUTION_FAILED : CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc)
{
    if (!alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    rounding r = h && h->magic == BLAS_MAGIC && h->math == CUBLAS_TF32_TENSOR_OP_MATH ? R_TF32 : R_NONE;
    return gemm("cublasSgemm", h, ta, tb, m, n, k, *alpha, A, IN_F32, lda, B, IN_F32, ldb, *beta,
                C, ldc, r);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda, long long sa,
                                         const float *B, int ldb, long long sb, const float *beta,
                                         float *C, int ldc, long long sc, int batch)
{
    if (batch < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    for (int i = 0; i < batch; i++) {
        cublasStatus_t s = cublasSgemm(h, ta, tb, m, n, k, alpha, A + (size_t)i * sa, lda,
                                       B + (size_t)i * sb, ldb, beta, C + (size_t)i * sc, ldc);
        if (s != CUBLAS_STATUS_SUCCESS)
            return s;
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo)
{
    (void)algo;
    if (!alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    if ((at != CUDA_R_32F && at != CUDA_R_16BF) || at != bt || ct != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED; /* the combinations varserve uses */
    rounding r = R_NONE;
    bool tf32_mode = h && h->magic == BLAS_MAGIC && h->math == CUBLAS_TF32_TENSOR_OP_MATH;
    switch (compute) {
    case CUBLAS_COMPUTE_32F: r = at == CUDA_R_32F && tf32_mode ? R_TF32 : R_NONE; break;
    case CUBLAS_COMPUTE_32F_PEDANTIC: r = R_NONE; break;
    case CUBLAS_COMPUTE_32F_FAST_TF32: r = at == CUDA_R_32F ? R_TF32 : R_NONE; break;
    case CUBLAS_COMPUTE_32F_FAST_16BF: r = at == CUDA_R_32F ? R_BF16 : R_NONE; break;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    in_kind k_in = at == CUDA_R_16BF ? IN_BF16 : IN_F32;
    return gemm("cublasGemmEx", h, ta, tb, m, n, k, *(const float *)alpha, A, k_in, lda, B, k_in,
                ldb, *(const float *)beta, (float *)C, ldc, r);
}

/* ---- cuBLASLt: matmul with an epilogue, on the GEMM above ---------------------------------------- */

#define LT_MAGIC 0x4c54484eu

struct cuda_emu_lt {
    unsigned magic;
};
struct cuda_emu_lt_desc {
    unsigned magic;
    cublasComputeType_t compute;
    int32_t ta, tb;
    uint32_t epilogue;
    const void *bias;
    int32_t bias_type;
};
struct cuda_emu_lt_layout {
    unsigned magic;
    int32_t type;
    uint64_t rows, cols;
    int64_t ld;
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h)
{
    if (!h)
        return CUBLAS_STATUS_INVALID_VALUE;
    *h = NULL;
    if (sticky())
        return CUBLAS_STATUS_NOT_INITIALIZED;
    *h = (cublasLtHandle_t)calloc(1, sizeof **h);
    if (!*h)
        return CUBLAS_STATUS_ALLOC_FAILED;
    (*h)->magic = LT_MAGIC;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t h)
{
    if (!h || h->magic != LT_MAGIC)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->magic = 0;
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute,
                                        cudaDataType_t scale_type)
{
    if (!d)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (scale_type != CUDA_R_32F ||
        (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC &&
         compute != CUBLAS_COMPUTE_32F_FAST_TF32 && compute != CUBLAS_COMPUTE_32F_FAST_16BF))
        return CUBLAS_STATUS_NOT_SUPPORTED; /* what varserve uses: FP32 compute and scale */
    *d = (cublasLtMatmulDesc_t)calloc(1, sizeof **d);
    if (!*d)
        return CUBLAS_STATUS_ALLOC_FAILED;
    **d = cuda_emu_lt_desc{LT_MAGIC, compute, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, NULL,
                           -1};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d)
{
    if (d && d->magic != LT_MAGIC)
        return CUBLAS_STATUS_INVALID_VALUE;
    free(d);
    return CUBLAS_STATUS_SUCCESS;
}

/* cuBLASLt checks each attribute's size against its storage: a wrong size is INVALID_VALUE */
template <typename T> static cublasStatus_t lt_set(T *dst, const void *buf, size_t bytes)
{
    if (!buf || bytes != sizeof(T))
        return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(dst, buf, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t bytes)
{
    if (!d || d->magic != LT_MAGIC)
        return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return lt_set(&d->ta, buf, bytes);
    case CUBLASLT_MATMUL_DESC_TRANSB: return lt_set(&d->tb, buf, bytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return lt_set(&d->epilogue, buf, bytes);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return lt_set(&d->bias, buf, bytes);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return lt_set(&d->bias_type, buf, bytes);
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld)
{
    if (!l)
        return CUBLAS_STATUS_INVALID_VALUE;
    *l = (cublasLtMatrixLayout_t)calloc(1, sizeof **l);
    if (!*l)
        return CUBLAS_STATUS_ALLOC_FAILED;
    **l = cuda_emu_lt_layout{LT_MAGIC, (int32_t)type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l)
{
    if (l && l->magic != LT_MAGIC)
        return CUBLAS_STATUS_INVALID_VALUE;
    free(l);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l,
                                                cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t bytes)
{
    if (!l || l->magic != LT_MAGIC)
        return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: return lt_set(&l->type, buf, bytes);
    case CUBLASLT_MATRIX_LAYOUT_ROWS: return lt_set(&l->rows, buf, bytes);
    case CUBLASLT_MATRIX_LAYOUT_COLS: return lt_set(&l->cols, buf, bytes);
    case CUBLASLT_MATRIX_LAYOUT_LD: return lt_set(&l->ld, buf, bytes);
    case CUBLASLT_MATRIX_LAYOUT_ORDER: /* column-major only */
        if (!buf || bytes != sizeof(int32_t))
            return CUBLAS_STATUS_INVALID_VALUE;
        return *(const int32_t *)buf == 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

static float gelu_tanh_f(float v)
{
    return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t ad, const void *B,
                              cublasLtMatrixLayout_t bd, const void *beta, const void *C,
                              cublasLtMatrixLayout_t cd, void *D, cublasLtMatrixLayout_t dd,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_bytes,
                              cudaStream_t st)
{
    const char *what = "cublasLtMatmul";
    (void)ws;
    (void)ws_bytes;
    if (!h || h->magic != LT_MAGIC)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (sticky())
        return CUBLAS_STATUS_EXECUTION_FAILED;
    if (!d || d->magic != LT_MAGIC || !ad || !bd || !cd || !dd || !alpha || !beta ||
        !valid_stream(st))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (algo)
        return CUBLAS_STATUS_NOT_SUPPORTED; /* the emulation has only cuBLASLt's own heuristic */
    bool ta = d->ta == CUBLAS_OP_T, tb = d->tb == CUBLAS_OP_T;
    uint64_t m = dd->rows, n = dd->cols, k = ta ? ad->rows : ad->cols;
    uint64_t am = ta ? ad->cols : ad->rows, bk = tb ? bd->cols : bd->rows, bn = tb ? bd->rows : bd->cols;
    if (am != m || bk != k || bn != n || cd->rows != m || cd->cols != n || cd->ld != dd->ld ||
        ad->type != bd->type || (ad->type != CUDA_R_32F && ad->type != CUDA_R_16BF) ||
        cd->type != dd->type || (dd->type != CUDA_R_32F && dd->type != CUDA_R_16BF) ||
        m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) {
        fprintf(stderr, "cuda-emu: %s: layouts A %llux%llu, B %llux%llu, C %llux%llu, D %llux%llu "
                        "(transa %d, transb %d) or their types do not agree\n", what,
                (unsigned long long)ad->rows, (unsigned long long)ad->cols,
                (unsigned long long)bd->rows, (unsigned long long)bd->cols,
                (unsigned long long)cd->rows, (unsigned long long)cd->cols,
                (unsigned long long)dd->rows, (unsigned long long)dd->cols, (int)ta, (int)tb);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    uint32_t ep = d->epilogue;
    bool has_bias = ep == CUBLASLT_EPILOGUE_BIAS || ep == CUBLASLT_EPILOGUE_GELU_BIAS;
    bool has_gelu = ep == CUBLASLT_EPILOGUE_GELU || ep == CUBLASLT_EPILOGUE_GELU_BIAS;
    if (ep != CUBLASLT_EPILOGUE_DEFAULT && !has_bias && !has_gelu)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    /* the bias has D's type (cublasLt.h, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: -1 is D's type; the
     * other types it allows are for FP8 and integer kernels, which this emulation has not) */
    int32_t bias_type = d->bias_type == -1 ? dd->type : d->bias_type;
    if (has_bias && !d->bias)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (has_bias && bias_type != dd->type)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    bool d16 = dd->type == CUDA_R_16BF;
    size_t es_d = d16 ? 2 : 4;
    if (has_bias && !in_device(d->bias, m * es_d)) {
        fault(cudaErrorIllegalAddress, "%s: the bias (%llu elements) reaches outside its device allocation",
              what, (unsigned long long)m);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    float b = *(const float *)beta;
    size_t nd = span((int)m, (int)n, (int)dd->ld);
    if ((b != 0.0f && !in_device(C, nd * es_d)) || !in_device(D, nd * es_d)) {
        fault(cudaErrorIllegalAddress, "%s: C or D reaches outside its device allocation", what);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    /* the FP32 result: in D itself when D is FP32, else in host floats rounded into D at the end */
    std::vector<float> acc;
    float *out = (float *)D;
    if (d16) {
        acc.assign(nd, 0.0f);
        out = acc.data();
        if (b != 0.0f)
            for (size_t i = 0; i < nd; i++)
                acc[i] = (float)((const __nv_bfloat16 *)C)[i];
    } else if (b != 0.0f && C != D) { /* D starts as C, then β·D accumulates as cuBLAS does */
        for (uint64_t j = 0; j < n; j++)
            memmove((float *)D + j * dd->ld, (const float *)C + j * dd->ld, m * sizeof(float));
    }
    rounding r = R_NONE;
    if (ad->type == CUDA_R_32F)
        r = d->compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? R_TF32
            : d->compute == CUBLAS_COMPUTE_32F_FAST_16BF ? R_BF16 : R_NONE;
    in_kind kin = ad->type == CUDA_R_16BF ? IN_BF16 : IN_F32;
    cuda_emu_blas gh = {BLAS_MAGIC, st, CUBLAS_DEFAULT_MATH};
    cublasStatus_t s = gemm(what, &gh, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                            (int)m, (int)n, (int)k, *(const float *)alpha, A, kin, (int)ad->ld, B, kin,
                            (int)bd->ld, b, out, (int)dd->ld, r, d16);
    if (s != CUBLAS_STATUS_SUCCESS)
        return s;
    for (uint64_t j = 0; j < n; j++) {
        float *col = out + j * dd->ld;
        for (uint64_t i = 0; i < m; i++) {
            float bi = !has_bias ? 0.0f
                       : d16     ? (float)((const __nv_bfloat16 *)d->bias)[i]
                                 : ((const float *)d->bias)[i];
            float v = has_bias ? col[i] + bi : col[i];
            v = has_gelu ? gelu_tanh_f(v) : v;
            if (d16) /* the epilogue's FP32 result, rounded to nearest even */
                ((__nv_bfloat16 *)D)[j * dd->ld + i] = __nv_bfloat16(v);
            else
                col[i] = v;
        }
    }
    check_guards(what);
    return sticky() ? CUBLAS_STATUS_EXECUTION_FAILED : CUBLAS_STATUS_SUCCESS;
}

/* ---- cuDNN's forward convolution on im2col + OpenBLAS ------------------------------------------ */

#define DNN_MAGIC 0x444e4e48u
#define DESC_MAGIC 0x44455343u

struct cuda_emu_dnn {
    unsigned magic;
    cudaStream_t st;
};
struct cuda_emu_dnn_tensor {
    unsigned magic;
    int set, n, c, h, w;
};
struct cuda_emu_dnn_filter {
    unsigned magic;
    int set, k, c, h, w;
};
struct cuda_emu_dnn_conv {
    unsigned magic;
    int set, pad_h, pad_w, u, v, dil_h, dil_w;
    cudnnConvolutionMode_t mode;
    cudnnMathType_t math;
};
struct cuda_emu_dnn_act {
    unsigned magic;
    int set;
    cudnnActivationMode_t mode;
};

const char *cudnnGetErrorString(cudnnStatus_t s)
{
    switch (s) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    case CUDNN_STATUS_INTERNAL_ERROR: return "CUDNN_STATUS_INTERNAL_ERROR";
    case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
    }
    return "CUDNN_STATUS_UNKNOWN";
}

cudnnStatus_t cudnnCreate(cudnnHandle_t *h)
{
    if (!h)
        return CUDNN_STATUS_BAD_PARAM;
    *h = NULL;
    if (sticky())
        return CUDNN_STATUS_NOT_INITIALIZED;
    cudnnHandle_t d = (cudnnHandle_t)calloc(1, sizeof *d);
    if (!d)
        return CUDNN_STATUS_INTERNAL_ERROR;
    d->magic = DNN_MAGIC;
    *h = d;
    return CUDNN_STATUS_SUCCESS;
}

static bool dnn_ok(cudnnHandle_t h) { return h && h->magic == DNN_MAGIC; }

cudnnStatus_t cudnnDestroy(cudnnHandle_t h)
{
    if (!dnn_ok(h))
        return CUDNN_STATUS_BAD_PARAM;
    h->magic = 0;
    free(h);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t st)
{
    if (!dnn_ok(h))
        return CUDNN_STATUS_BAD_PARAM;
    if (!valid_stream(st))
        return CUDNN_STATUS_BAD_PARAM;
    h->st = st;
    return CUDNN_STATUS_SUCCESS;
}

/* descriptors: plain host structs with a magic word, as cuDNN's are host objects */
template <typename D> static cudnnStatus_t desc_create(D **d)
{
    if (!d)
        return CUDNN_STATUS_BAD_PARAM;
    *d = (D *)calloc(1, sizeof(D));
    if (!*d)
        return CUDNN_STATUS_INTERNAL_ERROR;
    (*d)->magic = DESC_MAGIC;
    return CUDNN_STATUS_SUCCESS;
}
template <typename D> static cudnnStatus_t desc_destroy(D *d)
{
    if (d && d->magic != DESC_MAGIC)
        return CUDNN_STATUS_BAD_PARAM;
    if (d)
        d->magic = 0;
    free(d);
    return CUDNN_STATUS_SUCCESS;
}
template <typename D> static bool desc_ok(const D *d) { return d && d->magic == DESC_MAGIC && d->set; }

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d) { return desc_create(d); }
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) { return desc_destroy(d); }
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d) { return desc_create(d); }
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) { return desc_destroy(d); }
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d)
{
    cudnnStatus_t s = desc_create(d);
    if (s == CUDNN_STATUS_SUCCESS)
        (*d)->math = CUDNN_DEFAULT_MATH;
    return s;
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) { return desc_destroy(d); }
cudnnStatus_t cudnnCreateActivationDescriptor(cudnnActivationDescriptor_t *d) { return desc_create(d); }
cudnnStatus_t cudnnDestroyActivationDescriptor(cudnnActivationDescriptor_t d) { return desc_destroy(d); }

/* the layouts and types varserve uses; others are refused, not guessed at */
static cudnnStatus_t layout_ok(cudnnTensorFormat_t format, cudnnDataType_t type)
{
    if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC)
        return CUDNN_STATUS_BAD_PARAM;
    return format == CUDNN_TENSOR_NCHW && type == CUDNN_DATA_FLOAT ? CUDNN_STATUS_SUCCESS
                                                                    : CUDNN_STATUS_NOT_SUPPORTED;
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format,
                                         cudnnDataType_t type, int n, int c, int h, int w)
{
    if (!d || d->magic != DESC_MAGIC || n <= 0 || c <= 0 || h <= 0 || w <= 0)
        return CUDNN_STATUS_BAD_PARAM;
    if (cudnnStatus_t s = layout_ok(format, type))
        return s;
    *d = cuda_emu_dnn_tensor{DESC_MAGIC, 1, n, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type,
                                         cudnnTensorFormat_t format, int k, int c, int h, int w)
{
    if (!d || d->magic != DESC_MAGIC || k <= 0 || c <= 0 || h <= 0 || w <= 0)
        return CUDNN_STATUS_BAD_PARAM;
    if (cudnnStatus_t s = layout_ok(format, type))
        return s;
    *d = cuda_emu_dnn_filter{DESC_MAGIC, 1, k, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w,
                                              int u, int v, int dilation_h, int dilation_w,
                                              cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute_type)
{
    if (!d || d->magic != DESC_MAGIC || pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 ||
        dilation_h <= 0 || dilation_w <= 0 ||
        (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION))
        return CUDNN_STATUS_BAD_PARAM;
    if (compute_type != CUDNN_DATA_FLOAT)
        return CUDNN_STATUS_NOT_SUPPORTED;
    cudnnMathType_t math = d->math;
    *d = cuda_emu_dnn_conv{DESC_MAGIC, 1, pad_h, pad_w, u, v, dilation_h, dilation_w, mode, math};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t math)
{
    if (!d || d->magic != DESC_MAGIC ||
        (math != CUDNN_DEFAULT_MATH && math != CUDNN_TENSOR_OP_MATH &&
         math != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && math != CUDNN_FMA_MATH))
        return CUDNN_STATUS_BAD_PARAM;
    d->math = math;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetActivationDescriptor(cudnnActivationDescriptor_t d, cudnnActivationMode_t mode,
                                           cudnnNanPropagation_t nan, double coef)
{
    (void)coef;
    if (!d || d->magic != DESC_MAGIC || mode < CUDNN_ACTIVATION_SIGMOID ||
        mode > CUDNN_ACTIVATION_IDENTITY ||
        (nan != CUDNN_NOT_PROPAGATE_NAN && nan != CUDNN_PROPAGATE_NAN))
        return CUDNN_STATUS_BAD_PARAM;
    d->mode = mode;
    d->set = 1;
    return CUDNN_STATUS_SUCCESS;
}

/* The shapes of one forward convolution, checked as cuDNN checks them: BAD_PARAM when the
 * descriptors disagree, NOT_SUPPORTED for what this emulation does not model (strides, dilation,
 * true convolution). */
static cudnnStatus_t conv_shapes(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                 const cudnnFilterDescriptor_t w,
                                 const cudnnConvolutionDescriptor_t conv,
                                 const cudnnTensorDescriptor_t y)
{
    if (!dnn_ok(h))
        return CUDNN_STATUS_BAD_PARAM;
    if (!desc_ok(x) || !desc_ok(w) || !desc_ok(conv) || !desc_ok(y))
        return CUDNN_STATUS_BAD_PARAM;
    int ho = (x->h + 2 * conv->pad_h - conv->dil_h * (w->h - 1) - 1) / conv->u + 1;
    int wo = (x->w + 2 * conv->pad_w - conv->dil_w * (w->w - 1) - 1) / conv->v + 1;
    if (x->c != w->c || y->n != x->n || y->c != w->k || y->h != ho || y->w != wo) {
        fprintf(stderr, "cuda-emu: cuDNN convolution: x %dx%dx%dx%d, w %dx%dx%dx%d and y %dx%dx%dx%d "
                        "do not agree (y should be %dx%dx%dx%d)\n",
                x->n, x->c, x->h, x->w, w->k, w->c, w->h, w->w, y->n, y->c, y->h, y->w, x->n, w->k,
                ho, wo);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (conv->u != 1 || conv->v != 1 || conv->dil_h != 1 || conv->dil_w != 1 ||
        conv->mode != CUDNN_CROSS_CORRELATION)
        return CUDNN_STATUS_NOT_SUPPORTED;
    return CUDNN_STATUS_SUCCESS;
}

/* Workspace an algorithm needs: IMPLICIT_GEMM none, IMPLICIT_PRECOMP_GEMM its index table (one
 * offset per filter tap), GEMM one image's im2col columns. */
static cudnnStatus_t algo_workspace(const cuda_emu_dnn_filter *w, const cuda_emu_dnn_tensor *y,
                                    cudnnConvolutionFwdAlgo_t algo, size_t *bytes)
{
    size_t kk = (size_t)w->c * w->h * w->w;
    switch (algo) {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: *bytes = 0; return CUDNN_STATUS_SUCCESS;
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM:
        *bytes = kk * sizeof(int);
        return CUDNN_STATUS_SUCCESS;
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM:
        *bytes = kk * (size_t)y->h * y->w * sizeof(float);
        return CUDNN_STATUS_SUCCESS;
    default: *bytes = 0; return CUDNN_STATUS_NOT_SUPPORTED;
    }
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t h,
                                                      const cudnnTensorDescriptor_t x,
                                                      const cudnnFilterDescriptor_t w,
                                                      const cudnnConvolutionDescriptor_t conv,
                                                      const cudnnTensorDescriptor_t y,
                                                      cudnnConvolutionFwdAlgo_t algo, size_t *bytes)
{
    if (!bytes)
        return CUDNN_STATUS_BAD_PARAM;
    if (cudnnStatus_t s = conv_shapes(h, x, w, conv, y))
        return s;
    return algo_workspace(w, y, algo, bytes);
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t h, const cudnnTensorDescriptor_t x, const cudnnFilterDescriptor_t w,
    const cudnnConvolutionDescriptor_t conv, const cudnnTensorDescriptor_t y, int requested,
    int *returned, cudnnConvolutionFwdAlgoPerf_t *perf)
{
    if (!returned || !perf || requested < 1)
        return CUDNN_STATUS_BAD_PARAM;
    if (cudnnStatus_t s = conv_shapes(h, x, w, conv, y))
        return s;
    static const cudnnConvolutionFwdAlgo_t order[CUDNN_CONVOLUTION_FWD_ALGO_COUNT] = {
        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_GEMM,                  CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        CUDNN_CONVOLUTION_FWD_ALGO_FFT,                   CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,              CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED};
    int n = requested < CUDNN_CONVOLUTION_FWD_ALGO_COUNT ? requested : CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    for (int i = 0; i < n; i++) {
        cudnnConvolutionFwdAlgoPerf_t p;
        memset(&p, 0, sizeof p);
        p.algo = order[i];
        p.status = algo_workspace(w, y, order[i], &p.memory);
        p.time = p.status == CUDNN_STATUS_SUCCESS ? (float)(i + 1) : -1.0f;
        p.determinism = CUDNN_DETERMINISTIC;
        p.mathType = conv->math;
        perf[i] = p;
    }
    *returned = n;
    return CUDNN_STATUS_SUCCESS;
}

/* y[n] = α·(w ⊛ x[n]) + β·y[n] for every image: per image, bands of output rows through im2col
 * and one SGEMM each (y_band[cout][cols] = w[cout][KK] · col[KK][cols]), the inputs rounded to
 * TF32 unless the math type is CUDNN_FMA_MATH. β = 0 does not read y. */
static void conv_compute(const cuda_emu_dnn_tensor *xd, const float *x, const cuda_emu_dnn_filter *wd,
                         const float *w, const cuda_emu_dnn_conv *conv, float alpha, float beta,
                         float *y)
{
    int N = xd->n, cin = xd->c, H = xd->h, W = xd->w, cout = wd->k, kh = wd->h, kw = wd->w;
    size_t HW = (size_t)H * W, KK = (size_t)cin * kh * kw;
    rounding r = conv->math == CUDNN_FMA_MATH ? R_NONE : R_TF32;
    std::vector<float> wbuf, col;
    const float *wr = as_f32(w, IN_F32, (size_t)cout * KK, r, wbuf);
    bool direct = kh == 1 && kw == 1 && conv->pad_h == 0 && conv->pad_w == 0;
    size_t per_row = KK * (size_t)W;
    int band = per_row ? (int)(((size_t)16 << 20) / per_row) : H; /* the backend's band: 64 MB */
    band = band < 1 ? 1 : band > H ? H : band;
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * cin * HW;
        float *yn = y + (size_t)n * cout * HW;
        if (beta == 0.0f)
            memset(yn, 0, (size_t)cout * HW * sizeof(float));
        if (direct) {
            const float *xr = as_f32(xn, IN_F32, (size_t)cin * HW, r, col);
            cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)HW, cout, cin, alpha, xr,
                        (int)HW, wr, cin, beta, yn, (int)HW);
            continue;
        }
        for (int y0 = 0; y0 < H; y0 += band) {
            int y1 = y0 + band < H ? y0 + band : H;
            size_t cols = (size_t)(y1 - y0) * W;
            col.resize(KK * cols);
            for (size_t row = 0; row < KK; row++) {
                int kx = (int)(row % kw), ky = (int)((row / kw) % kh), ci = (int)(row / ((size_t)kw * kh));
                for (size_t cc = 0; cc < cols; cc++) {
                    int sy = y0 + (int)(cc / W) + ky - conv->pad_h, sx = (int)(cc % W) + kx - conv->pad_w;
                    float v = (sy < 0 || sy >= H || sx < 0 || sx >= W) ? 0.0f
                                                                       : xn[((size_t)ci * H + sy) * W + sx];
                    col[row * cols + cc] = r == R_TF32 ? to_tf32(v) : v;
                }
            }
            cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)cols, cout, (int)KK, alpha,
                        col.data(), (int)cols, wr, (int)KK, beta, yn + (size_t)y0 * W, (int)HW);
        }
    }
}

/* What both forward calls check before computing: shapes, the algorithm, the workspace, and that
 * every operand lies inside device memory (a fault otherwise, as a GPU's illegal address). */
static cudnnStatus_t conv_prepare(const char *what, cudnnHandle_t h, const cudnnTensorDescriptor_t xd,
                                  const void *x, const cudnnFilterDescriptor_t wd, const void *w,
                                  const cudnnConvolutionDescriptor_t conv,
                                  cudnnConvolutionFwdAlgo_t algo, void *ws, size_t ws_bytes,
                                  const cudnnTensorDescriptor_t yd, void *y)
{
    if (dnn_ok(h) && sticky())
        return CUDNN_STATUS_EXECUTION_FAILED;
    if (cudnnStatus_t s = conv_shapes(h, xd, wd, conv, yd))
        return s;
    size_t need = 0;
    if (cudnnStatus_t s = algo_workspace(wd, yd, algo, &need))
        return s;
    if (ws_bytes < need || (need && !ws)) {
        fprintf(stderr, "cuda-emu: %s: algorithm %d needs %zu bytes of workspace, given %zu\n",
                what, (int)algo, need, ws_bytes);
        return CUDNN_STATUS_BAD_PARAM;
    }
    size_t nx = (size_t)xd->n * xd->c * xd->h * xd->w, nw = (size_t)wd->k * wd->c * wd->h * wd->w;
    size_t ny = (size_t)yd->n * yd->c * yd->h * yd->w;
    if (!in_device(x, nx * sizeof(float)) || !in_device(w, nw * sizeof(float)) ||
        !in_device(y, ny * sizeof(float)) || (need && !in_device(ws, need))) {
        fault(cudaErrorIllegalAddress, "%s: an operand reaches outside its device allocation", what);
        return CUDNN_STATUS_EXECUTION_FAILED;
    }
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha,
                                      const cudnnTensorDescriptor_t xd, const void *x,
                                      const cudnnFilterDescriptor_t wd, const void *w,
                                      const cudnnConvolutionDescriptor_t conv,
                                      cudnnConvolutionFwdAlgo_t algo, void *ws, size_t ws_bytes,
                                      const void *beta, const cudnnTensorDescriptor_t yd, void *y)
{
    if (!alpha || !beta)
        return CUDNN_STATUS_BAD_PARAM;
    if (cudnnStatus_t s = conv_prepare("cudnnConvolutionForward", h, xd, x, wd, w, conv, algo, ws,
                                       ws_bytes, yd, y))
        return s;
    conv_compute(xd, (const float *)x, wd, (const float *)w, conv, *(const float *)alpha,
                 *(const float *)beta, (float *)y);
    check_guards("cudnnConvolutionForward");
    return sticky() ? CUDNN_STATUS_EXECUTION_FAILED : CUDNN_STATUS_SUCCESS;
}

/* y = act(α1·conv(x) + α2·z + bias): the bias-and-z term is written first and the convolution
 * accumulated onto it (β = 1), as the backend's own bias fill + GEMM did. cuDNN allows the
 * identity activation only with IMPLICIT_PRECOMP_GEMM; of the others this emulation has RELU. */
cudnnStatus_t cudnnConvolutionBiasActivationForward(
    cudnnHandle_t h, const void *alpha1, const cudnnTensorDescriptor_t xd, const void *x,
    const cudnnFilterDescriptor_t wd, const void *w, const cudnnConvolutionDescriptor_t conv,
    cudnnConvolutionFwdAlgo_t algo, void *ws, size_t ws_bytes, const void *alpha2,
    const cudnnTensorDescriptor_t zd, const void *z, const cudnnTensorDescriptor_t bd,
    const void *bias, const cudnnActivationDescriptor_t act, const cudnnTensorDescriptor_t yd,
    void *y)
{
    const char *what = "cudnnConvolutionBiasActivationForward";
    if (!alpha1 || !alpha2 || !desc_ok(act) || !desc_ok(zd) || !desc_ok(bd) || !z || !bias)
        return CUDNN_STATUS_BAD_PARAM;
    if (cudnnStatus_t s = conv_prepare(what, h, xd, x, wd, w, conv, algo, ws, ws_bytes, yd, y))
        return s;
    if (zd->n != yd->n || zd->c != yd->c || zd->h != yd->h || zd->w != yd->w || bd->n != 1 ||
        bd->c != yd->c || bd->h != 1 || bd->w != 1)
        return CUDNN_STATUS_BAD_PARAM;
    if (act->mode != CUDNN_ACTIVATION_IDENTITY && act->mode != CUDNN_ACTIVATION_RELU)
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (act->mode == CUDNN_ACTIVATION_IDENTITY && algo != CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM) {
        fprintf(stderr, "cuda-emu: %s: the identity activation needs IMPLICIT_PRECOMP_GEMM (got "
                        "algorithm %d)\n", what, (int)algo);
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    size_t HW = (size_t)yd->h * yd->w, ny = (size_t)yd->n * yd->c * HW;
    if (!in_device(z, ny * sizeof(float)) || !in_device(bias, (size_t)yd->c * sizeof(float))) {
        fault(cudaErrorIllegalAddress, "%s: z or the bias reaches outside its device allocation", what);
        return CUDNN_STATUS_EXECUTION_FAILED;
    }
    float a2 = *(const float *)alpha2;
    const float *zf = (const float *)z, *bf = (const float *)bias;
    float *yf = (float *)y;
    for (size_t i = 0; i < ny; i++) /* z may be y itself: element by element is safe */
        yf[i] = (a2 != 0.0f ? a2 * zf[i] : 0.0f) + bf[(i / HW) % (size_t)yd->c];
    conv_compute(xd, (const float *)x, wd, (const float *)w, conv, *(const float *)alpha1, 1.0f, yf);
    if (act->mode == CUDNN_ACTIVATION_RELU)
        for (size_t i = 0; i < ny; i++)
            yf[i] = yf[i] > 0.0f ? yf[i] : 0.0f;
    check_guards(what);
    return sticky() ? CUDNN_STATUS_EXECUTION_FAILED : CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnAddTensor(cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t ad,
                             const void *A, const void *beta, const cudnnTensorDescriptor_t cd,
                             void *C)
{
    if (!dnn_ok(h) || !alpha || !beta || !desc_ok(ad) || !desc_ok(cd))
        return CUDNN_STATUS_BAD_PARAM;
    if (sticky())
        return CUDNN_STATUS_EXECUTION_FAILED;
    const int ae[4] = {ad->n, ad->c, ad->h, ad->w}, ce[4] = {cd->n, cd->c, cd->h, cd->w};
    for (int i = 0; i < 4; i++)
        if (ae[i] != ce[i] && ae[i] != 1)
            return CUDNN_STATUS_BAD_PARAM;
    size_t na = (size_t)ae[0] * ae[1] * ae[2] * ae[3], nc = (size_t)ce[0] * ce[1] * ce[2] * ce[3];
    if (!in_device(A, na * sizeof(float)) || !in_device(C, nc * sizeof(float))) {
        fault(cudaErrorIllegalAddress, "cudnnAddTensor: an operand reaches outside its device allocation");
        return CUDNN_STATUS_EXECUTION_FAILED;
    }
    float a = *(const float *)alpha, b = *(const float *)beta;
    const float *af = (const float *)A;
    float *cf = (float *)C;
    for (int n = 0; n < ce[0]; n++)
        for (int c = 0; c < ce[1]; c++)
            for (int y = 0; y < ce[2]; y++)
                for (int x = 0; x < ce[3]; x++) {
                    size_t ia = (((size_t)(ae[0] > 1 ? n : 0) * ae[1] + (ae[1] > 1 ? c : 0)) * ae[2] +
                                 (ae[2] > 1 ? y : 0)) * ae[3] + (ae[3] > 1 ? x : 0);
                    float *o = &cf[(((size_t)n * ce[1] + c) * ce[2] + y) * ce[3] + x];
                    *o = a * af[ia] + (b == 0.0f ? 0.0f : b * *o);
                }
    check_guards("cudnnAddTensor");
    return sticky() ? CUDNN_STATUS_EXECUTION_FAILED : CUDNN_STATUS_SUCCESS;
}
