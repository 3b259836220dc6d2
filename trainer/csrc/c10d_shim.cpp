// A C ABI over PyTorch's own distributed engine (c10d) in the libtorch the trainer already links:
// TCPStore rendezvous, ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA), and the collectives the trainer
// needs. Tensors cross as `at::Tensor*`, which is what a `tch::Tensor` wraps. No C++ exception crosses the
// boundary: every entry point returns 0 on success or 1 with a malloc'd message in `*err` (freed by
// `must_c10d_free_error`).

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MUST_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

int fail(char** err, const std::string& what) {
  if (err != nullptr) {
    *err = strdup(what.c_str());
  }
  return 1;
}

void wait(const c10::intrusive_ptr<c10d::Work>& work, const Group* g) {
  work->wait(g->timeout);
}

void allreduce_sum(Group* g, at::Tensor& t) {
  std::vector<at::Tensor> ts{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  o.timeout = g->timeout;
  wait(g->backend->allreduce(ts, o), g);
}

// y = Σ_ranks x in the forward pass; in the backward pass every rank's x receives the sum of all ranks'
// gradients of y (each rank's loss depends on the same y). This is what makes synchronised batch norm's
// global statistics differentiable.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    at::Tensor y = x.detach().clone();
    allreduce_sum(reinterpret_cast<Group*>(group), y);
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    at::Tensor gx = grads[0].contiguous().clone();
    allreduce_sum(g, gx);
    return {gx, at::Tensor()};
  }
};

}  // namespace

extern "C" {

void must_c10d_free_error(char* err) { free(err); }

// Joins the group: the TCPStore at addr:port is served by rank 0 when `serve` is set (otherwise it runs
// already, e.g. torchrun's agent store), every rank connects to it. `nccl` selects ProcessGroupNCCL (the
// build must have been made with it), otherwise Gloo over TCP.
int must_c10d_init(const char* addr, int port, int rank, int world, int timeout_ms, int nccl, int serve,
                   void** out, char** err) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = rank == 0 && serve != 0;
    so.numWorkers = world;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(addr), so);
    auto store = c10::make_intrusive<c10d::PrefixStore>("must", tcp);
    auto* g = new Group{store, {}, timeout};
    if (nccl != 0) {
#ifdef MUST_WITH_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
#else
      delete g;
      return fail(err,
                  "this trainer was built without NCCL; rebuild with the `nccl` feature on a machine with the "
                  "CUDA and NCCL headers (see README, distributed training)");
#endif
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    }
    *out = g;
    return 0;
  } catch (const std::exception& e) {
    return fail(err, e.what());
  }
}

void must_c10d_free(void* group) { delete reinterpret_cast<Group*>(group); }

// In place: t = Σ_ranks t.
int must_c10d_allreduce_sum(void* group, void* tensor, char** err) {
  try {
    allreduce_sum(reinterpret_cast<Group*>(group), *reinterpret_cast<at::Tensor*>(tensor));
    return 0;
  } catch (const std::exception& e) {
    return fail(err, e.what());
  }
}

// In place: t = rank `root`'s t.
int must_c10d_broadcast(void* group, void* tensor, int root, char** err) {
  try {
    auto* g = reinterpret_cast<Group*>(group);
    std::vector<at::Tensor> ts{*reinterpret_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = g->timeout;
    wait(g->backend->broadcast(ts, o), g);
    return 0;
  } catch (const std::exception& e) {
    return fail(err, e.what());
  }
}

int must_c10d_barrier(void* group, char** err) {
  try {
    auto* g = reinterpret_cast<Group*>(group);
    c10d::BarrierOptions o;
    o.timeout = g->timeout;
    wait(g->backend->barrier(o), g);
    return 0;
  } catch (const std::exception& e) {
    return fail(err, e.what());
  }
}

// A new tensor `*out` = Σ_ranks x that autograd differentiates (gradient: Σ_ranks of the output's gradient).
int must_c10d_allreduce_sum_autograd(void* group, void* x, void** out, char** err) {
  try {
    at::Tensor y = AllReduceSum::apply(*reinterpret_cast<at::Tensor*>(x), reinterpret_cast<int64_t>(group));
    *out = new at::Tensor(std::move(y));
    return 0;
  } catch (const std::exception& e) {
    return fail(err, e.what());
  }
}

}  // extern "C"
