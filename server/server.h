// qdit's HTTP server: an OpenAI-style image endpoint and async jobs over one
// ZImagePipeline or QwenImagePipeline (model_index.json picks it), loaded once,
// run by one worker thread per device through a bounded queue. See
// docs/usage.md ("qdit serve") for the protocol.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "pipeline/zimage_pipeline.h"
#include "server/request.h"

namespace qdit::server {

struct ServerOptions {
    std::string model;          // pipeline folder; empty: the built-in tiny pipeline
    PipelineOptions pipeline;   // quantization and device
    std::string device = "cpu"; // the device as named on the command line (metadata, /v1/models)
    std::string host = "127.0.0.1";
    int port = 8000;            // 0: any free port
    std::string api_key;        // when set, every endpoint but /health needs "Authorization: Bearer KEY"
    int max_queue = 16;         // accepted jobs waiting for the worker; one more gets 429
    double result_grace_seconds = 10;  // after draining, how long finished async results wait to be fetched
    Limits limits;
};

class Server {
public:
    // `log` receives one line per event worth telling an operator (may be empty).
    Server(ServerOptions opt, std::function<void(const std::string&)> log = {});
    ~Server();

    // Binds the address (IoError when it cannot) and serves on a background
    // thread; GET /health answers 503 "loading" until load() has finished.
    // Returns the bound port.
    int start();
    // Loads the model on the calling thread, then starts the worker. Throws the
    // pipeline's error when the model cannot be loaded.
    void load();
    // Stops accepting jobs (503) and lets the worker finish the accepted ones.
    void drain();
    // Cancels every accepted job (queued ones at once, the running one at its next step).
    void cancel_all();
    // After drain(): true once the worker is idle and the finished async results were
    // fetched or waited result_grace_seconds for.
    bool drained() const;
    // Stops listening and joins every thread.
    void stop();

private:
    struct Impl;
    std::unique_ptr<Impl> p_;
};

// The `qdit serve` process: start, load, serve until SIGTERM or SIGINT, then
// drain (a second signal cancels the accepted jobs) and return 0.
int serve(const ServerOptions& opt);

}  // namespace qdit::server
