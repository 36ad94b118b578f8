/* Shared-memory and wire layout (include/batchbroker/protocol.h), pinned.
 *
 * Every offset and size is hard-coded on purpose: a change to the segment
 * layout, the control messages or the error codes is an ABI change (bump
 * BB_ABI_MAJOR) and must break this test until the numbers here are updated
 * with it. The static asserts break the build; the Criterion tests report
 * every mismatch with its name. */
#include <criterion/criterion.h>

#include <stddef.h>

#include "batchbroker/client.h"
#include "batchbroker/protocol.h"
#include "segment_layout.h"

/* The ones the client and the broker both rely on, checked at compile time. */
_Static_assert(sizeof(struct bb_shm_header) == 4096, "header size");
_Static_assert(offsetof(struct bb_shm_header, magic) == 0, "magic");
_Static_assert(offsetof(struct bb_shm_header, shm_version) == 4, "version");
_Static_assert(offsetof(struct bb_shm_header, sq_off) == 40, "sq_off");
_Static_assert(offsetof(struct bb_shm_header, heap_size) == 72, "heap_size");
_Static_assert(offsetof(struct bb_shm_header, shm_cq_overflow) == 144, "cq_overflow");
_Static_assert(offsetof(struct bb_shm_worker, shm_need_wake) == 128, "worker need_wake");
_Static_assert(offsetof(struct bb_shm_header, shm_notify) == 256, "notify");
_Static_assert(sizeof(struct bb_shm_ring) == 256, "ring header size");
_Static_assert(offsetof(struct bb_shm_ring, shm_tail) == 0, "ring tail");
_Static_assert(offsetof(struct bb_shm_ring, shm_head) == 128, "ring head");
_Static_assert(sizeof(struct bb_shm_slot) == 128, "slot size");
_Static_assert(offsetof(struct bb_shm_slot, gen) == 0, "slot gen");
_Static_assert(offsetof(struct bb_shm_slot, in_off) == 8, "slot in_off");
_Static_assert(offsetof(struct bb_shm_slot, priority) == 56, "slot priority");
_Static_assert(offsetof(struct bb_shm_slot, shm_done_gen) == 64, "slot done_gen");
_Static_assert(offsetof(struct bb_shm_slot, status) == 68, "slot status");
_Static_assert(offsetof(struct bb_shm_slot, out_len) == 72, "slot out_len");
_Static_assert(offsetof(struct bb_shm_slot, reserved) == 76, "slot reserved word");
_Static_assert(offsetof(struct bb_shm_header, shm_wake_seq) == 148, "wake_seq");
_Static_assert(offsetof(struct bb_shm_header, shm_sleepers) == 260, "sleepers");
_Static_assert(BB_SHM_MAGIC == 0x4b524242u && BB_ABI_MAJOR == 2u && BB_ABI_MINOR == 0u,
               "magic and ABI version");
/* Public and extensible: later versions take reserved space, never grow it. */
_Static_assert(sizeof(struct bb_model_stats) == 768, "bb_model_stats size");

#define OFF(type, field, want) \
    cr_expect_eq(offsetof(type, field), (size_t)(want), #type "." #field " at %zu, pinned at %d", \
                 offsetof(type, field), (int)(want))
#define SIZE(type, want) \
    cr_expect_eq(sizeof(type), (size_t)(want), "sizeof " #type " is %zu, pinned at %d", sizeof(type), \
                 (int)(want))

Test(layout, constants)
{
    cr_expect_eq(BB_SHM_MAGIC, 0x4b524242u);
    cr_expect_eq(BB_ABI_MAJOR, 2u);
    cr_expect_eq(BB_ABI_MINOR, 0u);
    cr_expect_eq(BB_SHM_VERSION, 0x00020000u);
    cr_expect_eq(BB_SHM_WORKER_MAGIC, 0x574b5242u);
    cr_expect_eq(BB_SHM_WORKER_SIZE, 4096u);
    cr_expect_eq(BB_WORKER_FUTEX_DOORBELL, 1u);
    cr_expect_eq(BB_SHM_HEADER_SIZE, 4096u);
    cr_expect_eq(BB_SHM_RING_HDR_SIZE, 256u);
    cr_expect_eq(BB_SHM_SLOT_SIZE, 128u);
    cr_expect_eq(BB_SQE_CANCEL, 0x80000000u);
    cr_expect_eq(BB_SQE_SLOT_MASK, 0x000fffffu);
    cr_expect_eq(BB_SQE_LAP_MASK, 0x7ff00000u);
    cr_expect_eq(BB_SQE_LAP_SHIFT, 20u);
    cr_expect_eq(BB_SQE_LAP(0, 4), 1u << 20, "the first lap is tagged 1: a zeroed ring holds nothing");
    cr_expect_eq(BB_SQE_LAP(16, 4), 2u << 20);
    cr_expect_eq(BB_SQE_SLOT_MASK & BB_SQE_LAP_MASK & BB_SQE_CANCEL, 0u);
    cr_expect_eq(BB_MAX_SLOTS, 1u << 20);
    cr_expect_eq(BB_MAX_MODEL_NAME, 64u);
    cr_expect_eq(BB_BROKER_RUNNING, 1);
    cr_expect_eq(BB_BROKER_SHUTDOWN, 2);
    cr_expect_eq(BB_MSG_HELLO, 1);
    cr_expect_eq(BB_MSG_HELLO_REPLY, 2);
    cr_expect_eq(BB_MSG_MODEL_OPEN, 3);
    cr_expect_eq(BB_MSG_MODEL_OPEN_REPLY, 4);
    cr_expect_eq(BB_MSG_STATS, 5);
    cr_expect_eq(BB_MSG_STATS_REPLY, 6);
    cr_expect_eq(BB_MSG_PIN, 7);
    cr_expect_eq(BB_MSG_PIN_REPLY, 8);
    cr_expect_eq(BB_MSG_METRICS, 9);
    cr_expect_eq(BB_MSG_METRICS_REPLY, 10);
    cr_expect_eq(BB_METRICS_TEXT, 1);
    cr_expect_eq(BB_METRICS_DUMP, 2);
    cr_expect_eq(BB_HELLO_OPERATOR, 1u);
    cr_expect_eq(BB_BATCH_SIZE_BUCKETS, 17u);
    cr_expect_eq(BB_PHASES, 4);
    cr_expect_eq(BB_OUTCOMES, 5);
    cr_expect_eq(BB_OUTCOME_CANCELLED, 4);
    cr_expect_eq(BB_HIST_SUB_BITS, 5u);
    cr_expect_eq(BB_HIST_BUCKETS, 1152u);
    cr_expect_eq(BB_DUMP_VERSION, 1u);
    cr_expect_eq(BB_MODEL_STATS_VERSION, 2u);
    cr_expect_eq(BB_HELLO_DISTRUST, 2u);
    /* Slot indices and the cancel bit do not overlap. */
    cr_expect_eq(BB_MAX_SLOTS & BB_SQE_CANCEL, 0u);
    cr_expect(BB_MAX_SLOTS - 1 <= BB_SQE_SLOT_MASK);
}

Test(layout, shm_header)
{
    typedef struct bb_shm_header H;
    SIZE(H, 4096);
    OFF(H, magic, 0);
    OFF(H, shm_version, 4);
    OFF(H, header_size, 8);
    OFF(H, slot_size, 12);
    OFF(H, segment_size, 16);
    OFF(H, nslots, 24);
    OFF(H, sq_entries, 28);
    OFF(H, cq_entries, 32);
    OFF(H, client_id, 36);
    OFF(H, sq_off, 40);
    OFF(H, cq_off, 48);
    OFF(H, slots_off, 56);
    OFF(H, heap_off, 64);
    OFF(H, heap_size, 72);
    OFF(H, broker_pid, 80);
    OFF(H, max_input_bytes, 84);
    OFF(H, pad0, 88);
    OFF(H, reserved1, 128);
    OFF(H, shm_cq_overflow, 144);
    OFF(H, shm_wake_seq, 148);
    OFF(H, pad1, 152);
    OFF(H, shm_notify, 256);
    OFF(H, shm_sleepers, 260);
    OFF(H, pad2, 264);
    H h;
    cr_expect_eq(sizeof h.pad0, 40u);
    cr_expect_eq(sizeof h.pad1, 104u);
    cr_expect_eq(sizeof h.pad2, 3832u);
    /* Broker-written hot words and the client-written word on separate
     * 128-byte lines. */
    cr_expect_eq(offsetof(H, reserved1) % 128, 0u);
    cr_expect_eq(offsetof(H, shm_notify) % 128, 0u);
}

Test(layout, shm_worker)
{
    typedef struct bb_shm_worker W;
    SIZE(W, 4096);
    OFF(W, magic, 0);
    OFF(W, shm_version, 4);
    OFF(W, size, 8);
    OFF(W, flags, 12);
    OFF(W, worker_id, 16);
    OFF(W, numa_node, 20);
    OFF(W, pad0, 24);
    OFF(W, shm_need_wake, 128);
    OFF(W, shm_doorbell, 132);
    OFF(W, pad1, 136);
    OFF(W, shm_heartbeat_ns, 256);
    OFF(W, shm_broker_state, 264);
    OFF(W, pad2, 268);
    W w;
    cr_expect_eq(sizeof w.pad0, 104u);
    cr_expect_eq(sizeof w.pad1, 120u);
    cr_expect_eq(sizeof w.pad2, 3828u);
}

Test(layout, shm_ring)
{
    typedef struct bb_shm_ring R;
    SIZE(R, 256);
    OFF(R, shm_tail, 0);
    OFF(R, pad0, 4);
    OFF(R, shm_head, 128);
    OFF(R, pad1, 132);
    R r;
    cr_expect_eq(sizeof r.pad0, 124u);
    cr_expect_eq(sizeof r.pad1, 124u);
    cr_expect_eq(sizeof r.shm_tail, 4u);
    cr_expect_eq(sizeof r.shm_head, 4u);
}

Test(layout, shm_slot)
{
    typedef struct bb_shm_slot S;
    SIZE(S, 128);
    OFF(S, gen, 0);
    OFF(S, model_id, 4);
    OFF(S, in_off, 8);
    OFF(S, out_off, 16);
    OFF(S, in_len, 24);
    OFF(S, out_cap, 28);
    OFF(S, tag, 32);
    OFF(S, submit_ns, 40);
    OFF(S, timeout_us, 48);
    OFF(S, flags, 52);
    OFF(S, priority, 56);
    OFF(S, pad0, 57);
    OFF(S, shm_done_gen, 64);
    OFF(S, status, 68);
    OFF(S, out_len, 72);
    OFF(S, reserved, 76);
    OFF(S, pad1, 80);
    S s;
    cr_expect_eq(sizeof s.priority, 1u);
    cr_expect_eq(sizeof s.pad0, 7u);
    cr_expect_eq(sizeof s.pad1, 48u);
    /* The client-written descriptor is exactly the first cache line: the
     * broker copies offsetof(shm_done_gen) bytes out of it. */
    cr_expect_eq(offsetof(S, shm_done_gen), 64u);
}

Test(layout, control_messages)
{
    SIZE(struct bb_msg_hdr, 8);
    OFF(struct bb_msg_hdr, type, 0);
    OFF(struct bb_msg_hdr, status, 4);

    SIZE(struct bb_msg_hello, 40);
    OFF(struct bb_msg_hello, magic, 8);
    OFF(struct bb_msg_hello, version, 12);
    OFF(struct bb_msg_hello, segment_bytes, 16);
    OFF(struct bb_msg_hello, max_inflight, 24);
    OFF(struct bb_msg_hello, flags, 28);
    OFF(struct bb_msg_hello, cpu, 32);
    OFF(struct bb_msg_hello, reserved, 36);

    SIZE(struct bb_msg_hello_reply, 24);
    OFF(struct bb_msg_hello_reply, version, 8);
    OFF(struct bb_msg_hello_reply, client_id, 12);
    OFF(struct bb_msg_hello_reply, segment_size, 16);

    SIZE(struct bb_msg_model_open, 72);
    OFF(struct bb_msg_model_open, name, 8);

    SIZE(struct bb_msg_model_open_reply, 24);
    OFF(struct bb_msg_model_open_reply, model_id, 8);
    OFF(struct bb_msg_model_open_reply, max_batch_size, 12);
    OFF(struct bb_msg_model_open_reply, max_request_bytes, 16);

    SIZE(struct bb_msg_stats, 16);
    OFF(struct bb_msg_stats, model_id, 8);
    OFF(struct bb_msg_stats, pad, 12);

    OFF(struct bb_wire_stats, submitted, 0);
    OFF(struct bb_wire_stats, completed, 8);
    OFF(struct bb_wire_stats, failed, 16);
    OFF(struct bb_wire_stats, timed_out, 24);
    OFF(struct bb_wire_stats, rejected, 32);
    OFF(struct bb_wire_stats, deduplicated, 40);
    OFF(struct bb_wire_stats, batches, 48);
    OFF(struct bb_wire_stats, completed_by_priority, 56);
    OFF(struct bb_wire_stats, avg_batch_size, 96);
    OFF(struct bb_wire_stats, avg_queue_wait_us, 104);
    OFF(struct bb_wire_stats, throughput_rps, 112);
    OFF(struct bb_wire_stats, latency_p50_us, 120);
    OFF(struct bb_wire_stats, latency_p95_us, 128);
    OFF(struct bb_wire_stats, latency_p99_us, 136);
    OFF(struct bb_wire_stats, queued, 144);
    OFF(struct bb_wire_stats, batch_target, 148);
    OFF(struct bb_wire_stats, max_batch_size, 152);
    OFF(struct bb_wire_stats, instances, 156);
    /* Adaptive sizing (added after the core issue, ABI still 1.0). */
    OFF(struct bb_wire_stats, adaptive, 160);
    OFF(struct bb_wire_stats, pinned, 164);
    OFF(struct bb_wire_stats, wait_us, 168);
    OFF(struct bb_wire_stats, changes, 172);
    OFF(struct bb_wire_stats, fit_a_us, 176);
    OFF(struct bb_wire_stats, fit_b_us, 184);
    OFF(struct bb_wire_stats, fit_r2, 192);
    OFF(struct bb_wire_stats, best_size, 200);
    OFF(struct bb_wire_stats, arrival_rps, 208);
    OFF(struct bb_wire_stats, score, 216);
    OFF(struct bb_wire_stats, slo_violations, 224);
    /* Observability (ABI 1.1), appended. */
    OFF(struct bb_wire_stats, cancelled, 232);
    OFF(struct bb_wire_stats, profile_stride, 240);
    OFF(struct bb_wire_stats, running, 244);
    OFF(struct bb_wire_stats, window_s, 248);
    OFF(struct bb_wire_stats, batch_size_hist, 256);
    OFF(struct bb_wire_stats, latency_sum_ns, 392);
    OFF(struct bb_wire_stats, phase_count, 400);
    OFF(struct bb_wire_stats, phase_sum_ns, 408);
    OFF(struct bb_wire_stats, phase_p50_us, 440);
    OFF(struct bb_wire_stats, phase_p99_us, 472);
    OFF(struct bb_wire_stats, latency_p50_by_priority_us, 504);
    OFF(struct bb_wire_stats, latency_p99_by_priority_us, 544);
    OFF(struct bb_wire_stats, timed_latency_sum_ns, 584);
    SIZE(struct bb_wire_stats, 592);

    SIZE(struct bb_msg_stats_reply, 664);
    OFF(struct bb_msg_stats_reply, name, 8);
    OFF(struct bb_msg_stats_reply, s, 72);

    SIZE(struct bb_msg_pin, 80);
    OFF(struct bb_msg_pin, name, 8);
    OFF(struct bb_msg_pin, target, 72);
    OFF(struct bb_msg_pin, pad, 76);

    SIZE(struct bb_msg_metrics, 16);
    OFF(struct bb_msg_metrics, format, 8);
    OFF(struct bb_msg_metrics, model_id, 12);
    SIZE(struct bb_msg_metrics_reply, 16);
    OFF(struct bb_msg_metrics_reply, length, 8);

    SIZE(struct bb_wire_dump, 74248);
    OFF(struct bb_wire_dump, now_ns, 8);
    OFF(struct bb_wire_dump, name, 16);
    OFF(struct bb_wire_dump, hist_sub_bits, 80);
    OFF(struct bb_wire_dump, max_batch_size, 88);
    OFF(struct bb_wire_dump, submitted, 112);
    OFF(struct bb_wire_dump, requests, 144);
    OFF(struct bb_wire_dump, batch_size, 304);
    OFF(struct bb_wire_dump, latency_sum_ns, 440);
    OFF(struct bb_wire_dump, phase_count, 472);
    OFF(struct bb_wire_dump, timed_latency_sum_ns, 480);
    OFF(struct bb_wire_dump, phase_sum_ns, 488);
    OFF(struct bb_wire_dump, latency, 520);
    OFF(struct bb_wire_dump, phase, 37384);
}

/* The public statistics (include/batchbroker/client.h): a caller's struct,
 * so its layout is ABI too. */
Test(layout, model_stats)
{
    typedef struct bb_model_stats M;
    SIZE(M, 768);
    OFF(M, size, 0);
    OFF(M, version, 4);
    OFF(M, submitted, 8);
    OFF(M, queued, 152);
    OFF(M, cancelled, 160);
    OFF(M, batch_size_hist, 184);
    OFF(M, timed_latency_sum_ns, 336);
    OFF(M, phase_sum_ns, 344);
    OFF(M, latency_p99_by_priority_us, 480);
    OFF(M, reserved, 520);
}

/* Status codes cross the process boundary in bb_shm_slot.status. */
Test(layout, status_codes)
{
    cr_expect_eq(BB_EINVAL, -1);
    cr_expect_eq(BB_ENOMEM, -2);
    cr_expect_eq(BB_EBUSY, -3);
    cr_expect_eq(BB_ETIMEDOUT, -4);
    cr_expect_eq(BB_EPENDING, -5);
    cr_expect_eq(BB_EBACKEND, -6);
    cr_expect_eq(BB_ENOMODEL, -7);
    cr_expect_eq(BB_EDISCONNECTED, -8);
    cr_expect_eq(BB_ECANCELED, -9);
    cr_expect_eq(BB_ESHUTDOWN, -10);
    cr_expect_eq(BB_ETOOBIG, -11);
    cr_expect_eq(BB_EPROTO, -12);
    cr_expect_eq(BB_EPERM, -13);
    cr_expect_eq(BB_ESYS, -14);
    cr_expect_eq(BB_ESTATE, -15);
    cr_expect_eq(BB_ENOBROKER, -16);
    cr_expect_eq(BB_EMAXCLIENTS, -17);
    cr_expect_eq(BB_EUNTRUSTED, -18);
    cr_expect_eq(BB_EFORKED, -19);
    cr_expect_eq(BB_PRIORITY_DEFAULT, 0);
    cr_expect_eq(BB_PRIORITY_CRITICAL, 1);
    cr_expect_eq(BB_PRIORITY_HIGH, 2);
    cr_expect_eq(BB_PRIORITY_NORMAL, 3);
    cr_expect_eq(BB_PRIORITY_LOW, 4);
    cr_expect_eq(BB_SUBMIT_DEDUP, 1u);
}

/* The one layout computation both sides use (common/segment_layout.h),
 * pinned for the broker's default 1024 slots and a 64 MiB segment. */
Test(layout, segment_layout)
{
    struct bb__layout l;
    bb__layout_compute(1024, 64u << 20, &l);
    cr_expect_eq(l.sq_entries, 4096);
    cr_expect_eq(l.cq_entries, 1024);
    cr_expect_eq(l.sq_off, 4096);
    cr_expect_eq(l.cq_off, 20736);
    cr_expect_eq(l.slots_off, 25088);
    cr_expect_eq(l.heap_off, 159744);
    cr_expect_eq(l.size, 64u << 20);
    /* Too small a request still gets the rings, the slots and a 1 MiB heap. */
    bb__layout_compute(1, 0, &l);
    cr_expect_eq(l.size, l.heap_off + (1u << 20));

    struct bb_shm_header h = {0};
    bb__layout_compute(1024, 64u << 20, &l);
    h.nslots = 1024;
    h.segment_size = l.size;
    h.sq_entries = l.sq_entries;
    h.cq_entries = l.cq_entries;
    h.sq_off = l.sq_off;
    h.cq_off = l.cq_off;
    h.slots_off = l.slots_off;
    h.heap_off = l.heap_off;
    h.heap_size = l.size - l.heap_off;
    cr_expect(bb__layout_matches(&h, l.size));
    cr_expect_not(bb__layout_matches(&h, l.size - 4096), "a mapping of another size");
    h.heap_off += 4096;
    cr_expect_not(bb__layout_matches(&h, l.size), "a moved heap");
    h.heap_off -= 4096;
    h.nslots = 1000;
    cr_expect_not(bb__layout_matches(&h, l.size), "slots not a power of two");
}
