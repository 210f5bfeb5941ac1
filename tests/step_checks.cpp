#include "step_checks.h"

#include "support.h"

namespace vae::test {

// Tolerances of the fp32 fast code against the float64 reference at the tested sizes (a few
// times the worst error measured on the CPU, fused and composed steps; TF32 has its own, wider).
// Gradients: abs is relative to the tensor's largest gradient (expect_tensors_near).
constexpr double kLogProbAbs = 2e-5, kLogProbRel = 2e-6;  // log p sums 37 pixels: |log p| ~ 25
constexpr double kKlAbs = 2e-6, kKlRel = 1e-5;
constexpr double kGradAbs = 2e-6, kGradRel = 1e-4;

void expect_matches_reference(Vae& vae, const ReferenceLayout& rl, const ReferenceResult& ref, int batch, int samples,
                              const std::string& where) {
  ASSERT_TRUE(not_all_zero(ref.grad));
  auto lp = vae.log_prob().download();
  lp.resize(static_cast<size_t>(batch) * samples);
  auto kl = vae.kl().download();
  kl.resize(batch);
  EXPECT_TRUE(all_near(lp, ref.log_prob, kLogProbAbs, kLogProbRel)) << "log p, " << where;
  EXPECT_TRUE(all_near(kl, ref.kl, kKlAbs, kKlRel)) << "KL, " << where;
  expect_tensors_near(vae.layout(), vae.grads().download(), rl, ref.grad, kGradAbs, kGradRel, where);
}

std::string step_case_name(const ::testing::TestParamInfo<std::tuple<Target, StepCase>>& info) {
  const Target t = std::get<0>(info.param);
  const StepCase& sc = std::get<1>(info.param);
  return std::string(target_name(t)) + "_" + decoder_name(sc.decoder) + "_" + activation_name(sc.activation) + "_L" +
         std::to_string(sc.samples);
}

}  // namespace vae::test
