#include "server/server.h"

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/png.h"
#include "pipeline/frontend.h"
#include "server/base64.h"
#include "server/request.h"

namespace qdit::server {

using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

int64_t unix_seconds() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

void send_json(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(to_text(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
    send_json(res, e.status, error_body(e));
    if (e.status == 429 || e.status == 503) res.set_header("Retry-After", "1");
}

// ---- jobs --------------------------------------------------------------------

enum class JobState { Queued, Running, Done, Failed, Cancelled };

const char* state_name(JobState s) {
    switch (s) {
        case JobState::Queued: return "queued";
        case JobState::Running: return "running";
        case JobState::Done: return "done";
        case JobState::Failed: return "failed";
        case JobState::Cancelled: return "cancelled";
    }
    return "?";
}

bool finished(JobState s) { return s == JobState::Done || s == JobState::Failed || s == JobState::Cancelled; }

// Thrown from the progress callback to stop a cancelled job at a step boundary.
struct Cancelled {};

struct Job {
    std::string id;
    ImageRequest req;
    bool async = false;
    int64_t created = 0;
    // Guarded by Impl::mu.
    JobState state = JobState::Queued;
    int step = 0;  // denoising steps done over all n images
    int image = 0; // the image being made
    bool cancel_requested = false;
    bool fetched = false;  // a client has seen its final state
    std::vector<std::string> pngs;
    std::vector<uint64_t> seeds;
    std::string stages;  // where a finished job's time went, for the log line
    std::string error;
    std::vector<std::string> events;  // server-sent events, every one since the job was accepted
    std::atomic<bool> cancel{false};

    int total_steps() const { return req.n * req.gen.steps; }
};

std::string new_job_id() {
    static std::mutex m;
    static std::mt19937_64 rng(std::random_device{}());
    std::lock_guard<std::mutex> lock(m);
    return fmt::format("job-{:016x}", rng());
}

// Prometheus histogram of step seconds.
struct Histogram {
    std::vector<double> bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    std::vector<uint64_t> counts = std::vector<uint64_t>(bounds.size() + 1, 0);
    double sum = 0;
    uint64_t count = 0;
    void add(double v) {
        size_t i = 0;
        while (i < bounds.size() && v > bounds[i]) ++i;
        ++counts[i];
        sum += v;
        ++count;
    }
};

// The endpoint a path belongs to, for the request counter's label.
std::string route_of(const std::string& path) {
    static const std::string jobs = "/v1/jobs/";
    if (path.rfind(jobs, 0) == 0 && path.size() > jobs.size())
        return path.size() > 7 && path.compare(path.size() - 7, 7, "/events") == 0 ? "/v1/jobs/{id}/events"
                                                                                    : "/v1/jobs/{id}";
    for (const char* p : {"/v1/images/generations", "/v1/jobs", "/v1/models", "/health", "/metrics"})
        if (path == p) return p;
    return "other";
}

bool same_secret(const std::string& a, const std::string& b) {
    // Constant time in the key's content.
    unsigned char d = a.size() == b.size() ? 0 : 1;
    for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
    return d == 0 && !b.empty();
}

}  // namespace

struct Server::Impl {
    ServerOptions opt;
    std::function<void(const std::string&)> log;
    std::string model_dir, model_id, quant_name;
    httplib::Server http;
    int listen_fd = -1;
    std::thread http_thread, worker;
    Family family = Family::ZImage;          // from model_index.json
    std::unique_ptr<ZImagePipeline> pipe;      // Z-Image
    std::unique_ptr<QwenImagePipeline> qwen;   // Qwen-Image

    mutable std::mutex mu;
    std::condition_variable cv;  // any job or queue change
    std::deque<std::shared_ptr<Job>> queue;
    std::unordered_map<std::string, std::shared_ptr<Job>> jobs;
    std::deque<std::string> finished_order;  // ids of the finished async jobs kept, oldest first
    size_t kept_bytes = 0;                   // their images and events
    std::shared_ptr<Job> running;
    bool loaded = false, draining = false, stopping = false;
    Clock::time_point idle_since;

    // Metrics (guarded by mu).
    std::map<std::pair<std::string, int>, uint64_t> requests;
    std::map<std::string, uint64_t> jobs_by_state;
    uint64_t images = 0;
    Histogram step_seconds;
    size_t device_peak_bytes = 0;

    void say(const std::string& s) const {
        if (log) log(s);
    }

    // ---- job bookkeeping (callers hold mu) ----

    void add_event(Job& j, const char* event, json data) {
        data["id"] = j.id;
        j.events.push_back(fmt::format("event: {}\ndata: {}\n\n", event, to_text(data)));
        cv.notify_all();
    }

    json job_json(const Job& j, bool with_result) const {
        json o = {{"id", j.id},
                  {"object", "image.job"},
                  {"created", j.created},
                  {"status", state_name(j.state)},
                  {"n", j.req.n},
                  {"step", j.step},
                  {"total_steps", j.total_steps()},
                  {"cancel_requested", j.cancel_requested}};
        if (j.state == JobState::Running) o["image"] = j.image;
        if (j.state == JobState::Failed)
            o["error"] = error_body(ApiError(500, j.error, "", "server_error"))["error"];
        if (with_result && j.state == JobState::Done) o["result"] = images_json(j);
        return o;
    }

    json images_json(const Job& j) const {
        json data = json::array();
        for (size_t i = 0; i < j.pngs.size(); ++i)
            data.push_back({{"b64_json", base64_encode(j.pngs[i])}, {"seed", j.seeds[i]}});
        return {{"created", j.created},
                {"data", data},
                {"output_format", "png"},
                {"size", fmt::format("{}x{}", j.req.gen.width, j.req.gen.height)}};
    }

    static size_t job_bytes(const Job& j) {
        size_t n = 0;
        for (const std::string& s : j.pngs) n += s.size();
        for (const std::string& s : j.events) n += s.size();
        return n;
    }

    // A synchronous job leaves with its reply; a finished async job stays for GET /v1/jobs/{id} until
    // newer ones push it out of the limits (the newest always stays).
    void finish(Job& j, JobState s) {
        j.state = s;
        ++jobs_by_state[state_name(s)];
        json data = {{"status", state_name(s)}, {"step", j.step}, {"total_steps", j.total_steps()}};
        if (s == JobState::Failed) data["error"] = j.error;
        add_event(j, state_name(s), data);
        if (!j.async) return;
        finished_order.push_back(j.id);
        kept_bytes += job_bytes(j);
        while (finished_order.size() > 1 && (finished_order.size() > opt.limits.kept_jobs ||
                                             kept_bytes > opt.limits.kept_bytes)) {
            auto it = jobs.find(finished_order.front());
            kept_bytes -= job_bytes(*it->second);
            jobs.erase(it);
            finished_order.pop_front();
        }
    }

    // ---- worker ----

    void run_job(const std::shared_ptr<Job>& job) {
        const ImageRequest& rq = job->req;
        std::vector<std::string> pngs;
        std::vector<uint64_t> seeds;
        double text_s = 0, denoise_s = 0, vae_s = 0, png_s = 0;
        for (int i = 0; i < rq.n; ++i) {
            if (job->cancel) throw Cancelled{};
            {
                std::lock_guard<std::mutex> lock(mu);
                job->image = i;
            }
            const uint64_t seed = rq.gen.seed + uint64_t(i);
            auto progress = [&](int step, int, double secs) {
                std::lock_guard<std::mutex> lock(mu);
                job->step = i * rq.gen.steps + step;
                step_seconds.add(secs);
                add_event(*job, "step",
                          {{"status", "running"}, {"image", i}, {"step", job->step},
                           {"total_steps", job->total_steps()}, {"seconds", secs}});
                if (job->cancel) throw Cancelled{};
            };
            GenerateResult r;
            std::vector<std::pair<std::string, std::string>> meta;
            if (qwen) {
                QwenImageGenerateOptions go = rq.qwen();
                go.seed = seed;
                r = qwen->generate(go, progress);
                meta = image_metadata(go, model_dir, quant_name, opt.device);
            } else {
                GenerateOptions go = rq.gen;
                go.seed = seed;
                r = pipe->generate(go, progress);
                meta = image_metadata(go, model_dir, quant_name, opt.device);
            }
            const auto tp = Clock::now();
            pngs.push_back(encode_png(r.image.data<uint8_t>(), int(r.image.size(1)), int(r.image.size(0)), meta));
            text_s += r.text_seconds;
            denoise_s += r.denoise_seconds;
            vae_s += r.vae_seconds;
            png_s += std::chrono::duration<double>(Clock::now() - tp).count();
            seeds.push_back(seed);
            std::lock_guard<std::mutex> lock(mu);
            device_peak_bytes = std::max(device_peak_bytes, r.device_peak_bytes);
            ++images;
        }
        std::lock_guard<std::mutex> lock(mu);
        job->pngs = std::move(pngs);
        job->seeds = std::move(seeds);
        job->stages = fmt::format(" (text encoder {:.2f} s, denoise {:.2f} s, VAE {:.2f} s, PNG {:.2f} s)", text_s,
                                  denoise_s, vae_s, png_s);
    }

    void work() {
        for (;;) {
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lock(mu);
                cv.wait(lock, [&] { return !queue.empty() || stopping; });
                if (queue.empty()) return;
                job = queue.front();
                queue.pop_front();
                running = job;
                job->state = JobState::Running;
                add_event(*job, "running", {{"status", "running"}, {"step", 0}, {"total_steps", job->total_steps()}});
            }
            auto t0 = Clock::now();
            JobState end = JobState::Done;
            std::string error;
            try {
                run_job(job);
            } catch (const Cancelled&) {
                end = JobState::Cancelled;
            } catch (const std::exception& e) {
                end = JobState::Failed;
                error = e.what();
            }
            std::lock_guard<std::mutex> lock(mu);
            job->error = error;
            finish(*job, end);
            running.reset();
            idle_since = Clock::now();
            say(fmt::format("{} {} ({} image(s) {}x{}, {} steps) in {:.2f} s{}{}", job->id, state_name(end),
                            job->req.n, job->req.gen.width, job->req.gen.height, job->req.gen.steps,
                            std::chrono::duration<double>(Clock::now() - t0).count(),
                            end == JobState::Done ? job->stages : "", error.empty() ? "" : ": " + error));
        }
    }

    // Validates a request body and queues it as a job; throws ApiError.
    std::shared_ptr<Job> submit(const httplib::Request& req, bool async) {
        json body = parse_request_body(req.body);
        auto job = std::make_shared<Job>();
        job->req = parse_image_request(body, opt.limits, model_id, family);
        job->async = async;
        job->created = unix_seconds();
        std::lock_guard<std::mutex> lock(mu);
        if (!loaded) throw ApiError{503, "the model is still loading", "", "server_error", "model_loading"};
        if (draining) throw ApiError{503, "the server is shutting down", "", "server_error", "shutting_down"};
        check_against_model(job->req);
        if (int(queue.size()) >= opt.max_queue)
            throw ApiError{429, fmt::format("the queue is full ({} jobs waiting); retry later", queue.size()), "",
                           "rate_limit_error", "queue_full"};
        do {
            job->id = new_job_id();
        } while (jobs.count(job->id));
        jobs[job->id] = job;
        queue.push_back(job);
        add_event(*job, "queued", {{"status", "queued"}, {"step", 0}, {"total_steps", job->total_steps()}});
        return job;
    }

    // The checks qdit generate makes before reading any weight (ZImagePipeline::check: the
    // bounds, the size against the VAE scale x patch and the RoPE table, the prompts' tokens
    // against the RoPE table), as a 400 naming the request's field. Needs the model (mu held).
    void check_against_model(const ImageRequest& rq) const {
        try {
            if (qwen)
                qwen->check(rq.qwen());
            else
                pipe->check(rq.gen);
        } catch (const Error& e) {
            const std::string msg = e.what();
            const char* param = msg.rfind("the negative prompt", 0) == 0     ? "negative_prompt"
                                : msg.rfind("the prompt", 0) == 0            ? "prompt"
                                : msg.rfind("--steps", 0) == 0               ? "num_inference_steps"
                                : msg.rfind("--guidance", 0) == 0            ? "guidance_scale"
                                : msg.rfind("--true-cfg-scale", 0) == 0      ? "true_cfg_scale"
                                : msg.rfind("--max-sequence-length", 0) == 0 ? "max_sequence_length"
                                                                             : "size";
            bad_field(param, fmt::format("'{}': {}", param,
                                         rename_flags(msg, {{"--width", "width"},
                                                            {"--height", "height"},
                                                            {"--steps", "'num_inference_steps'"},
                                                            {"--guidance", "'guidance_scale'"},
                                                            {"--true-cfg-scale", "'true_cfg_scale'"},
                                                            {"--max-sequence-length", "'max_sequence_length'"}})));
        }
    }

    std::shared_ptr<Job> find_job(const std::string& id) {
        auto it = jobs.find(id);
        if (it == jobs.end())
            throw ApiError{404, fmt::format("no job '{}'", id), "id", "invalid_request_error", "job_not_found"};
        return it->second;
    }

    // ---- HTTP ----

    void routes() {
        auto guarded = [this](auto fn) {
            return [this, fn](const httplib::Request& req, httplib::Response& res) {
                try {
                    fn(req, res);
                } catch (const ApiError& e) {
                    send_error(res, e);
                }
            };
        };

        http.Post("/v1/images/generations", guarded([this](const httplib::Request& req, httplib::Response& res) {
            std::shared_ptr<Job> job = submit(req, false);
            std::unique_lock<std::mutex> lock(mu);
            cv.wait(lock, [&] { return finished(job->state); });
            jobs.erase(job->id);
            if (job->state == JobState::Done) return send_json(res, 200, images_json(*job));
            if (job->state == JobState::Cancelled)
                return send_error(res, ApiError(409, fmt::format("{} was cancelled", job->id), "", "invalid_request_error",
                                        "cancelled"));
            send_error(res, ApiError(500, job->error, "", "server_error"));
        }));

        http.Post("/v1/jobs", guarded([this](const httplib::Request& req, httplib::Response& res) {
            std::shared_ptr<Job> job = submit(req, true);
            std::lock_guard<std::mutex> lock(mu);
            send_json(res, 202, job_json(*job, false));
            res.set_header("Location", "/v1/jobs/" + job->id);
        }));

        http.Get(R"(/v1/jobs/([A-Za-z0-9_-]+))", guarded([this](const httplib::Request& req, httplib::Response& res) {
            std::lock_guard<std::mutex> lock(mu);
            std::shared_ptr<Job> job = find_job(req.matches[1]);
            if (finished(job->state)) job->fetched = true;
            send_json(res, 200, job_json(*job, true));
        }));

        http.Delete(R"(/v1/jobs/([A-Za-z0-9_-]+))",
                    guarded([this](const httplib::Request& req, httplib::Response& res) {
                        std::lock_guard<std::mutex> lock(mu);
                        std::shared_ptr<Job> job = find_job(req.matches[1]);
                        if (job->state == JobState::Done || job->state == JobState::Failed)
                            throw ApiError{409, fmt::format("{} has already finished ({})", job->id,
                                                            state_name(job->state)),
                                           "id", "invalid_request_error", "job_finished"};
                        cancel(job);
                        send_json(res, 200, job_json(*job, false));
                    }));

        http.Get(R"(/v1/jobs/([A-Za-z0-9_-]+)/events)",
                 guarded([this](const httplib::Request& req, httplib::Response& res) {
                     std::shared_ptr<Job> job;
                     {
                         std::lock_guard<std::mutex> lock(mu);
                         job = find_job(req.matches[1]);
                     }
                     auto sent = std::make_shared<size_t>(0);
                     res.set_header("Cache-Control", "no-cache");
                     res.set_chunked_content_provider("text/event-stream", [this, job, sent](size_t,
                                                                                             httplib::DataSink& sink) {
                         std::unique_lock<std::mutex> lock(mu);
                         cv.wait_for(lock, std::chrono::milliseconds(500),
                                     [&] { return job->events.size() > *sent; });
                         std::vector<std::string> out(job->events.begin() + long(*sent), job->events.end());
                         *sent = job->events.size();
                         const bool end = finished(job->state);
                         if (end) job->fetched = true;
                         lock.unlock();
                         for (const std::string& e : out)
                             if (!sink.write(e.data(), e.size())) return false;
                         if (end) {
                             sink.done();
                             return true;
                         }
                         return sink.is_writable();
                     });
                 }));

        http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
            json m = {{"id", model_id}, {"object", "model"}, {"created", 0}, {"owned_by", "qdit"},
                      {"quantization", quant_name}, {"device", opt.device}};
            send_json(res, 200, {{"object", "list"}, {"data", json::array({m})}});
        });

        http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
            std::lock_guard<std::mutex> lock(mu);
            const char* status = draining ? "draining" : loaded ? "ok" : "loading";
            send_json(res, loaded && !draining ? 200 : 503,
                      {{"status", status}, {"model", model_id}, {"queued", queue.size()}, {"running", bool(running)}});
        });

        http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
            res.set_content(metrics(), "text/plain; version=0.0.4");
        });

        http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
            if (opt.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
            const std::string auth = req.get_header_value("Authorization");
            const std::string prefix = "Bearer ";
            if (auth.rfind(prefix, 0) == 0 && same_secret(auth.substr(prefix.size()), opt.api_key))
                return httplib::Server::HandlerResponse::Unhandled;
            send_error(res, ApiError(401, auth.empty() ? "missing API key: send 'Authorization: Bearer KEY'"
                                               : "incorrect API key",
                             "", "invalid_request_error", "invalid_api_key"));
            return httplib::Server::HandlerResponse::Handled;
        });

        // httplib's own refusals (no route, body too large, unreadable request) as JSON.
        http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                                       httplib::Response& res) {
            if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
            ApiError e{res.status, fmt::format("HTTP {}", res.status), ""};
            if (res.status == 404) e.message = fmt::format("no endpoint {} {}", req.method, req.path);
            if (res.status == 413) e.message = "the request body is too large";
            send_json(res, res.status, error_body(e));
            return httplib::Server::HandlerResponse::Handled;
        }));

        http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
            std::string what = "internal error";
            try {
                std::rethrow_exception(ep);
            } catch (const std::exception& e) {
                what = e.what();
            } catch (...) {
            }
            send_error(res, ApiError(500, what, "", "server_error"));
        });

        http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
            std::lock_guard<std::mutex> lock(mu);
            ++requests[{route_of(req.path), res.status}];
        });
    }

    // Callers hold mu.
    void cancel(const std::shared_ptr<Job>& job) {
        if (finished(job->state)) return;
        job->cancel_requested = true;
        job->cancel = true;
        if (job->state == JobState::Queued) {
            for (auto it = queue.begin(); it != queue.end(); ++it)
                if (*it == job) {
                    queue.erase(it);
                    break;
                }
            finish(*job, JobState::Cancelled);
        }
        cv.notify_all();
    }

    std::string metrics() {
        std::lock_guard<std::mutex> lock(mu);
        std::string s;
        s += "# HELP qdit_requests_total HTTP requests answered, by endpoint and status.\n"
             "# TYPE qdit_requests_total counter\n";
        for (const auto& [k, v] : requests)
            s += fmt::format("qdit_requests_total{{endpoint=\"{}\",code=\"{}\"}} {}\n", k.first, k.second, v);
        s += "# HELP qdit_queue_depth Accepted jobs waiting for the worker.\n# TYPE qdit_queue_depth gauge\n";
        s += fmt::format("qdit_queue_depth {}\n", queue.size());
        s += "# HELP qdit_jobs_running Jobs being run.\n# TYPE qdit_jobs_running gauge\n";
        s += fmt::format("qdit_jobs_running {}\n", running ? 1 : 0);
        s += "# HELP qdit_jobs_total Finished jobs, by final status.\n# TYPE qdit_jobs_total counter\n";
        for (const char* st : {"done", "failed", "cancelled"})
            s += fmt::format("qdit_jobs_total{{status=\"{}\"}} {}\n", st, jobs_by_state[st]);
        s += "# HELP qdit_images_total Images generated.\n# TYPE qdit_images_total counter\n";
        s += fmt::format("qdit_images_total {}\n", images);
        s += "# HELP qdit_step_seconds Seconds per denoising step.\n# TYPE qdit_step_seconds histogram\n";
        uint64_t cum = 0;
        for (size_t i = 0; i <= step_seconds.bounds.size(); ++i) {
            cum += step_seconds.counts[i];
            s += fmt::format("qdit_step_seconds_bucket{{le=\"{}\"}} {}\n",
                             i < step_seconds.bounds.size() ? fmt::format("{}", step_seconds.bounds[i]) : "+Inf",
                             cum);
        }
        s += fmt::format("qdit_step_seconds_sum {}\nqdit_step_seconds_count {}\n", step_seconds.sum,
                         step_seconds.count);
        s += "# HELP qdit_model_loaded 1 once the model is loaded.\n# TYPE qdit_model_loaded gauge\n";
        s += fmt::format("qdit_model_loaded {}\n", loaded ? 1 : 0);
        if (opt.pipeline.device.type == DeviceType::CUDA) {
            s += "# HELP qdit_gpu_memory_peak_bytes Peak GPU bytes held by a generation so far.\n"
                 "# TYPE qdit_gpu_memory_peak_bytes gauge\n";
            s += fmt::format("qdit_gpu_memory_peak_bytes{{device=\"{}\"}} {}\n", opt.device, device_peak_bytes);
        }
        return s;
    }
};

Server::Server(ServerOptions opt, std::function<void(const std::string&)> log) : p_(std::make_unique<Impl>()) {
    p_->opt = std::move(opt);
    p_->log = std::move(log);
    if (p_->opt.max_queue < 1) raise<UsageError>("--max-queue {}: must be 1 or more", p_->opt.max_queue);
    p_->model_dir = resolve_model_dir(p_->opt.model);
    // model_index.json picks the pipeline; a folder whose index cannot be read goes the Z-Image way,
    // which reports what is wrong with it when it loads.
    try {
        if (pipeline_class(p_->model_dir) == "QwenImagePipeline") p_->family = Family::QwenImage;
    } catch (const Error&) {
    }
    p_->model_id = std::filesystem::path(p_->model_dir).filename().string();
    if (p_->model_id.empty()) p_->model_id = std::filesystem::path(p_->model_dir).parent_path().filename().string();
    p_->quant_name = quant_method_name(p_->opt.pipeline.transformer_quant.method);
}

Server::~Server() { stop(); }

int Server::start() {
    Impl& s = *p_;
    s.routes();
    // Each waiting synchronous request and each event stream holds a thread.
    const size_t threads = size_t(std::max(32, 2 * s.opt.max_queue + 16));
    s.http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    s.http.set_payload_max_length(s.opt.limits.max_body_bytes);
    // httplib's default sets SO_REUSEPORT, which lets a second server bind the same port and take half
    // the connections; SO_REUSEADDR alone makes that an error. Remember the listening socket (the
    // last one created) to deepen its backlog below.
    s.http.set_socket_options([&s](int sock) {
        int yes = 1;
        ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
        s.listen_fd = sock;
    });
    int port = s.opt.port;
    if (port == 0) {
        port = s.http.bind_to_any_port(s.opt.host);
        if (port < 0) raise<IoError>("cannot listen on {} (any port)", s.opt.host);
    } else if (!s.http.bind_to_port(s.opt.host, port)) {
        raise<IoError>("cannot listen on {}:{} (address in use, or not an address of this machine)", s.opt.host,
                       port);
    }
    // Debian's cpp-httplib listens with a backlog of 5: a burst of clients connecting at once overflows
    // it and their SYNs are dropped (retried after 1, 2, 4, 8 s). Listening again only raises the backlog.
    if (s.listen_fd >= 0) ::listen(s.listen_fd, SOMAXCONN);
    s.http_thread = std::thread([&s] { s.http.listen_after_bind(); });
    return port;
}

void Server::load() {
    Impl& s = *p_;
    s.say(s.opt.model.empty() ? fmt::format("no --model given: loading the built-in tiny Z-Image pipeline at {}; its "
                                            "weights are random, so the images are noise",
                                            s.model_dir)
                              : fmt::format("loading {}", s.model_dir));
    auto t0 = Clock::now();
    const LoadProgress progress(s.model_dir, ::isatty(2));
    std::unique_ptr<ZImagePipeline> pipe;
    std::unique_ptr<QwenImagePipeline> qwen;
    if (s.family == Family::QwenImage)
        qwen = std::make_unique<QwenImagePipeline>(s.model_dir, s.opt.pipeline);
    else
        pipe = std::make_unique<ZImagePipeline>(s.model_dir, s.opt.pipeline);
    // The "ready" line is written before /health reports ok, so a client that waited for that
    // sees the line in the log.
    s.say(fmt::format("model '{}' ({}) loaded in {:.2f} s ({}, {}); ready", s.model_id,
                      s.family == Family::QwenImage ? "Qwen-Image" : "Z-Image",
                      std::chrono::duration<double>(Clock::now() - t0).count(), s.opt.device, s.quant_name));
    {
        std::lock_guard<std::mutex> lock(s.mu);
        s.pipe = std::move(pipe);
        s.qwen = std::move(qwen);
        s.loaded = true;
        s.idle_since = Clock::now();
    }
    s.worker = std::thread([&s] { s.work(); });
}

void Server::drain() {
    std::lock_guard<std::mutex> lock(p_->mu);
    if (!p_->draining)
        p_->say(fmt::format("shutting down: refusing new jobs, finishing {} accepted",
                            p_->queue.size() + (p_->running ? 1 : 0)));
    p_->draining = true;
}

void Server::cancel_all() {
    std::lock_guard<std::mutex> lock(p_->mu);
    std::vector<std::shared_ptr<Job>> all(p_->queue.begin(), p_->queue.end());
    if (p_->running) all.push_back(p_->running);
    for (const auto& j : all) p_->cancel(j);
}

bool Server::drained() const {
    std::lock_guard<std::mutex> lock(p_->mu);
    if (!p_->draining || !p_->queue.empty() || p_->running) return false;
    for (const auto& [id, j] : p_->jobs)
        if (j->async && !j->fetched &&
            Clock::now() - p_->idle_since < std::chrono::duration<double>(p_->opt.result_grace_seconds))
            return false;
    return true;
}

void Server::stop() {
    Impl& s = *p_;
    {
        std::lock_guard<std::mutex> lock(s.mu);
        s.stopping = true;
        s.draining = true;
        s.cv.notify_all();
    }
    if (s.worker.joinable()) s.worker.join();
    s.http.stop();
    if (s.http_thread.joinable()) s.http_thread.join();
}

int serve(const ServerOptions& opt) {
    // Signals are taken synchronously by this thread; every thread started below inherits the mask.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    auto log = [](const std::string& s) { fmt::print(stderr, "qdit serve: {}\n", s); };
    Server server(opt, log);
    const int port = server.start();
    log(fmt::format("listening on http://{}:{}", opt.host, port));
    std::thread loader;
    std::exception_ptr load_error;
    std::atomic<bool> load_done{false};
    loader = std::thread([&] {
        try {
            server.load();
        } catch (...) {
            load_error = std::current_exception();
        }
        load_done = true;
    });
    int signals = 0;
    const timespec tick{0, 100 * 1000 * 1000};
    for (;;) {
        const int sig = sigtimedwait(&sigs, nullptr, &tick);
        if (sig > 0) {
            ++signals;
            if (signals == 1) {
                server.drain();
            } else {
                log("second signal: cancelling the accepted jobs");
                server.cancel_all();
            }
        }
        if (load_done && load_error) break;
        if (load_done && server.drained()) break;
    }
    loader.join();
    server.stop();
    if (load_error) std::rethrow_exception(load_error);
    log("stopped");
    return 0;
}

}  // namespace qdit::server
