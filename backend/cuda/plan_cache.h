// cuDNN execution plans kept on disk between processes, for the convolutions (conv.h) and the
// attention (attention.h), and the counts of this process's plans that `generate --verbose` prints.
//
// Building a plan (cuDNN's heuristics, then run-time compilation of the fused kernels) takes 0.1 to
// 0.9 s. So a built plan is stored as cudnn-frontend's serialized execution plan in the plan folder
// (io/cache.h: <qdit cache folder>/cudnn-plans, the cache folder being $QDIT_CACHE_DIR, else
// $XDG_CACHE_HOME/qdit, else ~/.cache/qdit), one file per plan, under a key naming the plan's kind
// and format, the GPU's name and compute capability, the driver, cuDNN, cudnn-frontend and qdit
// versions and the plan's whole shape; the next process that needs the same plan reads it instead
// of building it (without cuDNN's warm-up run: a built plan has none either). An entry that cannot
// be used (corrupt, truncated, written for another key, refused by cuDNN) is ignored with one
// warning on stderr per process and the plan is built and stored again; a folder that cannot be
// written only costs the rebuild. QDIT_PLAN_CACHE=0 turns the cache off (read at each plan).
#pragma once

namespace qdit::cuda {

// The plans of one kind in this process so far: built (and the time that took), read from the plan
// cache (and that time), cache entries found but unusable, built plans that could not be stored
// (cuDNN cannot serialize them, or the folder cannot be written).
struct PlanCounts {
    int built = 0, cached = 0, rejected = 0, unstored = 0;
    double build_s = 0, load_s = 0;
};

struct CudnnPlanStats {
    PlanCounts conv, attention;
    PlanCounts total() const;
};
CudnnPlanStats cudnn_plan_stats();

}  // namespace qdit::cuda

#if QDIT_WITH_CUDNN
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <cudnn.h>
#include <cudnn_frontend.h>

namespace qdit::cuda::plan_cache {

enum class Kind { Conv, Attention };

// The key of a plan of `kind` built by code of version `format` for `shape` (everything the graph
// depends on) on `device`; "" when the plan cache is off or the device cannot be queried.
std::string key(Kind kind, int format, int device, const std::string& shape);

// A plan read from the cache: its graph, deserialized on the handle given, the graph's workspace
// size and the bytes stored before the graph.
struct Stored {
    std::shared_ptr<cudnn_frontend::graph::Graph> graph;
    int64_t workspace = 0;
    std::vector<uint8_t> extra;
};

// The plan stored under `key` (nothing when it is ""), whose `extra_len` leading bytes `valid`
// must accept. Nothing when there is no entry, or when it cannot be used (then counted as rejected,
// with one warning per process). Counted as read, with the time, when found.
std::optional<Stored> load(Kind kind, cudnnHandle_t handle, const std::string& key, size_t extra_len,
                           const std::function<bool(const std::vector<uint8_t>&)>& valid);

// Counts a plan built in `build_s` seconds and stores it under `key` (unless ""), `extra` before
// the serialized graph; counted as unstored when cuDNN cannot serialize the graph or the folder
// cannot be written.
void built(Kind kind, const std::string& key, const cudnn_frontend::graph::Graph& graph,
           const std::vector<uint8_t>& extra, double build_s);

}  // namespace qdit::cuda::plan_cache
#endif
