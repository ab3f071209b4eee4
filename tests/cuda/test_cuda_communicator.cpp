// The collectives of parallel/communicator.h: the local rank group (several ranks on one GPU, as the
// sharded-model tests use it) and NCCL over every visible GPU (world 1 on a one-GPU machine), each
// rank's results checked against the host; failures end a run with the failing rank's error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/quantize.h"
#include "parallel/communicator.h"

using namespace qdit;
using cuda::DTensor;
using cuda::MemKind;

namespace {

// ---- collectives ----------------------------------------------------------------------------

// Rank r's element i of a test buffer: distinct per rank and element, exact in bf16.
float value(int r, int64_t i) { return float((r + 1) * 3 + (i % 7) - 4) * (i % 2 ? 0.5f : 1.f); }

Tensor host_values(int r, int64_t n, DType dt) {
    Tensor t = Tensor::empty({n}, DType::F32);
    for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = value(r, i);
    if (dt == DType::I32) {
        Tensor o = Tensor::empty({n}, DType::I32);
        for (int64_t i = 0; i < n; ++i) o.data<int32_t>()[i] = int32_t(std::lround(t.data<float>()[i] * 2));
        return o;
    }
    return t.to(dt);
}

double host_at(const Tensor& t, int64_t i) {
    if (t.dtype() == DType::I32) return t.data<int32_t>()[i];
    return t.to(DType::F32).data<float>()[i];
}

// Runs all_reduce (Sum and Max, in and out of place), all_gather, all_to_all and barrier on
// every rank of `g` and checks each rank's results against the host.
void check_collectives(parallel::RankGroup& g) {
    const int W = g.world();
    const int64_t n = 1000;
    std::vector<std::string> failures(static_cast<size_t>(W));
    g.run([&](parallel::Communicator& c) {
        const int r = c.rank();
        cudaStream_t s = c.stream();
        std::string& fail = failures[size_t(r)];
        auto expect = [&](bool ok, const std::string& what) {
            if (!ok && fail.empty()) fail = fmt::format("rank {}: {}", r, what);
        };
        EXPECT_EQ(c.world(), W);
        for (DType dt : {DType::F32, DType::I32, DType::BF16})
            for (parallel::ReduceOp op : {parallel::ReduceOp::Sum, parallel::ReduceOp::Max})
                for (bool in_place : {false, true}) {
                    DTensor a = DTensor::upload(host_values(r, n, dt), MemKind::Activation, s);
                    DTensor b = in_place ? a : DTensor::empty({n}, dt);
                    c.all_reduce(a.raw(), b.raw(), n, dt, op, s);
                    Tensor got = b.download(s);
                    std::vector<Tensor> all;
                    for (int q = 0; q < W; ++q) all.push_back(host_values(q, n, dt));
                    for (int64_t i = 0; i < n; ++i) {
                        double want = op == parallel::ReduceOp::Sum ? 0 : -1e30;
                        for (int q = 0; q < W; ++q) {
                            const double v = host_at(all[size_t(q)], i);
                            want = op == parallel::ReduceOp::Sum ? want + v : std::max(want, v);
                        }
                        if (host_at(got, i) != want) {
                            expect(false, fmt::format("all_reduce {} {} {}: element {} is {}, expected {}",
                                                      dtype_name(dt), op == parallel::ReduceOp::Sum ? "sum" : "max",
                                                      in_place ? "in place" : "", i, host_at(got, i), want));
                            break;
                        }
                    }
                }
        // all_gather, out of place and in place.
        for (bool in_place : {false, true}) {
            DTensor recv = DTensor::empty({W * n}, DType::F32);
            DTensor mine = DTensor::upload(host_values(r, n, DType::F32), MemKind::Activation, s);
            const void* send = mine.raw();
            if (in_place) {
                cuda::check(cudaMemcpyAsync(recv.data<float>() + r * n, mine.raw(), size_t(n) * 4,
                                            cudaMemcpyDeviceToDevice, s),
                            "test");
                send = recv.data<float>() + r * n;
            }
            c.all_gather(send, recv.raw(), n, DType::F32, s);
            Tensor got = recv.download(s);
            for (int q = 0; q < W; ++q)
                for (int64_t i = 0; i < n; ++i)
                    if (got.data<float>()[q * n + i] != value(q, i)) {
                        expect(false, fmt::format("all_gather{}: block {} element {}", in_place ? " in place" : "", q, i));
                        q = W;
                        break;
                    }
        }
        // all_to_all: block j of rank r's send is value(r·W + j, i); rank r receives block q = value(q·W + r, i).
        {
            Tensor h = Tensor::empty({W * n}, DType::F32);
            for (int j = 0; j < W; ++j)
                for (int64_t i = 0; i < n; ++i) h.data<float>()[j * n + i] = value(r * W + j, i);
            DTensor send = DTensor::upload(h, MemKind::Activation, s), recv = DTensor::empty({W * n}, DType::F32);
            c.all_to_all(send.raw(), recv.raw(), n, DType::F32, s);
            Tensor got = recv.download(s);
            for (int q = 0; q < W; ++q)
                for (int64_t i = 0; i < n; ++i)
                    if (got.data<float>()[q * n + i] != value(q * W + r, i)) {
                        expect(false, fmt::format("all_to_all: block {} element {}", q, i));
                        q = W;
                        break;
                    }
        }
        c.barrier(s);
    });
    for (const std::string& f : failures) EXPECT_TRUE(f.empty()) << f;
}

TEST(CudaCommunicator, LocalGroupCollectives) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (int W : {1, 2, 3}) {
        SCOPED_TRACE(W);
        auto g = parallel::RankGroup::local(W, 0);
        EXPECT_STREQ(g->backend(), "local");
        check_collectives(*g);
    }
}

// A rank that calls another collective than the others, returns without one the others wait in,
// or throws, fails the run with an error instead of leaving the others waiting (a throwing rank's
// own error); the group refuses further runs.
TEST(CudaCommunicator, LocalGroupFailuresDoNotHang) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    {
        auto g = parallel::RankGroup::local(2, 0);
        DTensor buf = DTensor::zeros({16}, DType::F32, MemKind::Activation, g->comm(0).stream());
        EXPECT_THROW(g->run([&](parallel::Communicator& c) {
            if (c.rank() == 0)
                c.all_reduce(buf.raw(), buf.raw(), 16, DType::F32, parallel::ReduceOp::Sum, c.stream());
            else
                c.all_gather(buf.raw(), buf.raw(), 8, DType::F32, c.stream());
        }),
                     Error);
        EXPECT_THROW(g->run([](parallel::Communicator&) {}), Error);
    }
    {
        // Rank 1 returns without the collective rank 0 waits in.
        auto g = parallel::RankGroup::local(2, 0);
        DTensor buf = DTensor::zeros({16}, DType::F32, MemKind::Activation, g->comm(0).stream());
        try {
            g->run([&](parallel::Communicator& c) {
                if (c.rank() == 0) c.all_reduce(buf.raw(), buf.raw(), 16, DType::F32, parallel::ReduceOp::Sum, c.stream());
            });
            ADD_FAILURE() << "no exception";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("returned without calling it"), std::string::npos) << e.what();
        }
    }
    {
        auto g = parallel::RankGroup::local(3, 0);
        DTensor buf = DTensor::zeros({16}, DType::F32, MemKind::Activation, g->comm(0).stream());
        try {
            g->run([&](parallel::Communicator& c) {
                if (c.rank() == 1) throw ShapeError("rank 1 fails");
                c.all_reduce(buf.raw(), buf.raw(), 16, DType::F32, parallel::ReduceOp::Sum, c.stream());
            });
            ADD_FAILURE() << "no exception";
        } catch (const ShapeError& e) {
            EXPECT_STREQ(e.what(), "rank 1 fails");  // the failing rank's error, not RankAborted
        }
    }
}

// NCCL over every visible GPU (world 1 on a one-GPU machine). Needs libnccl.so.2 at run time
// (QDIT_NCCL_LIBRARY or LD_LIBRARY_PATH, docs/usage.md).
TEST(CudaCommunicator, NcclCollectives) {
    const int n = cuda::device_count();
    if (n == 0) GTEST_SKIP() << "no CUDA device";
    std::string why;
    if (!parallel::nccl_available(&why)) GTEST_SKIP() << why;
    std::vector<int> devices(static_cast<size_t>(n));
    std::iota(devices.begin(), devices.end(), 0);
    auto g = parallel::RankGroup::nccl(devices);
    EXPECT_STREQ(g->backend(), "nccl");
    EXPECT_EQ(g->world(), n);
    check_collectives(*g);
}

TEST(CudaCommunicator, NcclRefusesBadDevices) {
    const int n = cuda::device_count();
    if (n == 0) GTEST_SKIP() << "no CUDA device";
    EXPECT_THROW(parallel::RankGroup::nccl({0, n}), UsageError);
    EXPECT_THROW(parallel::RankGroup::nccl({0, 0}), UsageError);
    EXPECT_THROW(parallel::RankGroup::local(2, n), UsageError);
}

}  // namespace
