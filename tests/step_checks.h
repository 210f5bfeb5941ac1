// What the tests of the composed step (test_step.cpp) and of the fused step (test_fused_step.cpp)
// share: the check of a pass against the float64 reference at the fp32 tolerances, and the model
// cases they run.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <tuple>

#include "reference_vae.h"
#include "runtime/target.h"
#include "vae.h"

namespace vae::test {

// The last pass's log p and KL and every parameter gradient against the reference's.
void expect_matches_reference(Vae& vae, const ReferenceLayout& rl, const ReferenceResult& ref, int batch, int samples,
                              const std::string& where);

// A model case of the step tests: decoder, activation, L samples a row.
struct StepCase {
  DecoderKind decoder;
  Activation activation;
  int samples;
};
// Its test name: "cpu_bernoulli_relu_L1".
std::string step_case_name(const ::testing::TestParamInfo<std::tuple<Target, StepCase>>& info);

}  // namespace vae::test
