// Test support: recounts the space accounting of volumes and snapshots from
// their maps alone (which map references which run), independent of the
// pool's reference counts, and checks what the VolumeSet reports.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "volume/testing/test_pool.h"
#include "volume/volume_set_impl.h"

namespace edgestor::testing {

// Snapshot "s" + N, built without operator+ on a literal (GCC 12 at -O3
// warns -Wrestrict on that).
inline std::string SnapshotName(uint64_t n) {
  std::string name = "s";
  name += std::to_string(n);
  return name;
}

inline void CheckAccounting(TestPool& pool) {
  auto& set = dynamic_cast<VolumeSetImpl&>(pool.set());
  auto snapshots = set.ListSnapshots("");
  ASSERT_TRUE(snapshots.ok()) << snapshots.status().ToString();
  std::vector<VolumeInfo> volumes = set.ListVolumes();
  struct Run {
    uint64_t blocks = 0;
    std::set<std::string> readers;
  };
  std::map<uint64_t, Run> runs;
  auto add = [&](const std::string& name) {
    auto mapped = set.MappedRunsForTest(name);
    ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
    for (const BlockRun& r : mapped.value()) {
      Run& run = runs[r.block];
      // A packed frame's first block, when it shares it, is charged to the
      // frame before it (format::ChargedBlocks).
      const uint64_t charged = r.count - (r.head != 0 ? 1 : 0);
      if (run.readers.size()) {
        ASSERT_EQ(run.blocks, charged) << "run " << r.block << " has two lengths";
      }
      run.blocks = charged;
      ASSERT_TRUE(run.readers.insert(name).second) << name << " maps run " << r.block << " twice";
    }
  };
  for (const VolumeInfo& v : volumes) add(v.name);
  for (const SnapshotInfo& s : snapshots.value()) add(s.full_name());
  // Bytes of the runs read only by maps in `group`, and of those read by `name`.
  auto only_by = [&](const std::set<std::string>& group) {
    uint64_t blocks = 0;
    for (auto& [first, run] : runs) {
      bool inside = true;
      for (const std::string& reader : run.readers) inside = inside && group.count(reader);
      if (inside) blocks += run.blocks;
    }
    return blocks * 4096;
  };
  auto referenced_by = [&](const std::string& name) {
    uint64_t blocks = 0;
    for (auto& [first, run] : runs) blocks += run.readers.count(name) ? run.blocks : 0;
    return blocks * 4096;
  };
  for (const SnapshotInfo& s : snapshots.value()) {
    EXPECT_EQ(s.used_bytes, only_by({s.full_name()})) << s.full_name() << " used";
    EXPECT_EQ(s.referenced_bytes, referenced_by(s.full_name())) << s.full_name() << " referenced";
  }
  for (const VolumeInfo& v : volumes) {
    std::set<std::string> family;
    for (const SnapshotInfo& s : snapshots.value())
      if (s.volume == v.name) family.insert(s.full_name());
    EXPECT_EQ(v.snapshot_count, family.size()) << v.name;
    EXPECT_EQ(v.used_by_snapshots_bytes, family.empty() ? 0 : only_by(family)) << v.name << " used by snapshots";
    family.insert(v.name);
    EXPECT_EQ(v.used_bytes, only_by(family)) << v.name << " used";
    EXPECT_EQ(v.allocated_bytes, referenced_by(v.name)) << v.name << " referenced";
  }
}

}  // namespace edgestor::testing
