#include "step_rule.h"

#include <cstdio>
#include <cstring>

namespace vae {

StepChoice step_by_rule(const std::vector<StepRuleEntry>& table, const std::string& card, bool tf32, int batch) {
  const char* precision = tf32 ? "tf32" : "fp32";
  const StepRuleEntry* below = nullptr;  // the largest batch <= batch
  const StepRuleEntry* lowest = nullptr;
  for (const StepRuleEntry& e : table) {
    if (card != e.card || std::strcmp(precision, e.precision) != 0) continue;
    if (e.batch <= batch && (!below || e.batch > below->batch)) below = &e;
    if (!lowest || e.batch < lowest->batch) lowest = &e;
  }
  StepChoice c;
  const StepRuleEntry* e = below ? below : lowest;
  if (!e) {
    c.why = "composed: no sweep of " + card + " at " + precision + " in the rule's table";
    return c;
  }
  c.fused = std::strcmp(e->step, "fused") == 0;
  if (c.fused) {
    c.variant.math = FusedMath::ffma;  // where the table names none it knows
    fused_math_from_name(e->fused_math, &c.variant.math);
    c.variant.half_grid = e->half_grid;
    c.variant.ticket_chunks = e->ticket_chunks;
    c.variant.row_flags = e->row_flags;
    c.variant.cluster = e->cluster;
  }
  char measured[160];
  if (e->fused_us > 0) {
    std::snprintf(measured, sizeof measured, " (fused %.1f us a step, composed %.1f; %s, commit %s)", e->fused_us,
                  e->composed_us, e->date, e->commit);
  } else {  // a sweep cut before the fused step's runs (bench/step_rule.py writes 0)
    std::snprintf(measured, sizeof measured, " (fused not measured, composed %.1f us a step; %s, commit %s)",
                  e->composed_us, e->date, e->commit);
  }
  const std::string entry =
      std::string("the sweep of ") + e->card + " at " + precision + ", batch " + std::to_string(e->batch) + measured;
  c.why = c.fused ? "fused " + fused_variant_name(c.variant) + ": " + entry : "composed: " + entry;
  return c;
}

const std::vector<StepRuleEntry>& step_rule_table() {
  static const std::vector<StepRuleEntry> table = {
#include "step_rule_table.inc"
  };
  return table;
}

}  // namespace vae
