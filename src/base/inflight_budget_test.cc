#include "base/inflight_budget.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace edgestor {
namespace {

constexpr uint64_t kMiB = 1 << 20;

TEST(InflightBudgetTest, TakesWhatFitsAndRefusesTheRest) {
  InflightBudget budget(64 * kMiB);
  EXPECT_TRUE(budget.TryAcquire(32 * kMiB));
  EXPECT_TRUE(budget.TryAcquire(32 * kMiB));
  EXPECT_FALSE(budget.TryAcquire(1));
  EXPECT_EQ(budget.in_flight(), 64 * kMiB);
  EXPECT_EQ(budget.waits(), 1u);
  budget.Release(32 * kMiB);
  EXPECT_TRUE(budget.TryAcquire(16 * kMiB));
  EXPECT_EQ(budget.in_flight(), 48 * kMiB);
  EXPECT_EQ(budget.peak(), 64 * kMiB);
}

// Otherwise such a request would wait for ever.
TEST(InflightBudgetTest, ARequestLargerThanTheBudgetRunsAlone) {
  InflightBudget budget(4 * kMiB);
  EXPECT_TRUE(budget.TryAcquire(32 * kMiB));
  EXPECT_FALSE(budget.TryAcquire(4096));
  budget.Release(32 * kMiB);
  EXPECT_TRUE(budget.TryAcquire(4096));
  EXPECT_FALSE(budget.TryAcquire(32 * kMiB));  // not while anything else is in flight
  EXPECT_EQ(budget.in_flight(), 4096u);
}

TEST(InflightBudgetTest, BothOrNeither) {
  InflightBudget local(64 * kMiB), shared(40 * kMiB);
  EXPECT_TRUE(TryAcquireBoth(local, &shared, 32 * kMiB));
  EXPECT_FALSE(TryAcquireBoth(local, &shared, 16 * kMiB));  // the shared one is full
  EXPECT_EQ(local.in_flight(), 32 * kMiB);                  // given back
  EXPECT_TRUE(TryAcquireBoth(local, nullptr, 16 * kMiB));
  ReleaseBoth(local, &shared, 32 * kMiB);
  EXPECT_EQ(shared.in_flight(), 0u);
  EXPECT_EQ(local.in_flight(), 16 * kMiB);
}

TEST(InflightBudgetTest, NeverExceededUnderContention) {
  constexpr uint64_t kLimit = 10 * kMiB, kRequest = 3 * kMiB;
  InflightBudget budget(kLimit);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; t++)
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; i++) {
        if (!budget.TryAcquire(kRequest)) continue;
        EXPECT_LE(budget.in_flight(), kLimit);
        budget.Release(kRequest);
      }
    });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(budget.in_flight(), 0u);
  EXPECT_LE(budget.peak(), 9 * kMiB);  // three requests fit, a fourth never
}

}  // namespace
}  // namespace edgestor
