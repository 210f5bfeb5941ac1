// `vae eval`: the test-set ELBO of a checkpoint, and with --iw-samples its importance-weighted
// log-likelihood, as one JSON object.
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"

namespace vae {
namespace {

class EvalCommand : public ModelCommand {
 public:
  void add(CLI::App& app) override {
    cmd_ = app.add_subcommand(
        "eval",
        "test-set ELBO of a checkpoint (and its importance-weighted log-likelihood), printed as one JSON object");
    add_model_flags();
    cmd_->add_option("--iw-samples", iw_samples_,
                     "also estimate log p(x) with K importance samples per test image (Burda et al.; e.g. 5000)")
        ->check(CLI::Range(1, 1 << 20));
    cmd_->add_option(
            "--iw-chunk", iw_chunk_,
            "samples per decoder pass of the estimate (default: as many as keep 256 rows x chunk within 32768)")
        ->check(positive_number());
    cmd_->add_option("--active-threshold", active_threshold_,
                     "a latent unit is active when the variance over the test set of its posterior mean exceeds this "
                     "(Burda et al.)")
        ->check(positive_number())
        ->capture_default_str();
    cmd_->add_option("--mi-draws", mi_draws_,
                     "test rows whose draws estimate the mutual information I(x; z) against the aggregate posterior "
                     "of all test rows (the training metrics use 256)")
        ->check(positive_number())
        ->capture_default_str();
    add_data_flags(cmd_, flags_, false);
  }

  std::string memory_flags() const override { return "--iw-chunk or --mi-draws"; }

  int run() override {
    Loaded l = load();
    const Dataset test = test_set(l, flags_);
    const DeviceDataset test_dev(*l.ctx, test);
    const ElboTotals t = l.trainer->evaluate(test_dev, nullptr, mi_draws_);
    nlohmann::json out = {{"test_elbo", t.elbo()},
                          {"test_recon", t.recon},
                          {"test_kl", t.kl},
                          {"active_units", t.active_units(active_threshold_)},
                          {"active_threshold", active_threshold_},
                          {"kl_per_dimension", t.kl_per_dimension},
                          {"mutual_information", t.mutual_information},
                          {"mi_draws", t.mi_draws},
                          {"test_objective", t.objective()},
                          {"n", t.n},
                          {"epoch", l.ckpt.epoch},
                          {"step", l.ckpt.step},
                          {"device", l.ctx->description()}};
    if (iw_samples_ > 0) {
      const auto t0 = std::chrono::steady_clock::now();
      const Trainer::LogLikelihood ll = l.trainer->log_likelihood(test_dev, iw_samples_, iw_chunk_);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      out["test_log_likelihood"] = ll.mean;
      out["test_log_likelihood_stderr"] = ll.standard_error;
      out["iw_samples"] = iw_samples_;
      out["iw_seconds"] = secs;
    }
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }

 private:
  DataOptions flags_;
  int iw_samples_ = 0, iw_chunk_ = 0, mi_draws_ = Trainer::kMiDraws;
  double active_threshold_ = 1e-2;
};

}  // namespace

std::unique_ptr<Command> make_eval_command() { return std::make_unique<EvalCommand>(); }

}  // namespace vae
