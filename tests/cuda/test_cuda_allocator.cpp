// The caching allocator (backend/cuda/allocator.h): activation blocks are cached and reused,
// weights are packed into the per-device arena, held blocks wait for the hold's end (ops::Fork).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include <cuda_runtime.h>

#include "backend/cuda/allocator.h"
#include "backend/cuda/quantize.h"
#include "ops/context.h"
#include "ops/graph.h"
#include "tests/env_var.h"

using namespace qdit;
using cuda::MemKind;

namespace {
bool have_gpu() { return cuda::device_count() > 0; }
}  // namespace

// A released activation block is handed out again for a request of the same rounded size.
TEST(CudaAllocator, ReusesActivationBlocksAndTracksBytes) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    auto& a = cuda::Allocator::instance();
    const cuda::MemStats s0 = a.stats();
    void* p = a.allocate(3 << 20, MemKind::Activation);
    void* q = a.allocate(1000, MemKind::Activation);
    const cuda::MemStats s1 = a.stats();
    EXPECT_EQ(s1.activation - s0.activation, (size_t(4) << 20) + 1024);  // 2 MiB / 512 B rounding
    a.release(p);
    void* p2 = a.allocate((3 << 20) + 5, MemKind::Activation);
    EXPECT_EQ(p2, p);
    EXPECT_EQ(a.stats().mallocs, s1.mallocs);
    a.release(p2);
    a.release(q);
    EXPECT_EQ(a.stats().activation, s0.activation);
    EXPECT_GE(a.stats().peak, s1.weight + s1.activation);
}

// Weights sit back to back (256-byte aligned), the arena holds at most one granule (2 MiB) more
// than its weights, a freed range is reused, memory written through one weight does not overlap
// another, and the arena's memory goes back to the driver when its last weight is released.
TEST(CudaAllocator, PacksWeightsIntoTheArena) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    auto& a = cuda::Allocator::instance();
    a.empty_cache();
    const cuda::MemStats s0 = a.stats();
    ASSERT_EQ(s0.weight, 0u) << "this test expects no other weights to be alive";
    const std::vector<size_t> sizes = {3 << 20, 1000, 44 << 20, 15 << 20, 7, (14 << 20) + 300, 5 << 20};
    std::vector<void*> ps;
    size_t sum = 0;
    for (size_t n : sizes) {
        ps.push_back(a.allocate(n, MemKind::Weight));
        EXPECT_EQ(reinterpret_cast<uintptr_t>(ps.back()) % 256, 0u);
        sum += (n + 255) / 256 * 256;
    }
    cuda::MemStats s1 = a.stats();
    EXPECT_EQ(s1.weight, sum);
    EXPECT_LE(s1.reserved - s0.reserved, sum + (size_t(2) << 20)) << "weights are not packed";
    for (size_t i = 1; i < ps.size(); ++i)  // back to back, in order
        EXPECT_EQ(static_cast<char*>(ps[i]), static_cast<char*>(ps[i - 1]) + (sizes[i - 1] + 255) / 256 * 256);
    // Every byte is usable and the ranges do not overlap: fill each with its index, read back.
    for (size_t i = 0; i < ps.size(); ++i) ASSERT_EQ(cudaMemset(ps[i], int(i + 1), sizes[i]), cudaSuccess);
    for (size_t i = 0; i < ps.size(); ++i) {
        std::vector<uint8_t> h(sizes[i]);
        ASSERT_EQ(cudaMemcpy(h.data(), ps[i], sizes[i], cudaMemcpyDeviceToHost), cudaSuccess);
        for (size_t j = 0; j < h.size(); j += 4093) ASSERT_EQ(h[j], uint8_t(i + 1)) << i;
        ASSERT_EQ(h.back(), uint8_t(i + 1)) << i;
    }
    // A freed range in the middle is reused first-fit.
    a.release(ps[2]);
    void* r = a.allocate(40 << 20, MemKind::Weight);
    EXPECT_EQ(r, ps[2]);
    EXPECT_EQ(a.stats().reserved, s1.reserved);
    a.release(r);
    for (size_t i = 0; i < ps.size(); ++i)
        if (i != 2) a.release(ps[i]);
    EXPECT_EQ(a.stats().weight, 0u);
    EXPECT_EQ(a.stats().reserved, s0.reserved);
    // And the arena grows again from its start.
    void* again = a.allocate(1 << 20, MemKind::Weight);
    EXPECT_EQ(again, ps[0]);
    a.release(again);
}

// While a hold is open, released activation blocks stay counted and are not handed out; the last
// hold_end() gives them back to the cache.
TEST(CudaAllocator, HoldKeepsReleasedBlocksUntilItEnds) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    auto& a = cuda::Allocator::instance();
    const size_t used0 = a.stats().activation;
    void* p = a.allocate(3 << 20, MemKind::Activation);
    a.hold_begin();
    a.hold_begin();
    a.release(p);
    EXPECT_EQ(a.stats().activation, used0 + (size_t(4) << 20)) << "a held block still counts";
    void* q = a.allocate(3 << 20, MemKind::Activation);
    EXPECT_NE(q, p);
    a.release(q);
    a.hold_end();
    void* r = a.allocate(3 << 20, MemKind::Activation);
    EXPECT_NE(r, p);
    EXPECT_NE(r, q);
    a.release(r);
    a.hold_end();
    EXPECT_EQ(a.stats().activation, used0);
    void* s = a.allocate(3 << 20, MemKind::Activation);
    EXPECT_TRUE(s == p || s == q || s == r);
    a.release(s);
}

// A block allocated for a stream during a hold and released in it goes back to that stream alone
// (the other stream of a fork may still be running work that is unordered with it); the hold's end
// gives it to everyone.
TEST(CudaAllocator, HoldGivesAStreamItsOwnBlocksBack) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    auto& a = cuda::Allocator::instance();
    int x = 0, y = 0;  // two stream tags (only compared)
    const size_t size = size_t(5) << 20;
    a.empty_cache();  // no cached block of that size to hand out first
    a.hold_begin();
    void* p = a.allocate(size, MemKind::Activation, &x);
    a.release(p);
    void* q = a.allocate(size, MemKind::Activation, &y);
    EXPECT_NE(q, p) << "another stream got the block";
    void* r = a.allocate(size, MemKind::Activation, &x);
    EXPECT_EQ(r, p) << "the stream did not get its block back";
    a.release(r);
    a.release(q);
    a.hold_end();
    void* s = a.allocate(size, MemKind::Activation, &y);
    EXPECT_TRUE(s == p || s == q);
    a.release(s);
}

// ops::Fork: the side has its own stream, work on it is ordered after the main stream's work before
// the fork and before the main stream's work after the join, and memory released meanwhile is
// not reused; with QDIT_FORK=0 the side is the main stream.
TEST(CudaAllocator, ForkOrdersTheSideStreamAndHoldsMemory) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    ops::OwnedStream stream({DeviceType::CUDA, 0});
    const ops::Context ctx{{DeviceType::CUDA, 0}, stream.get()};
    const int64_t rows = 1 << 16, width = 256;
    Tensor host = Tensor::empty({rows, width}, DType::U8);
    for (int64_t i = 0; i < host.numel(); ++i) host.data<uint8_t>()[i] = uint8_t(i * 7 + 3);
    const Tensor a = ops::to_device(host, ctx);
    Tensor m = ops::empty({rows, width}, DType::U8, ctx);
    ops::copy_rows(m, 0, a, 0, rows, ctx);  // on the main stream, asynchronous
    const void* pm = m.raw();
    Tensor b = ops::empty({rows, width}, DType::U8, ctx);
    {
        const testutil::EnvVar fork_on("QDIT_FORK", nullptr);
        ops::Fork f(ctx);
        EXPECT_NE(f.side().stream, ctx.stream);
        ops::copy_rows(b, 0, m, 0, rows, f.side());  // after the main stream's copy
        m = Tensor();
        const Tensor c = ops::empty({rows, width}, DType::U8, ctx);
        EXPECT_NE(c.raw(), pm) << "a block released during the fork was handed out again";
    }
    const Tensor back = ops::to_host(b, ctx);  // after the join: the side's copy is done
    EXPECT_EQ(std::memcmp(back.raw(), host.raw(), size_t(host.nbytes())), 0);
    {
        const testutil::EnvVar fork_off("QDIT_FORK", "0");
        ops::Fork f(ctx);
        EXPECT_EQ(f.side().stream, ctx.stream);
    }
}
