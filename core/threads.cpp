#include "core/threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace qdit {

namespace {

int default_threads() {
    if (const char* env = std::getenv("QDIT_NUM_THREADS")) {
        int n = std::atoi(env);
        if (n > 0) return n;
    }
    return std::max(1u, std::thread::hardware_concurrency());
}

// Workers sleep until a job is posted; each job is a set of chunks handed out
// through an atomic counter. The caller works on chunks too.
class Pool {
public:
    explicit Pool(int n) {
        for (int i = 0; i + 1 < n; ++i) workers_.emplace_back([this] { loop(); });
    }
    ~Pool() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : workers_) t.join();
    }
    int size() const { return int(workers_.size()) + 1; }

    void run(int64_t chunks, const std::function<void(int64_t)>& fn) {
        std::lock_guard<std::mutex> one(run_mu_);  // one job at a time
        {
            std::lock_guard<std::mutex> lk(mu_);
            fn_ = &fn;
            chunks_ = chunks;
            next_ = 0;
            pending_ = int(workers_.size());
            error_ = nullptr;
            ++generation_;
        }
        cv_.notify_all();
        work();
        std::unique_lock<std::mutex> lk(mu_);
        done_cv_.wait(lk, [this] { return pending_ == 0; });
        fn_ = nullptr;
        if (error_) std::rethrow_exception(error_);
    }

private:
    void work() {
        for (;;) {
            int64_t c = next_.fetch_add(1);
            if (c >= chunks_) return;
            try {
                (*fn_)(c);
            } catch (...) {
                std::lock_guard<std::mutex> lk(mu_);
                if (!error_) error_ = std::current_exception();
            }
        }
    }
    void loop() {
        uint64_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
                if (stop_) return;
                seen = generation_;
            }
            work();
            std::lock_guard<std::mutex> lk(mu_);
            if (--pending_ == 0) done_cv_.notify_one();
        }
    }

    std::vector<std::thread> workers_;
    std::mutex mu_, run_mu_;
    std::condition_variable cv_, done_cv_;
    const std::function<void(int64_t)>* fn_ = nullptr;
    int64_t chunks_ = 0;
    std::atomic<int64_t> next_{0};
    int pending_ = 0;
    uint64_t generation_ = 0;
    bool stop_ = false;
    std::exception_ptr error_;
};

std::mutex g_pool_mu;
std::unique_ptr<Pool> g_pool;
int g_requested = 0;

Pool& pool() {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    int want = g_requested > 0 ? g_requested : default_threads();
    if (!g_pool || g_pool->size() != want) g_pool = std::make_unique<Pool>(want);
    return *g_pool;
}

thread_local bool t_inside = false;

}  // namespace

int num_threads() { return g_requested > 0 ? g_requested : default_threads(); }

void set_num_threads(int n) {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    g_requested = n;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    int threads = num_threads();
    // Nested calls and small ranges run inline.
    if (t_inside || threads == 1 || n <= grain) {
        fn(0, n);
        return;
    }
    // A few chunks per thread balance uneven work without much overhead.
    int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, int64_t(threads) * 4);
    int64_t step = (n + chunks - 1) / chunks;
    chunks = (n + step - 1) / step;
    pool().run(chunks, [&](int64_t c) {
        bool was = t_inside;
        t_inside = true;
        int64_t b = c * step, e = std::min(n, b + step);
        try {
            fn(b, e);
        } catch (...) {
            t_inside = was;
            throw;
        }
        t_inside = was;
    });
}

}  // namespace qdit
