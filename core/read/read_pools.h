// The worker pools of the read side, one per process, shared by every open archive.
//
//   VerifyPool  one thread: stored members' verify passes, in steps of a few MiB that
//               re-queue themselves, so passes of several members take turns.
//   DecodePool  one thread per online CPU: span decodes ahead of sequential readers and
//               the spans of one request decoded side by side.
//   IndexPool   one thread under SCHED_IDLE: deflated members' background first passes
//               (the indexer behind readers that run ahead of the checkpoints). It runs
//               only when a core would otherwise idle, so it never slows a reader down; on a
//               busy machine the index is learned later (or by BuildIndex).
//
// The pools are created on first use and live until the process exits (they are never
// destroyed: a task may hold the last reference to a member's state, so a pool must not be
// torn down under it). Tasks hold their member's state alive, and a member that stops being
// useful (its Archive is destroyed) cancels its own pending work.
#pragma once

#include "core/base/thread_pool.h"

namespace npzfs {

ThreadPool& VerifyPool();
ThreadPool& DecodePool();
ThreadPool& IndexPool();

}  // namespace npzfs
