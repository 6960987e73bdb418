// The worker pools of the read side, one per process, shared by every open archive.
//
//   VerifyPool  one thread: stored members' verify passes, in steps of a few MiB that
//               re-queue themselves, so passes of several members take turns.
//   DecodePool  one thread per online CPU: span decodes ahead of sequential readers and
//               the spans of one request decoded side by side.
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

}  // namespace npzfs
