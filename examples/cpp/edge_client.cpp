// edge_client: stream frames from a file to the edgeinfer daemon and print top-k per frame.
//
//   edge_client --server localhost:50051 --jpeg photo.jpg --repeat 10 --top-k 3
//   edge_client --raw frames.rgb --width 640 --height 480 [--bgr]   # N frames back to back
//   edge_client --health-only
//
// It first checks the daemon's grpc.health.v1 service (waiting up to --wait seconds
// for SERVING: the daemon loads its models after it starts listening), then opens one
// StreamClassify stream (proto/edgeinfer.proto): a StreamConfig, then the frames, each
// answered once, in order. One line per answer:
//
//   frame 0  12.3 ms  airship [405] 0.0012 | jack-o'-lantern [607] 0.0011
//   frame 1 dropped (a newer frame of this stream arrived while the model was busy)
//   frame 2 error INVALID_ARGUMENT: the JPEG could not be decoded ...
//
// and a summary line. Exit status: 0 when every frame got its answer, 1 when the daemon
// failed (the gRPC status is printed), 2 for a usage mistake.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "edgeinfer.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;
using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

const char* kService = "edgeinfer.v1.EdgeInference";

struct Options {
  std::string server = "localhost:50051";
  std::string model = "squeezenet";
  std::string precision;
  unsigned top_k = 5;
  std::string drop_policy = "all";
  std::vector<std::string> jpegs;
  std::string raw;
  unsigned width = 0, height = 0;
  bool bgr = false;
  unsigned repeat = 1;
  double wait_s = 30.0;
  bool health_only = false;
  std::string ca, cert, key, token_file;
};

[[noreturn]] void usage_error(const std::string& line) {
  std::cerr << "edge_client: " << line << " (see --help)\n";
  std::exit(2);
}

const char* usage =
    "usage: edge_client [--server HOST:PORT] [--model NAME] [--precision P] [--top-k K]\n"
    "                   [--drop-policy all|latest] [--repeat N] [--wait SECONDS]\n"
    "                   (--jpeg FILE [--jpeg FILE ...] | --raw FILE --width W --height H [--bgr] | --health-only)\n"
    "                   [--ca PEM [--cert PEM --key PEM]] [--token-file FILE]\n"
    "  --raw: height*width*3 uint8 pixels per frame (RGB, or BGR with --bgr), frames back to back\n"
    "  --drop-policy: all (default here: every frame of a file is inferred) or latest (camera-style)\n"
    "  --ca/--cert/--key: TLS (and mutual TLS) from PEM files; --token-file: bearer token\n"
    "  --server dns:///name:port or ipv4:a:p,b:p spreads streams round-robin over many daemons\n";

unsigned to_unsigned(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    long v = std::stol(value, &used);
    if (used != value.size() || v < 0) throw std::invalid_argument(value);
    return static_cast<unsigned>(v);
  } catch (const std::exception&) {
    usage_error(flag + " wants a whole number, got '" + value + "'");
  }
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << usage;
      std::exit(0);
    }
    if (a == "--bgr") { o.bgr = true; continue; }
    if (a == "--health-only") { o.health_only = true; continue; }
    if (i + 1 >= argc) usage_error(a + " needs a value");
    std::string v = argv[++i];
    if (a == "--server") o.server = v;
    else if (a == "--model") o.model = v;
    else if (a == "--precision") o.precision = v;
    else if (a == "--top-k") o.top_k = to_unsigned(a, v);
    else if (a == "--drop-policy") o.drop_policy = v;
    else if (a == "--jpeg") o.jpegs.push_back(v);
    else if (a == "--raw") o.raw = v;
    else if (a == "--width") o.width = to_unsigned(a, v);
    else if (a == "--height") o.height = to_unsigned(a, v);
    else if (a == "--repeat") o.repeat = to_unsigned(a, v);
    else if (a == "--wait") o.wait_s = to_unsigned(a, v);
    else if (a == "--ca") o.ca = v;
    else if (a == "--cert") o.cert = v;
    else if (a == "--key") o.key = v;
    else if (a == "--token-file") o.token_file = v;
    else usage_error("unknown argument " + a);
  }
  if (o.drop_policy != "all" && o.drop_policy != "latest") usage_error("--drop-policy is all or latest");
  if (!o.health_only) {
    if (o.jpegs.empty() == o.raw.empty()) usage_error("give --jpeg FILE or --raw FILE (one kind), or --health-only");
    if (!o.raw.empty() && (o.width == 0 || o.height == 0)) usage_error("--raw needs --width and --height");
  }
  if (o.repeat == 0) usage_error("--repeat must be at least 1");
  if (o.cert.empty() != o.key.empty()) usage_error("--cert and --key go together");
  if (!o.cert.empty() && o.ca.empty()) usage_error("--cert/--key need --ca");
  return o;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) usage_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

const char* code_name(int code) {
  static const char* names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? names[code] : "UNKNOWN";
}

int fail(const grpc::Status& s) {
  std::cerr << "edge_client: " << code_name(s.error_code()) << ": " << s.error_message() << "\n";
  return 1;
}

std::shared_ptr<grpc::Channel> make_channel(const Options& o) {
  grpc::ChannelArguments args;
  // Same choice as the Python EdgeClient: a target with several addresses spreads streams.
  args.SetLoadBalancingPolicyName("round_robin");
  args.SetMaxSendMessageSize(16 << 20);
  args.SetMaxReceiveMessageSize(16 << 20);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (o.ca.empty()) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = read_file(o.ca);
    if (!o.cert.empty()) {
      ssl.pem_cert_chain = read_file(o.cert);
      ssl.pem_private_key = read_file(o.key);
    }
    creds = grpc::SslCredentials(ssl);
  }
  return grpc::CreateCustomChannel(o.server, creds, args);
}

// The frames to send, in order, --repeat times: each JPEG file, or each height*width*3 slice of the
// raw file. Raw frames are read one at a time as they are sent, so a long recording needs no memory.
class FrameSource {
 public:
  explicit FrameSource(const Options& o) : o_(o), frame_bytes_(size_t(o.width) * o.height * 3) {
    if (!o.raw.empty()) {
      raw_.open(o.raw, std::ios::binary | std::ios::ate);
      if (!raw_) usage_error("cannot read " + o.raw);
      const auto size = static_cast<size_t>(raw_.tellg());
      if (size == 0 || size % frame_bytes_ != 0) {
        usage_error(o.raw + " holds " + std::to_string(size) + " bytes, not a whole number of " +
                    std::to_string(o.width) + "x" + std::to_string(o.height) + "x3 frames");
      }
      per_pass_ = size / frame_bytes_;
    } else {
      for (const auto& path : o.jpegs) jpegs_.push_back(read_file(path));
      per_pass_ = jpegs_.size();
    }
  }

  size_t total() const { return per_pass_ * o_.repeat; }

  // Fills `image` with frame `i` (0 <= i < total(), called in order).
  void fill(size_t i, edgeinfer::v1::Image* image) {
    const size_t k = i % per_pass_;
    if (o_.raw.empty()) {
      image->set_jpeg(jpegs_[k]);
      return;
    }
    auto* raw = image->mutable_raw();
    raw->set_width(o_.width);
    raw->set_height(o_.height);
    raw->set_pixel_format(o_.bgr ? edgeinfer::v1::PIXEL_FORMAT_BGR : edgeinfer::v1::PIXEL_FORMAT_RGB);
    std::string* data = raw->mutable_data();
    data->resize(frame_bytes_);
    raw_.seekg(static_cast<std::streamoff>(k * frame_bytes_));
    if (!raw_.read(data->data(), static_cast<std::streamsize>(frame_bytes_))) usage_error("cannot read " + o_.raw);
  }

 private:
  const Options& o_;
  const size_t frame_bytes_;
  std::ifstream raw_;
  std::vector<std::string> jpegs_;
  size_t per_pass_ = 0;
};

void authorize(grpc::ClientContext& ctx, const std::string& token) {
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
}

// Polls Check until the EdgeInference service is SERVING or --wait runs out.
int check_health(const std::shared_ptr<grpc::Channel>& channel, const Options& o) {
  auto health = Health::NewStub(channel);
  const auto deadline = Clock::now() + std::chrono::duration<double>(o.wait_s);
  for (;;) {
    HealthCheckRequest request;
    request.set_service(kService);
    HealthCheckResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status s = health->Check(&ctx, request, &response);
    const bool retry = s.ok() ? response.status() != HealthCheckResponse::SERVING
                              : s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                                    s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (!retry || Clock::now() >= deadline) {
      if (!s.ok()) return fail(s);
      std::cout << "health: " << kService << " "
                << HealthCheckResponse::ServingStatus_Name(response.status()) << std::endl;
      return response.status() == HealthCheckResponse::SERVING ? 0 : 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

int stream(const std::shared_ptr<grpc::Channel>& channel, const Options& o, const std::string& token,
           FrameSource& frames) {
  auto stub = edgeinfer::v1::EdgeInference::NewStub(channel);
  grpc::ClientContext ctx;
  authorize(ctx, token);
  auto call = stub->StreamClassify(&ctx);

  std::mutex mu;
  std::map<uint64_t, Clock::time_point> sent_at;
  // The sender runs beside the reader: with --drop-policy all the daemon's queue is
  // bounded and flow control holds Write() back until answers have been read.
  std::thread sender([&] {
    edgeinfer::v1::StreamRequest config;
    auto* c = config.mutable_config();
    c->mutable_model()->set_name(o.model);
    c->mutable_model()->set_precision(o.precision);
    c->set_top_k(o.top_k);
    c->set_drop_policy(o.drop_policy == "all" ? edgeinfer::v1::DROP_POLICY_ALL : edgeinfer::v1::DROP_POLICY_LATEST);
    if (!call->Write(config)) return;  // the stream already ended: Finish() has the status
    for (size_t i = 0; i < frames.total(); ++i) {
      edgeinfer::v1::StreamRequest request;
      auto* frame = request.mutable_frame();
      frame->set_sequence(i);
      frame->set_capture_time_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
      frames.fill(i, frame->mutable_image());
      {
        std::lock_guard<std::mutex> lock(mu);
        sent_at[i] = Clock::now();
      }
      if (!call->Write(request)) return;
    }
    call->WritesDone();
  });

  size_t predicted = 0, dropped = 0, errors = 0;
  edgeinfer::v1::StreamResponse response;
  while (call->Read(&response)) {
    std::ostringstream line;
    line << "frame " << response.sequence();
    if (response.has_prediction()) {
      ++predicted;
      double ms = 0;
      {
        std::lock_guard<std::mutex> lock(mu);
        auto it = sent_at.find(response.sequence());
        if (it != sent_at.end()) {
          ms = std::chrono::duration<double, std::milli>(Clock::now() - it->second).count();
          sent_at.erase(it);
        }
      }
      char head[32];
      std::snprintf(head, sizeof head, " %7.1f ms ", ms);
      line << head;
      const auto& classes = response.prediction().classes();
      for (int k = 0; k < classes.size(); ++k) {
        char prob[32];
        std::snprintf(prob, sizeof prob, "%.4f", classes[k].probability());
        line << (k ? " | " : " ") << classes[k].label() << " [" << classes[k].index() << "] " << prob;
      }
    } else if (response.has_dropped()) {
      ++dropped;
      line << " dropped (" << response.dropped().reason() << ")";
    } else {
      ++errors;
      line << " error " << code_name(response.error().code()) << ": " << response.error().message();
    }
    std::cout << line.str() << std::endl;
  }
  sender.join();
  grpc::Status status = call->Finish();
  const size_t answered = predicted + dropped + errors;
  std::cout << "summary: sent " << frames.total() << ", answered " << answered << " (predicted " << predicted
            << ", dropped " << dropped << ", errors " << errors << ")" << std::endl;
  if (!status.ok()) return fail(status);
  return answered == frames.total() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const std::string token = o.token_file.empty() ? "" : trim(read_file(o.token_file));
  // Open (and check) the files before connecting: a wrong --width is a usage mistake, not a daemon's.
  std::unique_ptr<FrameSource> frames = o.health_only ? nullptr : std::make_unique<FrameSource>(o);
  auto channel = make_channel(o);
  // Health is never behind the token (Kubernetes probes carry none), so Check goes without it.
  if (int rc = check_health(channel, o); rc != 0 || o.health_only) return rc;
  return stream(channel, o, token, *frames);
}
